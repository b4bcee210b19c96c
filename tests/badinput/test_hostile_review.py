"""Regressions from a hostile review of the CLI after the contracts landed: each was a silently wrong
result, a read outside the roots or a traceback before."""
from __future__ import annotations

import gzip
import json
import struct

import nibabel as nib
import numpy as np
import pytest

from brats_seg.cli import main
from brats_seg.errors import InputError
from brats_seg.io.manifest import case_root
from brats_seg.io.volume import read_volume


def _nifti(path, data):
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_vox_offset_inside_the_header_is_refused_not_read_as_voxels(tmp_path):
    path = _nifti(tmp_path / "t1.nii.gz", np.arange(16 * 16 * 16, dtype=np.int16).reshape(16, 16, 16))
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", raw, 108, 0.0)  # vox_offset 0: nibabel would read the header as voxels
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InputError, match="vox_offset 0 lies inside the 352-byte header"):
        read_volume(path)


def test_a_link_target_named_only_by_the_manifest_needs_a_data_root(tmp_path):
    (tmp_path / "m" / "data" / "c1").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    manifest = {"roots": ["data"]}
    case = {"id": "c1", "root": 0, "links": {"c1/t1.nii.gz": "../../secret/t1.nii.gz"}}
    with pytest.raises(InputError, match="outside the manifest's folder and every --data-root"):
        case_root(tmp_path / "m" / "raw.json", manifest, case)
    assert case_root(tmp_path / "m" / "raw.json", manifest, case, [tmp_path / "secret"]) == (tmp_path / "m" / "data").resolve()


def test_control_characters_in_a_manifest_path_are_one_line(tmp_path):
    from brats_seg.contracts.manifests import FileRecord

    record = {"path": "c1/a\u0000b.nii.gz", "sha256": "0" * 64, "shape": [1, 1, 1], "dtype": "int16",
              "spacing": [1, 1, 1], "affine": np.eye(4).tolist(), "orientation": "RAS"}
    with pytest.raises(Exception, match="String should match pattern"):
        FileRecord.model_validate(record)


@pytest.mark.parametrize("argv, flag", [
    (["synth", "--out", "s", "--shape", "100000,100000,100000"], "--shape"),
    (["preprocess", "raw.json", "--out", "pp", "--workers", "0"], "--workers"),
])
def test_flags_out_of_range_are_one_line(tmp_path, monkeypatch, capsys, argv, flag):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.json").write_text(json.dumps({}))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and flag in err[0]


def test_synth_never_replaces_existing_case_folders(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "d"), "--cases", "1", "--shape", "16,16,16"]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()}
    assert main(["synth", "--out", str(tmp_path / "d"), "--cases", "1", "--shape", "16,16,16", "--seed", "5"]) == 2
    assert "already holds Synth_0000" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()} == before
