"""Synthetic phantoms: determinism, label nesting, skull stripping, contrast, affines, files, CLI."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_seg.synth import phantoms as synth, shapes as synth_shapes
from brats_seg.cli import main

SHAPE = (48, 48, 32)
FILES = ("t1", "t1ce", "t2", "flair", "seg")


@pytest.fixture(scope="module")
def phantoms() -> list[synth.Phantom]:
    return [synth.make_phantom((7, i), SHAPE) for i in range(3)]


@pytest.fixture(scope="module")
def written_case(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return synth.synthesize_case("Synth_0000", out, (5, 0), SHAPE, affine_kind="oblique")


def _load(case_dir: Path, name: str) -> nib.Nifti1Image:
    return nib.load(case_dir / f"{case_dir.name}_{name}.nii.gz")


def test_same_seed_same_arrays_different_seed_different():
    a, b, c = (synth.make_phantom(s, SHAPE) for s in ((1, 0), (1, 0), (1, 1)))
    for name in synth.MODALITIES:
        assert np.array_equal(a.images[name], b.images[name])
        assert not np.array_equal(a.images[name], c.images[name])
    assert np.array_equal(a.seg, b.seg) and not np.array_equal(a.seg, c.seg)
    assert np.array_equal(a.affine, b.affine)


def test_written_files_are_byte_identical_across_runs(tmp_path):
    first = synth.synthesize_case("Synth_0001", tmp_path / "a", 11, SHAPE)
    second = synth.synthesize_case("Synth_0001", tmp_path / "b", 11, SHAPE)
    for name in FILES:
        path = f"Synth_0001_{name}.nii.gz"
        assert (first / path).read_bytes() == (second / path).read_bytes()


def test_labels_present_and_regions_nested(phantoms):
    for ph in phantoms:
        assert set(np.unique(ph.seg)) == {0, 1, 2, 4}
        brain = ph.images["t1"] > 0
        wt = ph.seg > 0
        assert 0.015 <= wt.sum() / brain.sum() <= 0.12
        assert (ph.seg == 1).sum() >= 8 and (ph.seg == 4).sum() >= 8
    rng = np.random.default_rng(3)
    tissue = synth_shapes.brain_tissue(rng, SHAPE)
    regions = synth_shapes.tumour_regions(rng, tissue)
    wt, tc, ncr, et = (regions[k] for k in ("wt", "tc", "ncr", "et"))
    assert not (et & ~tc).any() and not (tc & ~wt).any() and not (ncr & ~tc).any()
    assert not (et & ncr).any() and (wt & ~tc).any()
    assert not (wt & (tissue == synth_shapes.BG)).any()


def test_zero_outside_brain_and_labels_inside(phantoms):
    for ph in phantoms:
        brain = ph.images["t1"] > 0
        assert 0.1 < brain.mean() < 0.6
        for name, image in ph.images.items():
            assert image.dtype == np.int16
            assert np.array_equal(image > 0, brain), name  # same mask, nothing negative
            assert (image[brain] >= 1).all() and (image[~brain] == 0).all()
        assert ph.seg.dtype == np.uint8 and not (ph.seg[~brain]).any()
        for axis in range(3):  # the brain never touches the volume border
            assert not brain.take([0, -1], axis=axis).any()


def test_tumour_appearance_per_modality(phantoms):
    for ph in phantoms:
        brain = ph.images["t1"] > 0
        normal, ncr, ed, et = brain & (ph.seg == 0), ph.seg == 1, ph.seg == 2, ph.seg == 4
        mean = {k: {r: float(v[m].mean()) for r, m in
                    (("normal", normal), ("ncr", ncr), ("ed", ed), ("et", et))}
                for k, v in ph.images.items()}
        assert mean["t1ce"]["et"] > 1.3 * mean["t1ce"]["ncr"]
        assert mean["t1ce"]["et"] > 1.05 * mean["t1ce"]["normal"]
        # enhancement: ET gains far more from contrast (t1 -> t1ce) than normal tissue does
        gain = {r: mean["t1ce"][r] / mean["t1"][r] for r in ("et", "normal")}
        assert gain["et"] > 1.1 * gain["normal"]
        assert mean["flair"]["ed"] > 1.2 * mean["flair"]["normal"]
        assert mean["t2"]["ed"] > 1.1 * mean["t2"]["normal"]
        assert mean["t2"]["ncr"] > mean["t2"]["normal"]


def test_normal_tissue_contrast_follows_modality():
    rng = np.random.default_rng(0)
    tissue = synth_shapes.brain_tissue(rng, SHAPE)
    images = synth._render(rng, tissue)
    mean = {k: [float(v[tissue == c].mean()) for c in (synth_shapes.CSF, synth_shapes.GM,
                                                        synth_shapes.WM)] for k, v in images.items()}
    csf, gm, wm = 0, 1, 2
    assert mean["t1"][wm] > mean["t1"][gm] > mean["t1"][csf]
    assert mean["t2"][csf] > mean["t2"][gm] > mean["t2"][wm]
    assert mean["flair"][gm] > mean["flair"][wm] > mean["flair"][csf]


def _affine_kind(affine: np.ndarray) -> str:
    """Classify from the matrix itself, not from the label the generator reports."""
    rot = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if np.allclose(rot, np.diag([-1, -1, 1]), atol=1e-6):
        return "lps"
    if np.allclose(rot, np.eye(3), atol=1e-6):
        return "ras"
    base = np.diag(np.sign(np.diag(rot)))
    angle = np.degrees(np.arccos(np.clip((np.trace(rot @ base.T) - 1) / 2, -1, 1)))
    return "oblique" if 2.9 <= angle <= 20.1 else f"unexpected ({angle:.1f} deg)"


def test_affines_vary_over_seeds_and_stay_valid():
    kinds = set()
    for seed in range(12):
        affine = synth_shapes.draw_affine(np.random.default_rng(seed), SHAPE)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        assert ((spacing > 0.8) & (spacing < 2.1)).all()
        assert np.array_equal(affine[3], [0, 0, 0, 1])
        kinds.add(_affine_kind(affine))
    assert kinds == {"lps", "ras", "oblique"}


def test_qform_matches_sform_for_many_oblique_affines():
    worst = 0.0
    for seed in range(60):
        drawn = synth_shapes.draw_affine(np.random.default_rng(seed), (96, 96, 64), kind="oblique")
        affine = synth.qform_representable(drawn)
        header = nib.Nifti1Header()
        header.set_sform(affine, code=1)
        header.set_qform(affine, code=1)
        assert np.array_equal(header.get_sform(), affine)
        worst = max(worst, float(np.abs(header.get_qform() - header.get_sform()).max()))
        assert _affine_kind(affine) == "oblique"
    assert worst < 1e-5


def test_files_share_one_affine_with_matching_qform(written_case):
    affines = []
    for name in FILES:
        img = _load(written_case, name)
        header = img.header
        assert img.shape == SHAPE
        assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
        assert np.allclose(header.get_qform(), header.get_sform(), atol=1e-5)
        affines.append(img.affine)
    assert all(np.array_equal(affines[0], a) for a in affines[1:])
    expected = synth.make_phantom((5, 0), SHAPE, affine_kind="oblique").affine
    assert np.array_equal(affines[0], expected)
    assert _affine_kind(affines[0]) == "oblique"
    assert _load(written_case, "t1").get_data_dtype() == np.int16
    seg = _load(written_case, "seg")
    assert seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(seg.dataobj))) == {0, 1, 2, 4}


def test_cli_writes_cases(tmp_path, capsys):
    rc = main(["synth", "--out", str(tmp_path), "--cases", "2", "--seed", "3", "--shape", "32,32,24"])
    assert rc == 0
    for case in ("Synth_0000", "Synth_0001"):
        for name in FILES:
            assert (tmp_path / case / f"{case}_{name}.nii.gz").is_file()
    assert not (tmp_path / "Synth_0002").exists()
    assert "2 cases" in capsys.readouterr().out
    direct = synth.make_phantom((3, 1), (32, 32, 24))
    on_disk = np.asanyarray(_load(tmp_path / "Synth_0001", "t2").dataobj)
    assert np.array_equal(on_disk, direct.images["t2"])


@pytest.mark.parametrize("shape", ["96,96", "a,b,c", "96,0,64", "8,8,8"])
def test_cli_rejects_bad_shape(tmp_path, capsys, shape):
    rc = main(["synth", "--out", str(tmp_path), "--shape", shape])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: --shape:") and "three positive integers" in err
    assert len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
