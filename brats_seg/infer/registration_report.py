"""The "registration" section of a case JSON: what co-registration did to each series, checkable later.

preprocess.register returns a record per registered channel (4x4 matrix in LPS mm, reference ->
series, the rotation angle, the shift of the reference's brain centre, Mattes MI before and after,
iterations, why the optimiser stopped). This module turns it into the JSON section: paths relative to
the JSON's folder, each matrix also in RAS (nibabel's world, `matrix_ras`), and the series each
channel came from. predict puts it beside the volumes in `<mask stem>.json` (infer.case_report);
ingest --register writes it alone as `<case>_registration.json` beside the registered images.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from brats_seg.core.atomic import atomic_write_json
from brats_seg.io.geometry import LPS_TO_RAS

SECTION_VERSION = 1


def ras_matrix(matrix_lps: Sequence[Sequence[float]]) -> list[list[float]]:
    """The same rigid map in RAS coordinates (x, y negated on both sides)."""
    m = LPS_TO_RAS @ np.asarray(matrix_lps, dtype=np.float64) @ LPS_TO_RAS
    return m.round(6).tolist()


def _relative(path: str | Path, folder: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:  # another drive (Windows): keep it absolute
        return str(Path(path).resolve())


def registration_section(record: Mapping[str, Any], folder: Path,
                         sources: Mapping[str, str | Path] | None = None) -> dict[str, Any]:
    """The JSON section for `record` (preprocess.register.register_case's), paths relative to `folder`;
    `sources`: channel -> the image the channel was read from (recorded per channel)."""
    channels = {}
    for name, rec in record["channels"].items():
        entry = {**rec, "matrix_ras": ras_matrix(rec["matrix_lps"])}
        if sources and name in sources:
            entry["source"] = _relative(sources[name], folder)
        channels[name] = entry
    section = {"version": SECTION_VERSION, "reference": record["reference"],
               "reference_path": _relative(record["reference_path"], folder), "method": dict(record["method"]),
               "convention": record["convention"], "channels": channels}
    if "reference_sha256" in record:
        section["reference_sha256"] = record["reference_sha256"]
    return section


def write_registration_json(path: Path, record: Mapping[str, Any], case_id: str,
                            sources: Mapping[str, str | Path] | None = None) -> Path:
    """A case JSON holding only the registration section (ingest --register), written atomically."""
    path = Path(path)
    atomic_write_json(path, {"id": case_id, "registration": registration_section(record, path.parent, sources)})
    return path
