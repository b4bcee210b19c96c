"""Ingestion stage: discover cases in one or more source folders, validate them, write raw.json.

The raw manifest never replaces one of the files it describes (nor a source folder); a new file
beside them is fine. A source with no case, or a run where every case is rejected, writes nothing.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from brats_seg.core.paths import refuse_overwrite
from brats_seg.errors import InputError
from brats_seg.ingest.layouts import BRATS_CHANNELS, CaseSpec, discover
from brats_seg.ingest.validate import validate_case
from brats_seg.io.geometry import VOXEL_SIZE_RANGE_MM
from brats_seg.io.manifest import new_manifest, save_manifest


def _validate_or_reason(args: tuple[CaseSpec, str, tuple[float, float]]) -> tuple[dict | None, str | None]:
    spec, labels, spacing_range = args
    try:
        return validate_case(spec, labels, spacing_range), None
    except InputError as err:
        return None, err.line()


def ingest(sources: list[Path], out: Path, layout: str = "auto", labels: str = "auto",
           channels: tuple[str, ...] = BRATS_CHANNELS, skip_invalid: bool = False, workers: int = 1,
           spacing_range: tuple[float, float] = VOXEL_SIZE_RANGE_MM) -> dict:
    """Validate every case of `sources` and write the raw manifest to `out` (atomically)."""
    out = Path(out)
    specs = [spec for src in sources for spec in discover(Path(src), layout, channels)]
    refuse_overwrite(out, [*sources, *_input_files(sources, specs)], "--out", out_is_folder=False)
    _check_unique(specs)
    roots = [Path(src).resolve() for src in sources]
    jobs = [(spec, labels, spacing_range) for spec in specs]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_validate_or_reason, jobs))
    else:
        results = [_validate_or_reason(job) for job in jobs]
    config = {"layout": layout, "labels": labels, "channels": list(channels), "sources": [str(s) for s in sources]}
    manifest = new_manifest("raw", config)
    manifest["roots"] = [os.path.relpath(r, out.resolve().parent) for r in roots]
    manifest["rejected"] = []
    for spec, (entry, reason) in zip(specs, results):
        if reason is not None:
            if not skip_invalid:
                raise _reraise(reason)
            manifest["rejected"].append({"id": spec.case_id, "reason": reason})
            continue
        entry["root"] = roots.index(Path(spec.root).resolve())
        for warning in entry["warnings"]:
            print(f"warning: {spec.case_id}: {warning}", file=sys.stderr)
        manifest["cases"].append(entry)
    if not manifest["cases"]:
        raise InputError(sources[0], f"all {len(specs)} case(s) were rejected, the first: "
                                     f"{manifest['rejected'][0]['reason'].removeprefix('error: ')}; expected at least one valid case")
    save_manifest(out, manifest)
    return manifest


def _input_files(sources: list[Path], specs: list[CaseSpec]) -> list[Path]:
    """Every file ingest reads: images, label maps and dataset.json files."""
    files = [Path(src) / "dataset.json" for src in sources if (Path(src) / "dataset.json").is_file()]
    for spec in specs:
        files += [path for candidates in spec.images.values() for path, _ in candidates] + spec.segs
    return files


def _check_unique(specs: list[CaseSpec]) -> None:
    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.case_id in seen:
            raise InputError(spec.case_id, f"duplicate case id in {seen[spec.case_id]} and {spec.root}; expected unique case ids")
        seen[spec.case_id] = spec.root


def _reraise(line: str) -> InputError:
    """Rebuild an InputError from its printed line (results cross process boundaries as text)."""
    body = line.removeprefix("error: ")
    where, _, message = body.partition(": ")
    return InputError(where, message)
