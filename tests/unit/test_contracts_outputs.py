"""Outputs never replace inputs (core/paths.refuse_overwrite), pictures read at their full range
(seg2d image modes), and the report's typed reads of summary.json and run.json."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from brats_seg.core.paths import refuse_overwrite
from brats_seg.errors import InputError
from brats_seg.seg2d.data import read_image, read_mask
from brats_seg.seg2d.labels import LabelSpec

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------------------------------------- refuse_overwrite

@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"a")
    (folder / "b.png").write_bytes(b"b")
    return folder


def test_an_output_that_is_an_input_file_or_folder_is_refused(inputs: Path):
    with pytest.raises(InputError, match="is one of the command's inputs") as err:
        refuse_overwrite(inputs / "a.png", [inputs / "a.png"])
    assert str(inputs / "a.png") in err.value.line()
    with pytest.raises(InputError, match="is one of the command's inputs"):
        refuse_overwrite(inputs, [inputs])


def test_an_output_folder_that_holds_an_input_file_is_refused(inputs: Path):
    with pytest.raises(InputError, match="folder holds the command's input"):
        refuse_overwrite(inputs, [inputs / "b.png"], "--out")


def test_a_new_file_beside_the_inputs_and_a_folder_above_them_are_allowed(inputs: Path):
    refuse_overwrite(inputs / "new.png", [inputs / "a.png", inputs], out_is_folder=False)
    refuse_overwrite(inputs / "masks", [inputs / "a.png"], out_is_folder=True)
    refuse_overwrite(inputs.parent, [inputs / "a.png"], out_is_folder=True)  # holds the folder, not the file


def test_relative_and_dotted_spellings_are_the_same_path(inputs: Path, monkeypatch):
    monkeypatch.chdir(inputs.parent)
    with pytest.raises(InputError):
        refuse_overwrite(Path("inputs/../inputs/a.png"), [inputs / "a.png"])
    with pytest.raises(InputError):
        refuse_overwrite(Path("./inputs/"), [Path("inputs/a.png")], out_is_folder=True)


def test_symlinks_are_followed_both_ways(inputs: Path, tmp_path: Path):
    link_file = tmp_path / "link.png"
    link_file.symlink_to(inputs / "a.png")
    with pytest.raises(InputError, match="is one of"):
        refuse_overwrite(link_file, [inputs / "a.png"])  # the output is a link to an input
    with pytest.raises(InputError, match="is one of"):
        refuse_overwrite(inputs / "a.png", [link_file])  # the input was named through a link
    link_dir = tmp_path / "link_dir"
    link_dir.symlink_to(inputs, target_is_directory=True)
    with pytest.raises(InputError, match="folder holds"):
        refuse_overwrite(link_dir, [inputs / "a.png"], out_is_folder=True)


def test_a_folder_holding_a_symlink_to_an_input_is_refused(inputs: Path, tmp_path: Path):
    """photos/x.png -> elsewhere: the link is the user's file in photos; the real file's folder is held too."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "x.png").symlink_to(inputs / "a.png")
    with pytest.raises(InputError, match="folder holds"):
        refuse_overwrite(photos, [photos / "x.png"], out_is_folder=True)
    with pytest.raises(InputError, match="folder holds"):
        refuse_overwrite(inputs, [photos / "x.png"], out_is_folder=True)


