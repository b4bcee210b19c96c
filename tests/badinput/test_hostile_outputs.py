"""Hostile outputs and stage files (issue "hostile inputs"): output paths over the command's own inputs,
damaged stage files of an earlier run, small numeric flags, sources with zero cases, 16-bit PNGs, and
a study folder of symlinked case folders (legitimate: must work).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.badinput.builders import snapshot
from tests.badinput.hostile_builders import (CASES, build_workspace, call, case_file, cli, copy_workspace, edit_json,
                                             hashes, one_error_line, untouched, write_msd, write_nnunet)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("hostile_outputs") / "ws")


@pytest.fixture
def ws(base, tmp_path) -> Path:
    return copy_workspace(base, tmp_path / "ws")


# ---------------------------------------------------------------------------------------------- outputs over inputs

def test_predict_refuses_to_write_the_mask_over_its_own_input(ws, run_cli):
    case = ws / "src" / CASES[0]
    target = case_file(ws, CASES[0], "t1")
    before = snapshot(ws)
    code, _, err = call(run_cli, "predict", "--model", ws / "run", "--case", case, "--out", target, "--threads", 1)
    one_error_line(code, err, target)
    untouched(before, ws)


def test_predict_may_write_a_new_file_beside_its_inputs(ws, run_cli):
    case = ws / "src" / CASES[0]
    inputs = hashes(case)
    out = case / "new_mask.nii.gz"
    code, _, err = call(run_cli, "predict", "--model", ws / "run", "--case", case, "--out", out, "--threads", 1)
    assert code == 0 and "Traceback" not in err, err
    assert out.is_file()
    written = {str(out), str(case / "new_mask.json")}  # the mask and its case JSON (volumes)
    assert {k: v for k, v in hashes(case).items() if k not in written} == inputs


@pytest.mark.parametrize("command", ["ingest", "preprocess", "predict_manifest", "evaluate"])
def test_output_over_the_inputs_is_refused(ws, run_cli, command):
    """An output that is one of the command's input files, or a folder that holds its inputs."""
    if command == "ingest":
        target = case_file(ws, CASES[0], "flair")
        argv = ["ingest", ws / "src", "--out", target]
    elif command == "preprocess":
        target = ws / "src"
        argv = ["preprocess", ws / "raw.json", "--out", target, "--workers", 1]
    elif command == "predict_manifest":
        target = ws / "src"
        argv = ["predict", "--model", ws / "run", "--manifest", ws / "raw.json", "--out", target, "--threads", 1]
    else:
        target = ws / "pred"
        argv = ["evaluate", "--pred", ws / "pred", "--truth", ws / "raw.json", "--out", target]
    before = snapshot(ws)
    code, _, err = call(run_cli, *argv)
    one_error_line(code, err, target)
    untouched(before, ws)


# ---------------------------------------------------------------------------------------------- 2D

COLOURS = np.array([[40, 40, 40], [220, 30, 30], [30, 30, 220]])
TINY_2D = ["model.backbone=mobilenet_v2", "model.width_mult=0.35", "model.aspp_channels=16", "data.format=folder",
           "data.num_classes=3", "data.train_split=train", "data.val_split=val", "data.crop_size=32",
           "data.batch_size=2", "data.num_workers=0", "optim.name=adamw", "train.device=cpu", "train.num_threads=1",
           "train.progress=false", "train.epochs=1", "train.steps_per_epoch=1"]


