"""Properties of what preprocess, predict and evaluate accept from files and flags (io.content,
io.volume.select_volume, io.manifest.manifest_root, contracts.stage_files, the voxel budget and the
bound flags): each input is either accepted with its meaning intact or refused with one InputError."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brats_seg.commands.preprocess import parse_max_voxels, parse_spacing_range
from brats_seg.contracts.stage_files import PredictionSidecar, PreprocessedEntry, read_optional
from brats_seg.errors import InputError
from brats_seg.io.content import check_intensities, check_label_map, label_values
from brats_seg.io.geometry import Geometry
from brats_seg.io.labels import CONVENTIONS, allowed_values
from brats_seg.io.manifest import manifest_root
from brats_seg.io.volume import select_volume
from brats_seg.preprocess.case import PreprocessConfig, prepare_arrays

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LABEL_DTYPES = st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64])


@FAST
@given(values=st.lists(st.integers(0, 6), min_size=1, max_size=40), dtype=LABEL_DTYPES)
def test_label_values_are_the_stored_integers(values, dtype):
    data = np.asarray(values, dtype=dtype).reshape(-1, 1, 1)
    assert label_values(Path("seg.nii.gz"), data) == set(values)


@FAST
@given(values=st.lists(st.integers(0, 6), min_size=1, max_size=20), at=st.integers(0, 19),
       bad=st.sampled_from([0.5, np.nan, np.inf, -2.25]))
def test_non_integer_labels_are_refused(values, at, bad):
    data = np.asarray(values, dtype=np.float32)
    data[at % data.size] = bad
    with pytest.raises(InputError, match="non-integer"):
        label_values(Path("seg.nii.gz"), data.reshape(-1, 1, 1))


@FAST
@given(values=st.sets(st.integers(0, 7), min_size=1, max_size=6), convention=st.sampled_from(CONVENTIONS))
def test_label_map_is_refused_exactly_when_a_value_is_outside_its_convention(values, convention):
    data = np.asarray(sorted(values), dtype=np.uint8).reshape(-1, 1, 1)
    fits = values <= allowed_values(convention) and (not {3, 4} <= values or convention == "brats2024")
    if fits:
        check_label_map(Path("seg.nii.gz"), data, convention)
    else:
        with pytest.raises(InputError) as err:
            check_label_map(Path("seg.nii.gz"), data, convention)
        assert "\n" not in err.value.line() and "seg.nii.gz" in err.value.line()


@FAST
@given(fill=st.sampled_from([0.0, np.nan, np.inf, 5.0]), dtype=st.sampled_from([np.float32, np.float64, np.int16]))
def test_intensities_must_be_finite_and_not_all_zero(fill, dtype):
    if np.dtype(dtype).kind == "i" and not np.isfinite(fill):
        return
    data = np.full((3, 2, 2), fill, dtype=dtype)
    if np.isfinite(fill) and fill != 0:
        check_intensities(Path("t1.nii.gz"), data)
    else:
        with pytest.raises(InputError):
            check_intensities(Path("t1.nii.gz"), data)


@FAST
@given(shape=st.lists(st.integers(1, 4), min_size=3, max_size=4), index=st.one_of(st.none(), st.integers(0, 5)))
def test_volume_index_names_a_volume_or_is_refused(shape, index):
    data = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    valid = index is None or (len(shape) == 4 and index < shape[3])
    if not valid:
        with pytest.raises(InputError, match="volume_index"):
            select_volume(Path("x.nii.gz"), data, index)
        return
    got = select_volume(Path("x.nii.gz"), data, index)
    np.testing.assert_array_equal(got, data if index is None else data[..., index])


SEGMENTS = st.lists(st.sampled_from(["data", "..", ".", "sub", "x"]), min_size=1, max_size=4)


@FAST
@given(parts=SEGMENTS, absolute=st.booleans(), allow_parent=st.booleans())
def test_roots_outside_the_manifest_folder_need_a_data_root(tmp_path_factory, parts, absolute, allow_parent):
    base = tmp_path_factory.mktemp("roots")
    folder = base / "a" / "b"
    folder.mkdir(parents=True)
    rel = ("/" if absolute else "") + "/".join(parts)
    manifest = {"roots": [rel]}
    lexical = Path(__import__("os").path.normpath(folder / rel))
    data_roots = [base] if allow_parent else []
    inside = lexical.is_relative_to(folder) or (allow_parent and lexical.is_relative_to(base))
    if inside:
        assert manifest_root(folder / "raw.json", manifest, 0, data_roots) == lexical.resolve()
    else:
        with pytest.raises(InputError, match="--data-root") as err:
            manifest_root(folder / "raw.json", manifest, 0, data_roots)
        assert str(folder / "raw.json") in err.value.line()


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3)), max_leaves=8)


@FAST
@given(doc=JSON, model=st.sampled_from([PreprocessedEntry, PredictionSidecar]))
def test_a_damaged_stage_file_reads_as_absent(tmp_path_factory, doc, model):
    path = tmp_path_factory.mktemp("stage") / "entry.json"
    path.write_text(json.dumps(doc))
    assert read_optional(path, model) is None  # random JSON is never a valid entry: redo, never crash


GEOM = Geometry(shape=(6, 5, 4), affine=tuple(tuple(float(v) for v in row) for row in np.eye(4)))


@FAST
@given(offset=st.floats(0.5, 1000.0), constant=st.booleans())
def test_read_only_images_without_a_zero_border_are_normalised_without_writing_them(offset, constant):
    rng = np.random.default_rng(0)
    images = [np.full(GEOM.shape, offset, np.float32) if constant and c == 3 else
              (rng.uniform(0, 100, GEOM.shape) + offset).astype(np.float32, order="F") for c in range(4)]
    before = [im.copy() for im in images]
    for im in images:
        im.flags.writeable = False  # as io.volume returns them: views of the decompressed bytes
    prepared = prepare_arrays(images, None, GEOM, ["t1", "t1ce", "t2", "flair"], PreprocessConfig(dtype="float32"))
    assert prepared.image.shape == GEOM.shape + (4,)  # no zero border: the whole volume is the brain
    for c, (im, old) in enumerate(zip(images, before)):
        np.testing.assert_array_equal(im, old)
        z = prepared.image[..., c].astype(np.float64)
        assert abs(z.mean()) < 1e-3 and (abs(z.std() - 1) < 1e-3 or (constant and c == 3 and not z.any()))


@FAST
@given(spacing=st.floats(0.05, 20.0), target=st.floats(0.5, 4.0), budget=st.integers(1, 20_000))
def test_the_resampled_grid_is_bounded_by_the_voxel_budget(spacing, target, budget):
    affine = np.diag([spacing, spacing, spacing, 1.0])
    geom = Geometry(shape=(6, 5, 4), affine=tuple(tuple(float(v) for v in row) for row in affine))
    images = [np.ones(geom.shape, np.float32)]
    cfg = PreprocessConfig(spacing=(target,) * 3, dtype="float32", max_voxels=budget)
    shape = [max(1, int(round(n * spacing / target))) for n in geom.shape]
    if int(np.prod(shape)) > budget:
        with pytest.raises(InputError, match="--max-voxels"):
            prepare_arrays(images, None, geom, ["t1"], cfg, case_id="C1")
    else:
        assert list(prepare_arrays(images, None, geom, ["t1"], cfg).image.shape[:3]) == shape


@FAST
@given(lo=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(1.0)),
       hi=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(5.0)))
def test_spacing_range_flag_is_a_finite_ordered_positive_pair(lo, hi):
    text = f"{lo},{hi}"
    try:
        got = parse_spacing_range(text)
    except InputError as err:
        assert err.line().startswith("error: --spacing-range: ")
    else:
        assert 0 < got[0] <= got[1] <= 1000


@FAST
@given(value=st.integers(-10, 10))
def test_max_voxels_flag_is_positive(value):
    if value >= 1:
        assert parse_max_voxels(value) == value
    else:
        with pytest.raises(InputError, match="--max-voxels"):
            parse_max_voxels(value)
