"""`ingest --register`: cases whose series lie on different grids become ordinary cases on one grid.

Registration belongs at ingest: it is the step that turns scanner series into a case, so every later
stage (preprocess, train, predict --manifest, evaluate) sees a case on one grid and needs no option of
its own. Each case's other channels are registered rigidly onto its t1ce (preprocess.register) and
written as float32 NIfTI on the t1ce's grid under REGISTERED_DIR beside the raw manifest:

    <raw stem>_registered/<case>/<case>_{t1,t1ce,t2,flair}.nii.gz   (t1ce: its own voxels, unchanged)
    <raw stem>_registered/<case>/<case>_seg.nii.gz                  (a byte copy; it lies on the t1ce grid)
    <raw stem>_registered/<case>/<case>_registration.json           (transforms, metric before/after)

The case's manifest entry lists these files (that folder is one of the manifest's roots), so a file
changed later is refused by its sha256 as any other; the JSON names the original series and their
sha256. The originals are only read.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats_seg.core.hashing import sha256_file
from brats_seg.io.dicom import series_sha256
from brats_seg.io.geometry import Geometry
from brats_seg.io.nifti import write_nifti
from brats_seg.io.volume import read_volume
from brats_seg.infer.registration_report import write_registration_json
from brats_seg.preprocess.register import RegisterConfig, register_case

REGISTERED_SUFFIX = "_registered"


def registered_root(out: Path) -> Path:
    """Where `ingest --register --out raw.json` writes the registered cases: raw_registered/."""
    out = Path(out)
    stem = out.name[: -len(".json")] if out.name.lower().endswith(".json") else out.name
    return out.parent / f"{stem}{REGISTERED_SUFFIX}"


def _source_sha256(path: Path, geom: Geometry) -> str:
    return series_sha256(geom.extra["files"]) if geom.source_format == "dicom" else sha256_file(path)


@dataclass(frozen=True)
class CaseRegistration:
    """The registration settings and the folder the registered cases go to."""

    cfg: RegisterConfig
    root: Path

    def apply(self, case_id: str, read: dict, ref: str, seg: Path | None) -> tuple[dict, Path | None, Path, str]:
        """Register the case's channels onto `ref` and write them; returns (read records of the written
        files, the copied label map or None, the root their paths are relative to, a note for the
        entry's warnings). `read`: channel -> (path, volume_index, voxels, geometry) as validated."""
        channels = list(read)
        paths = [read[c][0] for c in channels]
        images, reference, record = register_case([read[c][2] for c in channels], [read[c][3] for c in channels],
                                                  channels, paths, self.cfg)
        folder = self.root / case_id
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for channel, data in zip(channels, images):
            target = folder / f"{case_id}_{channel}.nii.gz"
            dtype = read[channel][2].dtype if channel == ref else np.float32
            write_nifti(np.asarray(data, dtype=dtype), reference, target, dtype=dtype)
            out[channel] = (target, None, *read_volume(target))  # the record describes the file as written
        copied = None
        if seg is not None:
            copied = folder / f"{case_id}_seg{''.join(seg.suffixes[-2:]) if seg.name.endswith('.gz') else seg.suffix}"
            shutil.copyfile(seg, copied)
        sources = {c: read[c][0] for c in channels}
        for channel, rec in record["channels"].items():
            rec["source_sha256"] = _source_sha256(read[channel][0], read[channel][3])
        record["reference_sha256"] = _source_sha256(read[ref][0], read[ref][3])
        json_path = write_registration_json(folder / f"{case_id}_registration.json", record, case_id, sources)
        moved = ", ".join(record["channels"]) or "no channel"
        note = f"{moved} registered onto the {record['reference']} (see {json_path.name} in {folder})"
        return out, copied, self.root, note
