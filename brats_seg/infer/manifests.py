"""predictions.json: one per run, or one per shard merged into what a single run would write.

The manifest's config names the model (checkpoint path, sha256), the inference settings and the
raw manifest; entries carry per-case timings; `timings` sums them (so a merge of shards equals a
single run's manifest except for created_at and the timing values). The shard mechanism is
core.shards; this module says what a predictions manifest holds. volumes.csv (one row per case,
infer.case_report) is written from the final manifest's entries whenever that manifest is written,
so a sharded batch gets it from the shard that merges, with every shard's cases.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from brats_seg.core.hashing import sha256_file
from brats_seg.core.shards import ShardedManifest
from brats_seg.infer.case_report import write_volumes_csv
from brats_seg.io.manifest import load_manifest, new_manifest, save_manifest


def manifest_config(segmenter, raw_path: Path, opts) -> dict:
    """What a predictions manifest records of the run: model identity, settings, outputs asked for."""
    return {"model": dict(segmenter.spec.identity), "settings": segmenter.settings(),
            "label_convention": opts.label_convention, "probabilities": opts.probabilities, "qa": opts.qa,
            "uncertainty": opts.uncertainty,
            "raw_manifest": str(Path(raw_path).resolve())}


def build_manifest(entries: list[dict], failed: list[dict], raw_sha: str, config: dict) -> dict:
    """The manifest of `entries`, with their summed timings."""
    manifest = new_manifest("predictions", config, raw_sha)
    manifest["cases"] = sorted(entries, key=lambda e: e["id"])
    manifest["rejected"] = sorted(failed, key=lambda f: f["id"])
    manifest["model"] = config.get("model", {})
    total = sum(e.get("timings", {}).get("total_s", 0.0) for e in entries)
    manifest["timings"] = {"cases": len(entries), "total_s": round(total, 3),
                           "mean_s": round(total / len(entries), 3) if entries else None}
    return manifest


VOLUMES_CSV = "volumes.csv"
PREDICTIONS = ShardedManifest(
    name="predictions", load=partial(load_manifest, stage="predictions"), save=save_manifest,
    build=build_manifest,
    run_key=lambda m: (m["config"], m["input_manifest_sha256"]),
    mismatch="shard manifests come from different models, settings or raw manifests; expected one run split in shards",
    run_lock="predict-shard-{index}-of-{count}.lock", merge_lock="merge-predictions.lock",
)


def write_predictions_manifest(out_dir: Path, entries: list[dict], failed: list[dict], raw_path: Path,
                               config: dict, shard: tuple[int, int]) -> Path:
    """Write this shard's manifest; returns the merged manifest when this shard completed the set."""
    manifest = build_manifest(entries, failed, sha256_file(raw_path), config)
    path, merged = PREDICTIONS.write(out_dir, manifest, shard)
    if merged is not None:
        manifest = PREDICTIONS.load(merged)
    if merged is not None or shard[1] == 1:
        write_volumes_csv(Path(out_dir) / VOLUMES_CSV, manifest["cases"])
    return merged or path
