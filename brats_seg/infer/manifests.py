"""predictions.json: one per run, or one per shard merged into what a single run would write.

The manifest's config names the model (checkpoint path, sha256), the inference settings and the
raw manifest; entries carry per-case timings; `timings` sums them (so a merge of shards equals a
single run's manifest except for created_at and the timing values).
"""
from __future__ import annotations

import re
from pathlib import Path

from brats_seg.errors import InputError
from brats_seg.io.manifest import load_manifest, new_manifest, save_manifest
from brats_seg.core.hashing import sha256_file

MANIFEST_NAME = "predictions.json"
SHARD_DIR = "shards"


def manifest_config(segmenter, raw_path: Path, opts) -> dict:
    return {"model": dict(segmenter.spec.identity), "settings": segmenter.settings(),
            "label_convention": opts.label_convention, "probabilities": opts.probabilities, "qa": opts.qa,
            "raw_manifest": str(Path(raw_path).resolve())}


def shard_manifest_path(out_dir: Path, shard: tuple[int, int]) -> Path:
    if shard[1] == 1:
        return Path(out_dir) / MANIFEST_NAME
    return Path(out_dir) / SHARD_DIR / f"predictions.shard-{shard[0]}-of-{shard[1]}.json"


def build_manifest(entries: list[dict], failed: list[dict], raw_sha: str, config: dict) -> dict:
    manifest = new_manifest("predictions", config, raw_sha)
    manifest["cases"] = sorted(entries, key=lambda e: e["id"])
    manifest["rejected"] = sorted(failed, key=lambda f: f["id"])
    manifest["model"] = config.get("model", {})
    total = sum(e.get("timings", {}).get("total_s", 0.0) for e in entries)
    manifest["timings"] = {"cases": len(entries), "total_s": round(total, 3),
                           "mean_s": round(total / len(entries), 3) if entries else None}
    return manifest


def write_predictions_manifest(out_dir: Path, entries: list[dict], failed: list[dict], raw_path: Path,
                               config: dict, shard: tuple[int, int]) -> Path:
    path = shard_manifest_path(out_dir, shard)
    manifest = build_manifest(entries, failed, sha256_file(raw_path), config)
    if shard[1] > 1:
        manifest["shard"] = {"index": shard[0], "count": shard[1]}
    save_manifest(path, manifest)
    if shard[1] > 1:
        merged = maybe_merge(out_dir, shard[1])
        return merged or path
    return path


def _shard_files(out_dir: Path) -> dict[tuple[int, int], Path]:
    found = {}
    for path in (Path(out_dir) / SHARD_DIR).glob("predictions.shard-*-of-*.json"):
        m = re.fullmatch(r"predictions\.shard-(\d+)-of-(\d+)\.json", path.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = path
    return found


def merge(out_dir: Path, count: int) -> Path:
    """Combine the `count` shard manifests of `out_dir` into predictions.json."""
    files = _shard_files(out_dir)
    missing = [i for i in range(count) if (i, count) not in files]
    if missing:
        raise InputError(out_dir, f"shards {missing} of {count} have no predictions manifest yet")
    parts = [load_manifest(files[(i, count)], stage="predictions") for i in range(count)]
    if len({(repr(p["config"]), p["input_manifest_sha256"]) for p in parts}) != 1:
        raise InputError(out_dir, "shard manifests come from different models, settings or raw manifests; "
                                  "expected one run split in shards")
    entries = [e for p in parts for e in p["cases"]]
    failed = [f for p in parts for f in p.get("rejected", [])]
    target = Path(out_dir) / MANIFEST_NAME
    save_manifest(target, build_manifest(entries, failed, parts[0]["input_manifest_sha256"], parts[0]["config"]))
    return target


def maybe_merge(out_dir: Path, count: int) -> Path | None:
    """Merge once every shard has written its manifest (under a lock: two finishing shards don't race)."""
    import time

    from brats_seg.core.locks import exclusive_lock

    lock = Path(out_dir) / ".locks" / "merge-predictions.lock"
    for _ in range(600):  # the other shard holds the lock for well under a second
        held = False
        try:
            with exclusive_lock(lock):
                held = True
                if not all((i, count) in _shard_files(out_dir) for i in range(count)):
                    return None
                return merge(out_dir, count)
        except InputError:
            if held:
                raise
            time.sleep(0.1)
    return None
