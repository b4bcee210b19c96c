"""The preprocessing stage as a batch job: parallel, sharded, resumable, safe to re-run.

A case counts as done when cases/<id>/entry.json exists, names the same config hash and input
sha256s, and the arrays it lists still hash to what it recorded. entry.json is written last
(atomically), so a killed run never leaves a case that looks done but is not.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Sequence

from brats_seg.contracts.stage_files import PreprocessedEntry, read_optional
from brats_seg.core.allocator import keep_freed_memory
from brats_seg.core.atomic import atomic_write_json
from brats_seg.core.hashing import sha256_file, sha256_json
from brats_seg.core.paths import refuse_overwrite
from brats_seg.core.shards import select_shard
from brats_seg.errors import InputError, with_location
from brats_seg.io.content import record_paths
from brats_seg.io.manifest import load_manifest, case_root, resolve_inside
from brats_seg.preprocess.case import PreprocessConfig, preprocess_case
from brats_seg.preprocess.manifests import PREPROCESSED, write_stage_manifest
from brats_seg.preprocess.store import case_dir

ALGORITHM_VERSION = 2  # bump when the per-case output changes for the same config (2: strided percentile sample)


def config_hash(cfg: PreprocessConfig) -> str:
    return sha256_json({"config": cfg.to_dict(), "algorithm": ALGORITHM_VERSION})


def is_done(case: dict, root: Path, out_dir: Path, cfg_sha: str) -> dict | None:
    """The stored entry if the case is complete and current, else None (also when entry.json is
    damaged in any way: that case is simply done again)."""
    stored = read_optional(case_dir(out_dir, case["id"]) / "entry.json", PreprocessedEntry)
    if stored is None:
        return None
    entry = stored.model_dump(mode="python", exclude_unset=True)  # the entry as written, nothing added
    wanted = {c: case["images"][c]["sha256"] for c in case["channels"]} | ({"seg": case["seg"]["sha256"]} if case.get("seg") else {})
    if entry["config_sha256"] != cfg_sha or entry["source"].get("inputs_sha256") != wanted:
        return None
    if not _inputs_unchanged(case, root) or not _outputs_verify(entry, out_dir):
        return None
    return entry


def _inputs_unchanged(case: dict, root: Path) -> bool:
    records = [case["images"][c] for c in case["channels"]] + ([case["seg"]] if case.get("seg") else [])
    try:
        return all(_record_unchanged(resolve_inside(root, r["path"], case["id"], case.get("links")), r)
                   for r in records)
    except (OSError, InputError):
        return False


def _record_unchanged(path: Path, record: dict) -> bool:
    """A file by its sha256; a DICOM series folder by its slices' (InputError when they changed)."""
    if path.is_dir():
        from brats_seg.io.dicom import read_series_verified

        read_series_verified(path, record["sha256"], record.get("series_uid"))
        return True
    return sha256_file(path) == record["sha256"]


def _outputs_verify(entry: dict, out_dir: Path) -> bool:
    try:
        return all(sha256_file(resolve_inside(out_dir, entry[key], entry["id"])) == digest
                   for key, digest in entry["sha256"].items())
    except (OSError, KeyError, InputError):
        return False


def _run_one(job: tuple[dict, Path, Path, PreprocessConfig, str]) -> tuple[str, dict | None, str | None]:
    case, root, out_dir, cfg, cfg_sha = job
    try:
        entry = preprocess_case(case, root, out_dir, cfg)
        entry["config_sha256"] = cfg_sha
        # not fsynced: after a power loss, resume re-hashes the outputs an entry lists anyway
        atomic_write_json(case_dir(out_dir, case["id"]) / "entry.json", entry, durable=False)
    except InputError as err:
        return case["id"], None, err.line()
    except OSError as exc:  # disk full etc.: stop, naming the case folder that could not be written
        raise with_location(exc, case_dir(out_dir, case["id"])) from exc
    return case["id"], entry, None


def run_preprocess(raw_path: Path, out_dir: Path, cfg: PreprocessConfig, workers: int = 1,
                   shard: tuple[int, int] = (0, 1), force: bool = False, data_roots: Sequence[Path] = ()) -> dict:
    """Preprocess this shard's cases of `raw_path` into `out_dir`; returns counts and the manifest path.

    data_roots: folders outside the raw manifest's own folder its roots may lie in (--data-root)."""
    raw_path, out_dir = Path(raw_path), Path(out_dir)
    keep_freed_memory()  # before the workers fork: a case's big buffers are reused, not page-faulted anew
    raw = load_manifest(raw_path, stage="raw")
    if not raw["cases"]:
        raise InputError(raw_path, "lists no case; expected a raw manifest written by `brats-seg ingest`")
    cases = select_shard(raw["cases"], shard)
    roots = {id(c): case_root(raw_path, raw, c, data_roots) for c in cases}
    inputs = [raw_path, *set(roots.values()), *(p for c in cases for p in record_paths(c, roots[id(c)]))]
    refuse_overwrite(out_dir, inputs, "--out", out_is_folder=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_sha = config_hash(cfg)
    with PREPROCESSED.locked(out_dir, shard):
        done = {} if force else {c["id"]: e for c in cases if (e := is_done(c, roots[id(c)], out_dir, cfg_sha))}
        todo = [(c, roots[id(c)], out_dir, cfg, cfg_sha) for c in cases if c["id"] not in done]
        fresh, failed = _execute(todo, workers)
        entries = [done.get(c["id"]) or fresh.get(c["id"]) for c in cases]
        manifest_path = write_stage_manifest(out_dir, [e for e in entries if e], failed, raw_path, cfg, cfg_sha, shard)
    summary = {"done": len(fresh), "skipped": len(done), "failed": len(failed), "manifest": str(manifest_path)}
    print(f"preprocess: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed -> {manifest_path}",
          file=sys.stderr)
    return summary


def _execute(todo: list, workers: int) -> tuple[dict, list[dict]]:
    from tqdm import tqdm

    fresh, failed = {}, []
    bar = tqdm(total=len(todo), desc="preprocess", unit="case", disable=not sys.stderr.isatty() or not todo)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            results = (f.result() for f in as_completed([pool.submit(_run_one, job) for job in todo]))
            _collect(results, fresh, failed, bar)
    else:
        _collect((_run_one(job) for job in todo), fresh, failed, bar)
    bar.close()
    return fresh, failed


def _collect(results, fresh: dict, failed: list, bar) -> None:
    for case_id, entry, error in results:
        if error is not None:
            print(error, file=sys.stderr)
            failed.append({"id": case_id, "reason": error})
        else:
            fresh[case_id] = entry
        bar.update(1)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))
