"""preprocessed.json: one per run, or one per shard merged into the same single-run manifest.

The shard mechanism is core.shards; this module says what a preprocessed manifest holds.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from brats_seg.core.hashing import sha256_file
from brats_seg.core.shards import ShardedManifest
from brats_seg.io.manifest import load_manifest, new_manifest, save_manifest
from brats_seg.preprocess.dataset_profile import dataset_profile


def build_manifest(entries: list[dict], failed: list[dict], raw_sha: str, config: dict) -> dict:
    """The manifest of `entries`; its dataset profile (key "fingerprint") depends on the entries only,
    so merged shards get the profile a single run would."""
    manifest = new_manifest("preprocessed", config, raw_sha)
    manifest["cases"] = sorted(entries, key=lambda e: e["id"])
    manifest["rejected"] = sorted(failed, key=lambda f: f["id"])
    manifest["fingerprint"] = dataset_profile(manifest["cases"])  # key kept: existing manifests carry it
    return manifest


PREPROCESSED = ShardedManifest(
    name="preprocessed", load=partial(load_manifest, stage="preprocessed"), save=save_manifest,
    build=build_manifest,
    run_key=lambda m: (m["config"]["config_sha256"], m["input_manifest_sha256"]),
    mismatch="shard manifests come from different configs or raw manifests; expected one run split in shards",
    run_lock="shard-{index}-of-{count}.lock", merge_lock="merge.lock",
)


def write_stage_manifest(out_dir: Path, entries: list[dict], failed: list[dict], raw_path: Path, cfg, cfg_sha: str,
                         shard: tuple[int, int]) -> Path:
    """Write this shard's manifest (merging when it completes the set); returns the path written."""
    config = {"preprocess": cfg.to_dict(), "config_sha256": cfg_sha, "raw_manifest": str(Path(raw_path).resolve())}
    path, _ = PREPROCESSED.write(out_dir, build_manifest(entries, failed, sha256_file(raw_path), config), shard)
    return path
