"""Preprocessed manifests: one per run, or one per shard merged into the same single-run manifest."""
from __future__ import annotations

import re
from pathlib import Path

from brats_seg.errors import InputError
from brats_seg.io.manifest import load_manifest, new_manifest, save_manifest
from brats_seg.core.hashing import sha256_file
from brats_seg.preprocess.fingerprint import fingerprint
from brats_seg.core.locks import exclusive_lock

MANIFEST_NAME = "preprocessed.json"
SHARD_DIR = "shards"


def shard_manifest_path(out_dir: Path, shard: tuple[int, int]) -> Path:
    if shard[1] == 1:
        return Path(out_dir) / MANIFEST_NAME
    return Path(out_dir) / SHARD_DIR / f"preprocessed.shard-{shard[0]}-of-{shard[1]}.json"


def build_manifest(entries: list[dict], failed: list[dict], raw_path: Path, raw_sha: str, config: dict) -> dict:
    manifest = new_manifest("preprocessed", config, raw_sha)
    manifest["cases"] = sorted(entries, key=lambda e: e["id"])
    manifest["rejected"] = sorted(failed, key=lambda f: f["id"])
    manifest["fingerprint"] = fingerprint(manifest["cases"])
    return manifest


def write_stage_manifest(path: Path, entries: list[dict], failed: list[dict], raw_path: Path, cfg, cfg_sha: str,
                         shard: tuple[int, int]) -> None:
    config = {"preprocess": cfg.to_dict(), "config_sha256": cfg_sha, "raw_manifest": str(Path(raw_path).resolve())}
    manifest = build_manifest(entries, failed, raw_path, sha256_file(raw_path), config)
    if shard[1] > 1:
        manifest["shard"] = {"index": shard[0], "count": shard[1]}
    save_manifest(path, manifest)
    if shard[1] > 1:
        maybe_merge(Path(path).parent.parent, shard[1])


def _shard_files(out_dir: Path) -> dict[tuple[int, int], Path]:
    found = {}
    for path in (Path(out_dir) / SHARD_DIR).glob("preprocessed.shard-*-of-*.json"):
        m = re.fullmatch(r"preprocessed\.shard-(\d+)-of-(\d+)\.json", path.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = path
    return found


def merge(out_dir: Path, count: int | None = None) -> Path:
    """Combine all shard manifests of `out_dir` into preprocessed.json (what one run would write)."""
    files = _shard_files(out_dir)
    counts = {n for _, n in files} if count is None else {count}
    if len(counts) != 1:
        raise InputError(out_dir, f"shard manifests of different shard counts {sorted(counts)}; expected one --shard I/N set")
    n = counts.pop()
    missing = [i for i in range(n) if (i, n) not in files]
    if missing:
        raise InputError(out_dir, f"shards {missing} of {n} have no manifest yet; expected all {n} to finish first")
    parts = [load_manifest(files[(i, n)], stage="preprocessed") for i in range(n)]
    _check_compatible(out_dir, parts)
    entries = [e for p in parts for e in p["cases"]]
    failed = [f for p in parts for f in p.get("rejected", [])]
    manifest = build_manifest(entries, failed, Path(parts[0]["config"]["raw_manifest"]), parts[0]["input_manifest_sha256"], parts[0]["config"])
    target = Path(out_dir) / MANIFEST_NAME
    save_manifest(target, manifest)
    return target


def _check_compatible(out_dir: Path, parts: list[dict]) -> None:
    keys = {(p["config"]["config_sha256"], p["input_manifest_sha256"]) for p in parts}
    if len(keys) != 1:
        raise InputError(out_dir, "shard manifests come from different configs or raw manifests; expected one run split in shards")


def maybe_merge(out_dir: Path, count: int) -> Path | None:
    """Merge when the last shard finishes (under a lock, so two finishing shards don't race)."""
    with exclusive_lock(Path(out_dir) / ".locks" / "merge.lock", wait_seconds=600):
        files = _shard_files(out_dir)
        if all((i, count) in files for i in range(count)):
            return merge(out_dir, count)
    return None