def _write_2d_data(root: Path, size: int = 32) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            mask = np.zeros((size, size), np.uint8)
            mask[4:16, 4:16], mask[18:28, 18:28] = 1, 2
            image = np.clip(COLOURS[mask] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hostile_2d")
    data = _write_2d_data(tmp / "data")
    (tmp / "tiny2d.yaml").write_text("task: 2d\nmodel:\n  name: deeplabv3plus\n")
    code, _, err = cli("train", "--config", tmp / "tiny2d.yaml", "--data", data, "--out", tmp / "run", *TINY_2D)
    assert code == 0, f"building a tiny 2D run: {err[-2000:]}"
    return tmp / "run"


def _photos(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"photo{i}.png")
    return folder


def test_predict2d_refuses_an_output_folder_that_holds_its_images(tmp_path, run_cli, run2d):
    photos = _photos(tmp_path / "photos")
    before = snapshot(photos)
    code, _, err = call(run_cli, "predict2d", "--model", run2d, "--images", photos, "--out", photos, "--threads", 1)
    one_error_line(code, err, photos)
    untouched(before, photos)


def test_predict2d_reads_a_16_bit_png_at_its_full_range(tmp_path, run_cli, run2d):
    """A 16-bit greyscale PNG: the same picture as its 8-bit version (value >> 8) must give the same mask,
    or be refused with one line naming it; never read with nearly every pixel clipped."""
    from PIL import Image

    rng = np.random.default_rng(2)
    grey8 = rng.integers(0, 256, (32, 32), dtype=np.uint16)
    (tmp_path / "p16").mkdir()
    (tmp_path / "p8").mkdir()
    Image.fromarray((grey8 * 257).astype(np.uint16)).save(tmp_path / "p16" / "x.png")
    Image.fromarray(grey8.astype(np.uint8)).save(tmp_path / "p8" / "x.png")
    assert Image.open(tmp_path / "p16" / "x.png").mode.startswith("I")
    before = snapshot(tmp_path / "p16")
    code8, _, err8 = call(run_cli, "predict2d", "--model", run2d, "--images", tmp_path / "p8", "--out", tmp_path / "o8",
                          "--threads", 1)
    assert code8 == 0, err8
    code, _, err = call(run_cli, "predict2d", "--model", run2d, "--images", tmp_path / "p16", "--out", tmp_path / "o16",
                        "--threads", 1)
    assert "Traceback" not in err, err[-3000:]
    if code == 2:
        one_error_line(code, err, tmp_path / "p16" / "x.png")
    else:
        assert code == 0, err
        m8 = np.array(Image.open(tmp_path / "o8" / "x.png"))
        m16 = np.array(Image.open(tmp_path / "o16" / "x.png"))
        assert np.mean(m8 == m16) > 0.99, "the 16-bit PNG was not read at its full range"
        # the overlay blends the picture as read: it shows a clipped reading even where the mask cannot
        o8 = np.array(Image.open(tmp_path / "o8" / "x_overlay.png").convert("RGB")).astype(int)
        o16 = np.array(Image.open(tmp_path / "o16" / "x_overlay.png").convert("RGB")).astype(int)
        clipped = np.mean(np.abs(o8 - o16) > 3)
        assert clipped < 0.01, f"{clipped:.1%} of the 16-bit picture's overlay pixels differ from the 8-bit one's"
    untouched(before, tmp_path / "p16")


# ---------------------------------------------------------------------------------------------- damaged stage files

@pytest.mark.parametrize("damage", ["not_an_object", "no_source"])
def test_preprocess_rerun_redoes_a_case_whose_entry_json_is_damaged(ws, run_cli, damage):
    entry = ws / "pre" / "cases" / CASES[1] / "entry.json"
    if damage == "not_an_object":
        entry.write_text("[1, 2, 3]\n")
    else:
        edit_json(entry, lambda e: e.pop("source"))
    inputs = hashes(ws / "src", ws / "raw.json")
    code, _, err = call(run_cli, "preprocess", ws / "raw.json", "--out", ws / "pre", "--workers", 1)
    assert "Traceback" not in err, err[-3000:]
    assert code == 0, err
    manifest = json.loads((ws / "pre" / "preprocessed.json").read_text())
    assert sorted(c["id"] for c in manifest["cases"]) == list(CASES)
    redone = json.loads(entry.read_text())
    assert isinstance(redone, dict) and "source" in redone
    assert hashes(ws / "src", ws / "raw.json") == inputs


def test_merge_refuses_a_shard_manifest_without_config_sha256(ws, run_cli):
    out = ws / "sharded"
    for shard in ("0/2", "1/2"):
        code, _, err = call(run_cli, "preprocess", ws / "raw.json", "--out", out, "--workers", 1, "--shard", shard)
        assert code == 0, err
    shards = sorted((out / "shards").glob("*.json"))
    assert len(shards) == 2, shards
    edit_json(shards[0], lambda m: m["config"].pop("config_sha256", None))
    (out / "preprocessed.json").unlink(missing_ok=True)
    before = snapshot(ws)
    code, _, err = call(run_cli, "merge", out)
    one_error_line(code, err, shards[0])
    untouched(before, ws)


def test_report_refuses_a_damaged_summary_json(ws, run_cli):
    summary = edit_json(ws / "eval" / "summary.json", lambda s: s.update(regions=5))
    before = snapshot(ws)
    code, _, err = call(run_cli, "report", "--eval", ws / "eval", "--out", ws / "new_report")
    one_error_line(code, err, summary)
    untouched(before, ws, ws / "new_report")


# ---------------------------------------------------------------------------------------------- small ones

@pytest.mark.parametrize("value", [",", ", ,", ""])
def test_ingest_empty_channel_list_is_one_line(ws, run_cli, value):
    before = snapshot(ws)
    code, _, err = call(run_cli, "ingest", ws / "src", "--out", ws / "new_raw.json", "--channels", value)
    one_error_line(code, err, "--channels")
    assert not (ws / "new_raw.json").exists()
    untouched(before, ws)


@pytest.mark.parametrize("flag,value", [("--et-min-mm3", "nan"), ("--et-min-mm3", "inf"), ("--et-min-mm3", "-1"),
                                        ("--min-component-fraction", "1.5"), ("--min-component-fraction", "nan"),
                                        ("--min-component-fraction", "-0.1")])
def test_predict_post_processing_values_are_checked(ws, run_cli, flag, value):
    out = ws / "new_mask.nii.gz"
    before = snapshot(ws)
    code, _, err = call(run_cli, "predict", "--model", ws / "run", "--case", ws / "src" / CASES[0], "--out", out,
                        "--threads", 1, flag, value)
    line = one_error_line(code, err)
    field = flag.lstrip("-").replace("-", "_")
    assert flag in line or field in line, f"the error line names neither flag nor field: {line!r}"
    assert not out.exists()
    untouched(before, ws)


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_source_with_zero_cases_is_refused(tmp_path, run_cli, layout):
    src = (write_msd if layout == "msd" else write_nnunet)(tmp_path / "src", 0)
    before = snapshot(src)
    code, _, err = call(run_cli, "ingest", src, "--out", tmp_path / "raw.json", "--workers", 1)
    one_error_line(code, err, src)
    assert not (tmp_path / "raw.json").exists()
    untouched(before, src)


# ---------------------------------------------------------------------------------------------- symlinked study folder

def test_study_folder_of_symlinked_case_folders_is_ingested(ws, run_cli):
    """study/<case> -> ../src/<case>: links the user placed in the source they name are theirs to follow."""
    study = ws / "study"
    study.mkdir()
    for case in CASES[:2]:
        (study / case).symlink_to(Path("..") / "src" / case, target_is_directory=True)
    before = snapshot(ws)
    raw = ws / "study_raw.json"
    code, _, err = call(run_cli, "ingest", study, "--out", raw, "--workers", 1)
    assert "Traceback" not in err, err[-3000:]
    assert code == 0, err
    manifest = json.loads(raw.read_text())
    assert sorted(c["id"] for c in manifest["cases"]) == list(CASES[:2])
    for case in manifest["cases"]:  # what they point to: every recorded file is a real file of src/
        root = (raw.parent / manifest["roots"][case["root"]])
        for entry in case["images"].values():
            real = os.path.realpath(root / entry["path"])
            assert real.startswith(os.path.realpath(ws / "src") + os.sep), real
    code, _, err = call(run_cli, "preprocess", raw, "--out", ws / "study_pre", "--workers", 1)
    assert code == 0 and "Traceback" not in err, err
    untouched(before, ws, raw, ws / "study_pre")
