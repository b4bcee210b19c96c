"""Patch sampler: foreground ratio, padding, region reads, warps, reproducible stream, sharding."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brats_seg.seg3d.augment import augment_intensity, random_flip
from brats_seg.engine.loader import StreamSampler, make_loader
from brats_seg.seg3d.loader import PatchDataset
from brats_seg.seg3d.patches import CaseArrays, crop_patch, is_forced_foreground, open_case, read_region, warped_patch
from brats_seg.seg3d.config import AugmentConfig
from tests.train_fixtures import foreground_rows, make_case, make_dataset, write_case

torch.set_num_threads(1)
PATCH = (16, 16, 16)


def _entries(manifest_path) -> list[dict]:
    return json.loads(manifest_path.read_text())["cases"]


@pytest.mark.parametrize("fraction", [0.0, 1 / 3, 0.5, 0.9, 1.0])
def test_forced_foreground_count_is_exact(fraction):
    for n in (1, 2, 3, 7, 100, 301):
        forced = sum(is_forced_foreground(i, fraction) for i in range(n))
        assert forced == int(np.floor(n * fraction + 1e-9))


def test_foreground_ratio_and_classes(tmp_path):
    """A third of patches are centred on tumour; random ones almost never are (small tumour)."""
    path = make_dataset(tmp_path, n_cases=3, shape=(32, 32, 32), radius=3.0)
    ds = PatchDataset(tmp_path, _entries(path), PATCH, 1 / 3, None, seed=1)
    n = 300
    items = [ds[(0, 0, i)] for i in range(n)]
    forced = [it for it in items if it["fg_class"] > 0]
    assert len(forced) == n // 3
    half = np.array(PATCH) // 2
    centre_labels = [int(it["label"][tuple(half)]) for it in items]
    on_tumour = sum(lab > 0 for lab in centre_labels)
    # forced patches always sit on tumour; random ones only by chance (tumour is ~0.3% of voxels)
    assert all(int(it["label"][tuple(half)]) == it["fg_class"] for it in forced)
    assert n // 3 <= on_tumour <= n // 3 + 10
    counts = np.bincount([it["fg_class"] for it in forced], minlength=4)[1:]
    assert counts.min() >= 15, f"classes should be drawn about evenly: {counts}"


def test_padding_when_volume_is_smaller(tmp_path):
    rng = np.random.default_rng(0)
    image, seg = make_case(rng, (10, 12, 8), radius=3.0)
    entry = write_case(tmp_path, "small", image, seg, foreground_rows(seg, rng))
    case = open_case(tmp_path, entry)
    ds = PatchDataset(tmp_path, [entry], PATCH, 0.0, None, seed=0)
    for i in range(10):
        item = ds[(0, 0, i)]
        assert item["image"].shape == (4, *PATCH) and item["label"].shape == PATCH
        # the whole volume fits inside the patch: every tumour voxel is there, the rest is zero padding
        assert int((item["label"] > 0).sum()) == int((seg > 0).sum())
        assert float(item["image"].abs().sum()) == pytest.approx(float(np.abs(image.astype(np.float32)).sum()), rel=1e-5)
    img, lab = crop_patch(case, np.array([5, 6, 4]), PATCH)
    np.testing.assert_array_equal(img[:, 3:13, 2:14, 4:12], image.astype(np.float32))
    assert np.count_nonzero(img[:, :3]) == 0 and lab.shape == PATCH


def test_outside_lets_random_patches_reach_past_the_crop(tmp_path):
    """outside=0.25 (of a 16-voxel patch): random patch starts spread over [-4, size-16+4] per axis,
    reaching both ends; outside=0 keeps them inside, and forced patches are unaffected."""
    from brats_seg.seg3d.patches import choose_centre

    path = make_dataset(tmp_path, n_cases=1, shape=(32, 32, 32), radius=3.0)
    case = open_case(tmp_path, _entries(path)[0])
    rng = np.random.default_rng(0)
    starts = np.array([choose_centre(case, PATCH, False, rng, outside=0.25)[0] - 8 for _ in range(2000)])
    assert starts.min() == -4 and starts.max() == 32 - 16 + 4
    assert (starts < 0).any(axis=1).mean() > 0.3  # reaching out is common, not a corner case
    inside = np.array([choose_centre(case, PATCH, False, rng)[0] - 8 for _ in range(500)])
    assert inside.min() == 0 and inside.max() == 16
    ds = PatchDataset(tmp_path, _entries(path), PATCH, 1.0, None, seed=0, outside=0.25)
    assert all(ds[(0, 0, i)]["fg_class"] > 0 for i in range(20))


def test_read_region_matches_padded_reference():
    arr = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7)
    padded = np.pad(arr, ((0, 0), (12, 12), (12, 12), (12, 12)))
    for lo in [(-3, 0, 2), (2, 3, 4), (-8, -8, -8), (4, 5, 6), (10, 0, 0)]:
        got = read_region(arr, np.array(lo), (6, 6, 6))
        ref = padded[:, lo[0] + 12:lo[0] + 18, lo[1] + 12:lo[1] + 18, lo[2] + 12:lo[2] + 18]
        np.testing.assert_array_equal(got, ref)


def _case(rng) -> CaseArrays:
    image = rng.normal(size=(2, 20, 22, 24)).astype(np.float32)
    seg = rng.integers(0, 4, size=(20, 22, 24)).astype(np.uint8)
    return CaseArrays("c", image, seg, {})


def test_warped_patch_axes():
    """Identity = crop; 180 degrees about axis 2 = flip of axes 0, 1; swapping axes 0, 1 = transpose."""
    case, centre, patch = _case(np.random.default_rng(0)), np.array([10, 11, 12]), (9, 9, 9)
    img, lab = crop_patch(case, centre, patch)
    w_img, w_lab = warped_patch(case, centre, np.eye(3), patch)
    np.testing.assert_allclose(w_img, img, atol=1e-5)
    np.testing.assert_array_equal(w_lab, lab)
    w_img, w_lab = warped_patch(case, centre, np.diag([-1.0, -1.0, 1.0]), patch)
    np.testing.assert_allclose(w_img, img[:, ::-1, ::-1], atol=1e-5)
    np.testing.assert_array_equal(w_lab, lab[::-1, ::-1])
    swap = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])
    w_img, _ = warped_patch(case, centre, swap, patch)
    np.testing.assert_allclose(w_img, img.transpose(0, 2, 1, 3), atol=1e-5)


def test_stream_is_a_function_of_the_key(tmp_path):
    path = make_dataset(tmp_path, n_cases=2)
    ds = PatchDataset(tmp_path, _entries(path), PATCH, 1 / 3, AugmentConfig(rotate_prob=0.5, scale_prob=0.5), seed=3)
    a, b = ds[(2, 0, 5)], ds[(2, 0, 5)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(ds[(2, 0, 6)]["image"], a["image"])
    assert not torch.equal(ds[(3, 0, 5)]["image"], a["image"])


def test_loader_independent_of_workers_and_resumable(tmp_path):
    path = make_dataset(tmp_path, n_cases=3)
    ds = PatchDataset(tmp_path, _entries(path), PATCH, 1 / 3, AugmentConfig(), seed=0)

    def batches(workers: int, start: int) -> list[torch.Tensor]:
        sampler = StreamSampler(8, rank=0)
        sampler.set_position(1, start)
        loader = make_loader(ds, sampler, 2, workers, seed=0, rank=0, pin_memory=False)
        return [b["image"] for b in loader]

    plain = batches(0, 0)
    assert len(plain) == 4
    with_workers = batches(2, 0)
    assert all(torch.equal(x, y) for x, y in zip(plain, with_workers))
    resumed = batches(0, 4)  # from sample 4 = batch 2
    assert all(torch.equal(x, y) for x, y in zip(plain[2:], resumed))


def test_ranks_take_disjoint_slots(tmp_path):
    path = make_dataset(tmp_path, n_cases=4)
    ds = PatchDataset(tmp_path, _entries(path), PATCH, 0.0, None, seed=0, world_size=2)
    for epoch in range(3):
        r0 = [ds.case_index(epoch, 0, i) for i in range(2)]
        r1 = [ds.case_index(epoch, 1, i) for i in range(2)]
        assert sorted(r0 + r1) == [0, 1, 2, 3]  # one cycle of 4 cases split between two ranks


def test_intensity_and_flip_keep_shapes_and_change_values():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 8, 8, 8)).astype(np.float32)
    label = rng.integers(0, 4, size=(8, 8, 8)).astype(np.uint8)
    cfg = AugmentConfig(brightness_prob=1, contrast_prob=1, gamma_prob=1, noise_prob=1, flip_prob=1)
    out = augment_intensity(image.copy(), np.random.default_rng(1), cfg)
    assert out.dtype == np.float32 and not np.allclose(out, image)
    f_img, f_lab = random_flip(image, label, np.random.default_rng(1), cfg)
    np.testing.assert_array_equal(f_img, image[:, ::-1, ::-1, ::-1])
    np.testing.assert_array_equal(f_lab, label[::-1, ::-1, ::-1])
    assert f_img.flags.c_contiguous
