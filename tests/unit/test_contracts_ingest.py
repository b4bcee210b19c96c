"""Property tests of ingestion's contracts: dataset.json, the label-file naming rule, the ingest flags,
voxel-size bounds, and manifest paths through symlinks (relative_inside / resolve_inside)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brats_seg.commands.ingest import parse_channels, parse_spacing_range, parse_workers
from brats_seg.contracts.dataset_json import read_dataset_json
from brats_seg.errors import InputError
from brats_seg.ingest.layouts import CHANNEL_ALIASES, LABEL_TOKENS, MASK_TOKENS, classify_file
from brats_seg.io.geometry import VOXEL_SIZE_RANGE_MM, check_voxel_size
from brats_seg.io.manifest import relative_inside, resolve_inside

FEW = settings(max_examples=25, deadline=None)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
KEYS = ["labels", "modality", "channel_names", "training", "test", "file_ending", "numTraining", "numTest"]
name_part = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)


def _one_line(err: InputError, where: object) -> None:
    assert err.where == str(where) and "\n" not in err.line() and err.line().startswith("error: ")


@FEW
@given(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4))
def test_any_dataset_json_parses_or_is_one_line(meta):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dataset.json"
        path.write_text(json.dumps(meta))
        try:
            parsed = read_dataset_json(path)
        except InputError as err:
            _one_line(err, path)
            return
        assert all(isinstance(image, str) and not os.path.isabs(image) for image, _ in parsed.image_paths())
        assert all(isinstance(v, (int, list)) for v in parsed.label_names().values())


@FEW
@given(st.lists(name_part, min_size=1, max_size=3), st.booleans(), st.sampled_from(["absolute", "dotdot", "plain"]))
def test_dataset_json_paths_stay_inside_the_dataset(parts, labelled, kind):
    rel = "/".join(parts)
    image = {"absolute": "/" + rel, "dotdot": "../" + rel, "plain": "./" + rel}[kind]
    entry = {"image": image, "label": "labelsTr/x.nii.gz"} if labelled else {"image": image}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dataset.json"
        path.write_text(json.dumps({"training": [entry]}))
        if kind == "plain":
            assert read_dataset_json(path).image_paths() == [(image, entry.get("label"))]
        else:
            with pytest.raises(InputError, match="training/0/image") as info:
                read_dataset_json(path)
            _one_line(info.value, path)


@FEW
@given(st.lists(name_part, min_size=1, max_size=3), st.sampled_from(sorted(LABEL_TOKENS)),
       st.sampled_from(sorted(CHANNEL_ALIASES)), st.sampled_from(["_", "-"]))
def test_naming_rule(stem, label, channel, sep):
    stem = [t for t in stem if t not in LABEL_TOKENS | MASK_TOKENS.union(CHANNEL_ALIASES)] or ["case"]
    case = sep.join(stem)
    assert classify_file(Path(f"{case}{sep}{label}.nii.gz")) == "seg"
    assert classify_file(Path(f"{case}{sep}{channel}.nii.gz")) == CHANNEL_ALIASES[channel]
    assert classify_file(Path(f"{case}{sep}{label}{sep}{channel}.nii.gz")) == CHANNEL_ALIASES[channel]
    for mask in MASK_TOKENS:  # a mask is neither an image nor a label map, whatever else its name says
        assert classify_file(Path(f"{case}{sep}{channel}{sep}{mask}.nii.gz")) is None
        assert classify_file(Path(f"{case}{sep}{label}{sep}{mask}.nii.gz")) is None
    assert classify_file(Path(f"{case}.nii.gz")) is None


@FEW
@given(st.text(",; t1ce2FLAIR_ -", max_size=20))
def test_channels_flag_is_distinct_names_or_one_line(text):
    try:
        names = parse_channels(text)
    except InputError as err:
        _one_line(err, "--channels")
        return
    assert names and len(set(names)) == len(names) and all(n and n == n.strip().lower() for n in names)


@FEW
@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True))
def test_spacing_range_flag(lo, hi):
    try:
        assert parse_spacing_range(f"{lo!r},{hi!r}") == (lo, hi)
        assert math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi
    except InputError as err:
        _one_line(err, "--spacing-range")
        assert not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi)


@FEW
@given(st.text("0123456789-+. x", max_size=5))
def test_workers_flag(text):
    try:
        assert 1 <= parse_workers(text) <= 256
    except InputError as err:
        _one_line(err, "--workers")


@FEW
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.floats(0.0, 30.0)
                | st.sampled_from([0.0013, 250.0, 1.0, 0.05, 20.0]), min_size=3, max_size=3))
def test_voxel_size_bounds(spacing):
    lo, hi = VOXEL_SIZE_RANGE_MM
    inside = all(math.isfinite(v) and lo <= v <= hi for v in spacing)
    try:
        check_voxel_size("case/f.nii.gz", spacing)
        assert inside
    except InputError as err:
        _one_line(err, "case/f.nii.gz")
        assert not inside and "--spacing-range" in err.message


@FEW
@given(st.lists(name_part, min_size=1, max_size=2), name_part, st.booleans())
def test_links_recorded_by_relative_inside_are_what_resolve_inside_accepts(folders, name, link_the_folder):
    with tempfile.TemporaryDirectory() as tmp:
        root, elsewhere = Path(tmp) / "root", Path(tmp) / "elsewhere"
        real = elsewhere.joinpath(*folders) / f"{name}.nii.gz"
        real.parent.mkdir(parents=True)
        real.write_bytes(b"x")
        root.mkdir()
        if link_the_folder:  # root/<case> -> elsewhere/<folders...>
            (root / "case").symlink_to(real.parent, target_is_directory=True)
        else:  # root/case/<name> -> the file
            (root / "case").mkdir()
            (root / "case" / real.name).symlink_to(real)
        links: dict[str, str] = {}
        rel = relative_inside(root, root / "case" / real.name, "c1", links)
        assert rel == f"case/{real.name}" and len(links) == 1
        assert resolve_inside(root, rel, "c1", links) == real.resolve()
        with pytest.raises(InputError, match="did not record"):
            resolve_inside(root, rel, "c1")  # the same link, not recorded: refused
        with pytest.raises(InputError, match="rerun ingest"):
            resolve_inside(root, rel, "c1", {k: v + "x" for k, v in links.items()})  # recorded elsewhere
        with pytest.raises(InputError, match="outside the dataset root"):
            relative_inside(root, root / "case" / real.name, "c1")  # without a record to fill: strict


@FEW
@given(st.one_of(st.integers(), st.lists(st.text(max_size=3), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2)))
def test_links_of_the_wrong_shape_are_one_line(links):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        (Path(tmp) / "out").mkdir()
        root.mkdir()
        (root / "link").symlink_to(Path(tmp) / "out", target_is_directory=True)
        with pytest.raises(InputError) as info:
            resolve_inside(root, "link/f.nii.gz", "c1", links)
        _one_line(info.value, "c1")