def test_hard_links_are_the_same_file(inputs: Path, tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    os.link(inputs / "a.png", other / "a.png")
    with pytest.raises(InputError, match="is one of"):
        refuse_overwrite(other / "a.png", [inputs / "a.png"])
    with pytest.raises(InputError, match="folder holds"):  # the same file under the same name in --out
        refuse_overwrite(other, [inputs / "a.png"], out_is_folder=True)


def test_a_symlink_loop_is_no_crash(tmp_path: Path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    refuse_overwrite(tmp_path / "out", [loop], out_is_folder=True)


def test_folder_guess_existing_folder_or_no_suffix(inputs: Path):
    with pytest.raises(InputError, match="folder holds"):
        refuse_overwrite(inputs, [inputs / "a.png"])  # exists as a folder
    refuse_overwrite(inputs / "report.json", [inputs / "a.png"])  # a new file, not a folder


names = st.text(alphabet="abcxyz_", min_size=1, max_size=6)


@FAST
@given(files=st.lists(names, min_size=1, max_size=4, unique=True), pick=st.integers(0, 7),
       kind=st.sampled_from(["input", "new_file", "input_folder", "sub_folder", "parent"]))
def test_property_refused_exactly_when_out_is_an_input_or_the_folder_holding_one(tmp_path_factory, files, pick, kind):
    root = tmp_path_factory.mktemp("prop") / "in"
    root.mkdir()
    paths = [root / f"{n}.png" for n in files]
    for p in paths:
        p.write_bytes(b"x")
    target = {"input": paths[pick % len(paths)], "new_file": root / "zz_new.png", "input_folder": root,
              "sub_folder": root / "sub", "parent": root.parent}[kind]
    as_folder = kind in ("input_folder", "sub_folder", "parent")
    try:
        refuse_overwrite(target, paths, out_is_folder=as_folder)
        refused = False
    except InputError as err:
        refused = True
        assert str(target) in err.line()
    assert refused == (kind in ("input", "input_folder")), (kind, target)


# ---------------------------------------------------------------------------------------------- image modes

def _save(tmp_path: Path, image: Image.Image, name: str = "x.png") -> Path:
    path = tmp_path / name
    image.save(path)
    return path


@FAST
@given(grey=st.lists(st.integers(0, 255), min_size=16, max_size=16))
def test_property_16_bit_grey_reads_as_its_8_bit_picture(tmp_path_factory, grey):
    tmp = tmp_path_factory.mktemp("img")
    g8 = np.array(grey, np.uint16).reshape(4, 4)
    p16 = _save(tmp, Image.fromarray(g8 * 257), "g16.png")
    p8 = _save(tmp, Image.fromarray(g8.astype(np.uint8)), "g8.png")
    assert Image.open(p16).mode.startswith("I")
    assert np.array_equal(read_image(p16), read_image(p8))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1"])
def test_common_modes_are_rgb_uint8(tmp_path: Path, mode: str):
    image = Image.new("RGB", (5, 4), (200, 100, 50)).convert(mode)
    suffix = ".tif" if mode == "CMYK" else ".png"
    rgb = read_image(_save(tmp_path, image, "x" + suffix))
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8


def test_float_pictures_are_read_from_0_to_1_or_refused(tmp_path: Path):
    ok = _save(tmp_path, Image.fromarray(np.full((3, 3), 0.5, np.float32)), "ok.tif")
    assert (read_image(ok) == 128).all()
    bad = _save(tmp_path, Image.fromarray(np.full((3, 3), 7.0, np.float32)), "bad.tif")
    with pytest.raises(InputError, match="float") as err:
        read_image(bad)
    assert "bad.tif" in err.value.line() and "7..7" in err.value.line()


def test_32_bit_integers_past_16_bits_are_refused(tmp_path: Path):
    path = _save(tmp_path, Image.fromarray(np.full((3, 3), 1 << 20, np.int32)), "wide.tif")
    with pytest.raises(InputError, match="32-bit integer"):
        read_image(path)


def test_a_16_bit_index_mask_keeps_its_values_and_a_float_mask_is_refused(tmp_path: Path):
    mask = np.array([[0, 1], [2, 300]], np.uint16)
    assert read_mask(_save(tmp_path, Image.fromarray(mask), "m.png"), LabelSpec(400)).tolist() == mask.tolist()
    with pytest.raises(InputError, match="mask mode F"):
        read_mask(_save(tmp_path, Image.fromarray(mask.astype(np.float32)), "m.tif"), LabelSpec(400))


# ---------------------------------------------------------------------------------------------- report inputs

SUMMARY = {"cases": ["a"], "mean_dice": 0.5, "conventions": {"one_empty": {"dice": 0.0, "hd95_mm": 373.13}},
           "regions": {r: {m: {"mean": 0.5, "std": 0.1, "n": 1} for m in ("dice", "hd95_mm", "sensitivity",
                                                                             "specificity")} for r in ("WT", "TC", "ET")}}


def _eval_dir(tmp_path: Path, summary: dict) -> Path:
    folder = tmp_path / "eval"
    folder.mkdir(exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_report_renders_a_valid_summary_and_empty_statistics(tmp_path: Path):
    from brats_seg.evaluate.report import write_report

    summary = json.loads(json.dumps(SUMMARY))
    summary["regions"]["ET"]["hd95_mm"] = {"mean": None, "std": None, "n": 0}
    text = write_report(_eval_dir(tmp_path, summary), tmp_path / "out").read_text()
    assert "| ET |" in text and "n/a ± n/a" in text


damage = st.sampled_from([
    ("regions", 5), ("regions", {"WT": {"dice": {"mean": "high"}}}), ("regions", {"WT": {}}),
    ("cases", "a"), ("mean_dice", [1]), ("conventions", {"one_empty": {}}), ("conventions", None)])


@FAST
@given(change=damage)
def test_property_a_damaged_summary_is_one_line_and_nothing_written(tmp_path_factory, change):
    from brats_seg.evaluate.report import write_report

    tmp = tmp_path_factory.mktemp("rep")
    eval_dir = _eval_dir(tmp, {**SUMMARY, change[0]: change[1]})
    with pytest.raises(InputError) as err:
        write_report(eval_dir, tmp / "out")
    assert "summary.json" in err.value.line() and "\n" not in err.value.line()
    assert not (tmp / "out").exists()


def test_report_refuses_a_damaged_run_json_and_an_out_over_its_inputs(tmp_path: Path):
    from brats_seg.evaluate.report import write_report

    eval_dir = _eval_dir(tmp_path, SUMMARY)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": 3}))
    with pytest.raises(InputError, match="status") as err:
        write_report(eval_dir, tmp_path / "out", run=run)
    assert "run.json" in err.value.line() and not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="outputs never"):
        write_report(eval_dir, eval_dir)
