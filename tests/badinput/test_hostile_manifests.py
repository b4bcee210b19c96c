"""Hostile manifests (issue "hostile inputs", second group): raw manifests edited by hand that stay
schema-valid but hold wrong values, a file swapped in together with its own correct sha256, `roots`
that let an edited manifest read anywhere, and broken MSD / nnU-Net dataset.json files.

Every command that reads the edited manifest (preprocess, predict --manifest, evaluate) must end with
exit 2 and one `error:` line naming the manifest or the case (a batch stage may instead reject that
case: exit 1, one line naming it, listed under `rejected`); never a traceback, and nothing already
written changes.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from tests.badinput.builders import snapshot
from tests.badinput.hostile_builders import (CASES, build_workspace, call, case_file, copy_workspace, edit_json,
                                             one_error_line, refused_or_rejected, untouched, write_msd, write_nnunet)

BAD = CASES[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("hostile_manifests") / "ws")


@pytest.fixture
def ws(base, tmp_path) -> Path:
    return copy_workspace(base, tmp_path / "ws")


def _command(ws: Path, command: str) -> tuple[list, Path | None, Path]:
    """argv, the batch manifest it writes (None: not a batch), its fresh output path."""
    raw = ws / "raw.json"
    if command == "preprocess":
        out = ws / "new_pre"
        return ["preprocess", raw, "--out", out, "--workers", 1], out / "preprocessed.json", out
    if command == "predict":
        out = ws / "new_pred"
        return (["predict", "--model", ws / "run", "--manifest", raw, "--out", out, "--threads", 1],
                out / "predictions.json", out)
    out = ws / "new_eval"
    return ["evaluate", "--pred", ws / "pred", "--truth", raw, "--out", out], None, out


def _case(m: dict) -> dict:
    return next(c for c in m["cases"] if c["id"] == BAD)


def _unknown_convention(m):
    _case(m)["label_convention"] = "brats2099"


def _null_convention(m):
    _case(m)["label_convention"] = None


def _root_out_of_range(m):
    _case(m)["root"] = 7


def _channel_missing_from_images(m):
    del _case(m)["images"]["t2"]


def _volume_index_on_a_3d_file(m):
    _case(m)["images"]["t1"]["volume_index"] = 2
    _case(m)["seg"]["volume_index"] = 2  # evaluate reads only the label map


def _seg_points_at_an_image(m):
    _case(m)["seg"] = copy.deepcopy(_case(m)["images"]["flair"])


EDITS = [_unknown_convention, _null_convention, _root_out_of_range, _channel_missing_from_images,
         _volume_index_on_a_3d_file, _seg_points_at_an_image]
COMMANDS = ["preprocess", "predict", "evaluate"]


# predict reads no label map: a null convention or a wrong seg entry is not its input
NOT_READ = {(_null_convention, "predict"), (_seg_points_at_an_image, "predict")}
EDIT_COMMANDS = [(e, c) for e in EDITS for c in COMMANDS if (e, c) not in NOT_READ]


@pytest.mark.parametrize("edit,command", EDIT_COMMANDS,
                         ids=[f"{e.__name__.lstrip('_')}-{c}" for e, c in EDIT_COMMANDS])
def test_hand_edited_raw_manifest_is_refused(ws, run_cli, edit, command):
    raw = edit_json(ws / "raw.json", edit)
    argv, batch_manifest, out = _command(ws, command)
    before = snapshot(ws)
    code, _, err = call(run_cli, *argv)
    if batch_manifest is None:
        line = one_error_line(code, err)
        assert str(raw) in line or BAD in line, f"the error line names neither {raw} nor {BAD}: {line!r}"
        assert not out.exists()
    else:
        refused_or_rejected(code, err, batch_manifest, BAD, str(raw))
    untouched(before, ws, out)


# ---------------------------------------------------------------------------------------------- swapped files

def _swap_with_its_own_sha256(ws: Path, channel: str, fn) -> Path:
    """Rewrite the case's file with fn(data) and record the new file's sha256 in raw.json (as a user who
    'fixed' the manifest would): the sha256 check passes, only ingest's content checks can catch it."""
    import hashlib

    import nibabel as nib

    path = case_file(ws, BAD, channel)
    img = nib.load(str(path))
    data = fn(np.asanyarray(img.dataobj).copy())
    out = nib.Nifti1Image(data, img.affine)
    out.set_sform(img.affine, code=1)
    out.set_qform(img.affine, code=1)
    nib.save(out, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    def update(m):
        entry = _case(m)["seg"] if channel == "seg" else _case(m)["images"][channel]
        entry["sha256"] = digest
        entry["dtype"] = str(data.dtype)

    edit_json(ws / "raw.json", update)
    return path


def _with_nan(data):
    data = data.astype(np.float32)
    data[16, 16, 12] = np.nan
    return data


@pytest.mark.parametrize("command", ["preprocess", "predict"])
def test_image_swapped_with_its_own_sha256_is_checked_for_content(ws, run_cli, command):
    path = _swap_with_its_own_sha256(ws, "t1", _with_nan)
    argv, batch_manifest, out = _command(ws, command)
    before = snapshot(ws)
    code, _, err = call(run_cli, *argv)
    refused_or_rejected(code, err, batch_manifest, BAD, str(path))
    assert "NaN" in err, err
    assert str(path) in err, err
    untouched(before, ws, out)


def test_label_map_swapped_with_its_own_sha256_is_checked_for_content(ws, run_cli):
    def label_7(data):
        data = data.astype(np.uint8)
        data[1, 1, 1] = 7
        return data

    path = _swap_with_its_own_sha256(ws, "seg", label_7)
    argv, _, out = _command(ws, "evaluate")
    before = snapshot(ws)
    code, _, err = call(run_cli, *argv)
    one_error_line(code, err, path)
    assert not out.exists()
    untouched(before, ws, out)


# ---------------------------------------------------------------------------------------------- roots

@pytest.mark.parametrize("command", COMMANDS)
def test_root_slash_from_the_manifest_is_refused_without_data_root(ws, run_cli, command):
    """An edited manifest with `roots: ["/"]` (every path made absolute-but-relative) could read any file on
    the machine; the allowed roots must not come from the manifest alone."""
    def to_slash(m):
        m["roots"] = ["/"]
        for case in m["cases"]:
            base = ws / "src"
            for entry in [*case["images"].values(), *([case["seg"]] if case.get("seg") else [])]:
                entry["path"] = str((base / entry["path"]).resolve()).lstrip("/")
            case["root"] = 0

    raw = edit_json(ws / "raw.json", to_slash)
    argv, _, out = _command(ws, command)
    before = snapshot(ws)
    code, _, err = call(run_cli, *argv)
    line = one_error_line(code, err)
    assert str(raw) in line or "--data-root" in line, f"the error line names neither {raw} nor --data-root: {line!r}"
    untouched(before, ws, out)
    assert not (out / "masks").exists() and not (out / "cases").exists()


# ---------------------------------------------------------------------------------------------- dataset.json

def _msd_labels_wrong_type(meta):
    meta["labels"] = {"background": 0, "edema": "one"}


def _msd_training_not_a_list(meta):
    meta["training"] = 5


def _msd_entry_without_image(meta):
    meta["training"] = [{"label": "./labelsTr/BRATS_001.nii.gz"}]


def _nnunet_labels_wrong_type(meta):
    meta["labels"] = {"background": 0, "edema": [1, "x"], "enhancing tumour": "three"}


def _nnunet_file_ending_not_a_string(meta):
    meta["file_ending"] = 5


DATASET_JSON = {"msd": [_msd_labels_wrong_type, _msd_training_not_a_list, _msd_entry_without_image],
                "nnunet": [_nnunet_labels_wrong_type, _nnunet_file_ending_not_a_string]}


@pytest.mark.parametrize("layout,edit", [(k, e) for k, v in DATASET_JSON.items() for e in v],
                         ids=lambda x: x if isinstance(x, str) else x.__name__.lstrip("_"))
def test_broken_dataset_json_is_one_line(tmp_path, run_cli, layout, edit):
    src = (write_msd if layout == "msd" else write_nnunet)(tmp_path / "src", 1, edit)
    before = snapshot(src)
    code, _, err = call(run_cli, "ingest", src, "--out", tmp_path / "raw.json", "--workers", 1)
    one_error_line(code, err, src / "dataset.json")
    assert not (tmp_path / "raw.json").exists()
    untouched(before, src)


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_deeply_nested_dataset_json_is_one_line(tmp_path, run_cli, layout):
    src = (write_msd if layout == "msd" else write_nnunet)(tmp_path / "src", 1)
    meta = json.loads((src / "dataset.json").read_text())
    text = json.dumps(meta)[:-1] + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (src / "dataset.json").write_text(text)
    before = snapshot(src)
    code, _, err = call(run_cli, "ingest", src, "--out", tmp_path / "raw.json", "--workers", 1)
    one_error_line(code, err, src / "dataset.json")
    untouched(before, src)


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_valid_dataset_json_control(tmp_path, run_cli, layout):
    """Control: the unbroken tiny MSD / nnU-Net folders ingest (so the tests above break only one thing)."""
    src = (write_msd if layout == "msd" else write_nnunet)(tmp_path / "src", 1)
    code, _, err = call(run_cli, "ingest", src, "--out", tmp_path / "raw.json", "--workers", 1)
    assert code == 0 and "Traceback" not in err, err
    assert len(json.loads((tmp_path / "raw.json").read_text())["cases"]) == 1
