"""Post-processing rules and the region -> label consistency they rely on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brats_seg.infer.postprocess import (PostprocessConfig, postprocess, relabel_small_et,
                                         remove_small_components)
from brats_seg.io.regions import regions_to_labels


def tumour(shape=(32, 32, 32)) -> np.ndarray:
    """ED block with a core (NCR) holding 8 ET voxels, plus a 2-voxel speck of ED far away."""
    labels = np.zeros(shape, np.uint8)
    labels[8:20, 8:20, 8:20] = 2
    labels[11:17, 11:17, 11:17] = 1
    labels[13:15, 13:15, 13:15] = 3
    labels[28, 28, 28:30] = 2
    return labels


def test_small_et_becomes_ncr_and_core_is_unchanged():
    labels = tumour()
    out = relabel_small_et(labels, voxel_mm3=1.0, min_mm3=9.0)
    assert not (out == 3).any()
    assert np.array_equal(out == 1, (labels == 1) | (labels == 3))  # tumour core kept
    assert np.array_equal(out == 2, labels == 2)
    assert (labels == 3).sum() == 8  # input untouched


def test_et_at_or_above_threshold_is_kept():
    labels = tumour()
    assert relabel_small_et(labels, 1.0, 8.0) is labels  # 8 voxels = 8 mm3: not below
    # voxel size counts: 8 voxels of 2 mm3 = 16 mm3
    assert (relabel_small_et(labels, 2.0, 16.0) == 3).sum() == 8
    assert (relabel_small_et(labels, 2.0, 16.5) == 3).sum() == 0
    assert relabel_small_et(labels, 1.0, 0.0) is labels  # 0 disables


def test_tiny_components_removed_big_ones_kept():
    labels = tumour()
    out = remove_small_components(labels, voxel_mm3=1.0, min_mm3=3.0)
    assert out[28, 28, 28] == 0 and out[28, 28, 29] == 0
    assert np.array_equal(out[:24, :24, :24], labels[:24, :24, :24])
    kept = remove_small_components(labels, voxel_mm3=1.0, min_mm3=2.0)  # speck = 2 mm3, not below
    assert np.array_equal(kept, labels)


def test_components_connect_across_labels_and_diagonals():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2, 2, 2] = 3
    labels[3, 3, 3] = 2  # touches (2,2,2) only at a corner
    assert (remove_small_components(labels, 1.0, 2.0, connectivity=3) > 0).sum() == 2
    assert (remove_small_components(labels, 1.0, 2.0, connectivity=1) > 0).sum() == 0


def test_postprocess_order_and_config():
    labels = tumour()
    labels[0, 0, 0] = 3  # a lone ET voxel: removed as a speck before the ET volume is measured
    cfg = PostprocessConfig(et_min_mm3=9.0, min_component_mm3=3.0)
    out = postprocess(labels, 1.0, cfg)
    assert out[0, 0, 0] == 0 and not (out == 3).any() and out[28, 28, 28] == 0
    assert np.array_equal(postprocess(labels, 1.0, PostprocessConfig()), labels)  # defaults: off
    with pytest.raises(ValueError):
        PostprocessConfig(et_min_mm3=-1)


def test_regions_to_labels_keeps_et_inside_tc_inside_wt():
    rng = np.random.default_rng(0)
    regions = torch.from_numpy(rng.uniform(size=(1, 3, 12, 12, 12)).astype(np.float32))
    labels = regions_to_labels(regions)[0].numpy()
    wt, tc, et = (regions[0] > 0.5).numpy()
    assert np.array_equal(labels > 0, wt)
    assert np.array_equal(np.isin(labels, (1, 3)), wt & tc)
    assert np.array_equal(labels == 3, wt & tc & et)
    assert np.array_equal(labels == 2, wt & ~tc)


def test_components_below_a_fraction_of_the_largest_removed():
    labels = tumour()  # main blob 1728 voxels, speck 2
    labels[0:4, 28:32, 0:4] = 2  # a 64-voxel blob: 3.7% of the main one
    out = remove_small_components(labels, 1.0, 0.0, min_fraction=0.05)
    assert (out[0:4, 28:32, 0:4] == 0).all() and out[28, 28, 28] == 0
    assert np.array_equal(out[:24, :24, :24], labels[:24, :24, :24])
    kept = remove_small_components(labels, 1.0, 0.0, min_fraction=0.03)  # the 64-voxel blob stays
    assert (kept[0:4, 28:32, 0:4] == 2).all() and kept[28, 28, 28] == 0
    only = remove_small_components(labels, 1.0, 0.0, min_fraction=1.0)  # the largest only
    assert np.array_equal(only > 0, (labels > 0) & (np.indices(labels.shape).max(0) < 24))
    assert remove_small_components(labels, 1.0, 0.0, min_fraction=0.0) is labels


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_bad_fraction_is_refused(fraction):
    with pytest.raises(ValueError, match="min_component_fraction"):
        PostprocessConfig(min_component_fraction=fraction)


def test_settings_keep_their_old_key_while_the_fraction_is_off():
    """predict's skip key (infer.batch) holds these settings: masks made before the rule existed stay current."""
    assert PostprocessConfig().to_dict() == {"et_min_mm3": 0.0, "min_component_mm3": 0.0, "connectivity": 3}
    assert PostprocessConfig(min_component_fraction=0.25).to_dict()["min_component_fraction"] == 0.25
