"""Ingestion stage: discover cases in one or more source folders, validate them, write raw.json.

The raw manifest never replaces one of the files it describes (nor a source folder); a new file
beside them is fine. A source with no case, or a run where every case is rejected, writes nothing.
With `register` (ingest --register), each case's series are registered onto its t1ce and the entry
lists the registered files, written under <raw stem>_registered/ (ingest.register_cases), one more root.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from brats_seg.core.paths import refuse_overwrite
from brats_seg.errors import InputError
from brats_seg.ingest.layouts import BRATS_CHANNELS, CaseSpec, discover
from brats_seg.ingest.register_cases import CaseRegistration, registered_root
from brats_seg.ingest.validate import validate_case
from brats_seg.io.geometry import VOXEL_SIZE_RANGE_MM
from brats_seg.io.manifest import new_manifest, save_manifest
from brats_seg.preprocess.register import RegisterConfig


def _validate_or_reason(args: tuple[CaseSpec, str, tuple[float, float], CaseRegistration | None]
                        ) -> tuple[dict | None, str | None]:
    spec, labels, spacing_range, register = args
    try:
        return validate_case(spec, labels, spacing_range, register), None
    except InputError as err:
        return None, err.line()


def ingest(sources: list[Path], out: Path, layout: str = "auto", labels: str = "auto",
           channels: tuple[str, ...] = BRATS_CHANNELS, skip_invalid: bool = False, workers: int = 1,
           spacing_range: tuple[float, float] = VOXEL_SIZE_RANGE_MM, register: RegisterConfig | None = None) -> dict:
    """Validate every case of `sources` and write the raw manifest to `out` (atomically)."""
    out = Path(out)
    specs = [spec for src in sources for spec in discover(Path(src), layout, channels)]
    inputs = [*sources, *_input_files(sources, specs)]
    refuse_overwrite(out, inputs, "--out", out_is_folder=False)
    _check_unique(specs)
    roots = [Path(src).resolve() for src in sources]
    registration = None
    if register is not None:
        refuse_overwrite(registered_root(out), inputs, "--out (its registered folder)", out_is_folder=True)
        registration = CaseRegistration(register, registered_root(out))
    jobs = [(spec, labels, spacing_range, registration) for spec in specs]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_validate_or_reason, jobs))
    else:
        results = [_validate_or_reason(job) for job in jobs]
    config = {"layout": layout, "labels": labels, "channels": list(channels), "sources": [str(s) for s in sources]}
    if register is not None:
        config["register"] = register.to_dict()
    manifest = new_manifest("raw", config)
    manifest["roots"] = []  # filled once every case's root is known
    manifest["rejected"] = []
    _add_results(manifest, specs, results, roots, skip_invalid)
    if not manifest["cases"]:
        raise InputError(sources[0], f"all {len(specs)} case(s) were rejected, the first: "
                                     f"{manifest['rejected'][0]['reason'].removeprefix('error: ')}; expected at least one valid case")
    manifest["roots"] = [os.path.relpath(r, out.resolve().parent) for r in roots]
    save_manifest(out, manifest)
    return manifest


def _add_results(manifest: dict, specs: list[CaseSpec], results: list, roots: list[Path], skip_invalid: bool) -> None:
    """Each case's entry (its root as an index into `roots`, extended by a registered folder) or its
    rejection; without skip_invalid the first rejection is the error."""
    for spec, (entry, reason) in zip(specs, results):
        if reason is not None:
            if not skip_invalid:
                raise _reraise(reason)
            manifest["rejected"].append({"id": spec.case_id, "reason": reason})
            continue
        root = Path(entry["root"]).resolve()
        if root not in roots:  # the registered cases' folder
            roots.append(root)
        entry["root"] = roots.index(root)
        for warning in entry["warnings"]:
            print(f"warning: {spec.case_id}: {warning}", file=sys.stderr)
        manifest["cases"].append(entry)


def _input_files(sources: list[Path], specs: list[CaseSpec]) -> list[Path]:
    """Every file ingest reads: images, label maps and dataset.json files."""
    files = [Path(src) / "dataset.json" for src in sources if (Path(src) / "dataset.json").is_file()]
    for spec in specs:
        files += [path for candidates in spec.images.values() for path, _ in candidates] + spec.segs
    # a DICOM series folder is an input with every file in it (its slices)
    return files + [f for d in files if Path(d).is_dir() for f in Path(d).iterdir()]


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
