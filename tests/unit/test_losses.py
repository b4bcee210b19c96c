"""Losses and label/region conversion, checked against numbers worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brats_seg.io.regions import labels_to_regions, regions_to_labels
from brats_seg.seg3d.losses import DiceCELoss, build_loss

torch.set_num_threads(1)
S = 1e-5  # default smooth_nr = smooth_dr


def _dice_loss(inter: float, sum_p: float, sum_t: float) -> float:
    return 1 - (2 * inter + S) / (sum_p + sum_t + S)


def _grid(values) -> torch.Tensor:
    """Per-voxel vectors -> a (1, C, N, 1, 1) tensor (N voxels along X)."""
    return torch.tensor(values, dtype=torch.float32).T.reshape(1, -1, len(values), 1, 1)


# --- labels <-> regions -------------------------------------------------------------------

def test_labels_to_regions_values_and_shapes():
    labels = torch.tensor([0, 1, 2, 3]).reshape(1, 4, 1, 1)
    regions = labels_to_regions(labels)
    assert regions.shape == (1, 3, 4, 1, 1) and regions.dtype == torch.float32
    expected = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]], dtype=torch.float32)
    torch.testing.assert_close(regions[0, :, :, 0, 0], expected)
    torch.testing.assert_close(labels_to_regions(labels[:, None]), regions)  # (B,1,...) input


def test_labels_to_regions_rejects_non_canonical_labels():
    with pytest.raises(ValueError, match="canonical"):
        labels_to_regions(torch.tensor([0, 4]).reshape(1, 2, 1, 1))  # BraTS-2021 ET label
    with pytest.raises(TypeError):
        labels_to_regions(torch.zeros(1, 2, 1, 1))


def test_round_trip_labels_regions_labels():
    labels = torch.randint(0, 4, (2, 6, 5, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(regions_to_labels(labels_to_regions(labels)), labels)


def test_regions_to_labels_rule_and_nesting():
    # per voxel (WT, TC, ET) probabilities
    probs = _grid([[0.9, 0.9, 0.9], [0.9, 0.9, 0.1], [0.9, 0.1, 0.1], [0.1, 0.9, 0.9],
                   [0.9, 0.1, 0.9], [0.5, 0.5, 0.5]])
    assert regions_to_labels(probs).flatten().tolist() == [3, 1, 2, 0, 2, 0]
    assert regions_to_labels(probs, threshold=0.4).flatten().tolist()[-1] == 3
    random = torch.rand(2, 3, 6, 6, 6, generator=torch.Generator().manual_seed(1))
    wt, tc, et = labels_to_regions(regions_to_labels(random)).bool().unbind(1)
    assert torch.all(tc <= wt) and torch.all(et <= tc)


# --- hand-computed loss values -----------------------------------------------------------

def test_labels_mode_two_classes_two_voxels():
    # voxel 0: p = (1/4, 3/4), label 1; voxel 1: p = (3/4, 1/4), label 0.
    logits = _grid([[0.0, math.log(3)], [math.log(3), 0.0]])
    labels = torch.tensor([1, 0]).reshape(1, 2, 1, 1)
    dice = _dice_loss(inter=0.75, sum_p=1.0, sum_t=1.0)  # foreground class only: ~0.25
    ce = -math.log(0.75)
    loss = DiceCELoss("labels")(logits, labels)
    assert loss.item() == pytest.approx(dice + ce, abs=1e-6)
    assert loss.item() == pytest.approx(0.25 + 0.287682, abs=1e-4)
    with_bg = DiceCELoss("labels", include_background=True)(logits, labels)
    assert with_bg.item() == pytest.approx(dice + ce, abs=1e-6)  # symmetric example


def test_labels_mode_four_classes_uniform_prediction():
    logits = torch.zeros(1, 4, 2, 1, 1)  # p = 1/4 for every class
    labels = torch.tensor([3, 0]).reshape(1, 2, 1, 1)
    # classes 1, 2: no target, sum p = 0.5; class 3: inter 0.25, sum p 0.5, sum t 1
    dice = (2 * _dice_loss(0, 0.5, 0) + _dice_loss(0.25, 0.5, 1)) / 3  # ~8/9
    loss = DiceCELoss("labels", dice_weight=2.0, ce_weight=0.5)(logits, labels)
    assert loss.item() == pytest.approx(2 * dice + 0.5 * math.log(4), abs=1e-6)
    assert dice == pytest.approx(8 / 9, abs=1e-4)


def test_regions_mode_two_voxels():
    logits = torch.zeros(1, 3, 2, 1, 1)  # sigmoid = 0.5 everywhere
    labels = torch.tensor([2, 0]).reshape(1, 2, 1, 1)  # edema: WT only
    dice = (_dice_loss(0.5, 1.0, 1.0) + 2 * _dice_loss(0, 1.0, 0)) / 3  # ~(0.5 + 1 + 1) / 3
    loss = DiceCELoss("regions")(logits, labels)
    assert loss.item() == pytest.approx(dice + math.log(2), abs=1e-6)
    region_target = labels_to_regions(labels)  # precomputed float masks give the same value
    assert DiceCELoss("regions")(logits, region_target).item() == pytest.approx(loss.item())


@pytest.mark.parametrize("mode", ["labels", "regions"])
def test_perfect_prediction_gives_near_zero_loss(mode):
    labels = torch.randint(0, 4, (2, 4, 4, 4), generator=torch.Generator().manual_seed(2))
    onehot = F.one_hot(labels, 4).movedim(-1, 1).float()
    target = onehot if mode == "labels" else labels_to_regions(labels)
    logits = 30.0 * (2 * target - 1)
    loss_fn = DiceCELoss(mode, ce_weight=0.0)
    assert loss_fn(logits, labels).item() < 1e-5
    assert DiceCELoss(mode, dice_weight=0.0)(logits, labels).item() < 1e-5
    assert loss_fn(-logits, labels).item() > 0.9  # and the opposite is near 1


def test_per_sample_dice_is_mean_of_samples():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 3, 3, generator=g)
    labels = torch.randint(0, 4, (2, 3, 3, 3), generator=g)
    per_sample = DiceCELoss("labels", ce_weight=0.0, batch_dice=False)
    single = DiceCELoss("labels", ce_weight=0.0)
    expected = (single(logits[:1], labels[:1]) + single(logits[1:], labels[1:])) / 2
    torch.testing.assert_close(per_sample(logits, labels), expected)
    assert not torch.allclose(single(logits, labels), expected)


def test_labels_mode_matches_monai_dice_ce():
    from monai.losses import DiceCELoss as MonaiDiceCE

    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 4, 5, 4, 3, generator=g)
    labels = torch.randint(0, 4, (2, 1, 5, 4, 3), generator=g)
    ours = DiceCELoss("labels", dice_weight=0.7, ce_weight=1.3)(logits, labels)
    ref = MonaiDiceCE(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                      lambda_dice=0.7, lambda_ce=1.3)(logits, labels)
    torch.testing.assert_close(ours, ref)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="3 output channels"):
        DiceCELoss("regions")(torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="0..1"):
        DiceCELoss("labels")(torch.zeros(1, 2, 2, 2, 2), torch.full((1, 2, 2, 2), 3))
    with pytest.raises(ValueError, match="spatial"):
        DiceCELoss("labels")(torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="mode"):
        build_loss("softmax")


# --- deep supervision --------------------------------------------------------------------

def test_deep_supervision_regions_weights_and_max_pool_targets():
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    labels[0, 0, 0, 0] = 3  # one ET voxel: max-pooling must keep it at half resolution
    g = torch.Generator().manual_seed(5)
    full, half = torch.randn(1, 3, 4, 4, 4, generator=g), torch.randn(1, 3, 2, 2, 2, generator=g)
    half_target = torch.zeros(1, 3, 2, 2, 2)
    half_target[0, :, 0, 0, 0] = 1.0
    base = DiceCELoss("regions")
    expected = (1.0 * base(full, labels) + 0.5 * base(half, half_target)) / 1.5
    loss = build_loss("regions")([full, half], labels)
    torch.testing.assert_close(loss, expected)
    assert build_loss("regions")(full, labels).item() == pytest.approx(base(full, labels).item())


def test_deep_supervision_labels_nearest_targets_and_custom_weights():
    # labels along X: 0 0 1 1 2 2 3 3 -> nearest to half resolution: 0 1 2 3
    labels = torch.arange(4).repeat_interleave(2).reshape(1, 8, 1, 1).repeat(1, 1, 2, 2)
    g = torch.Generator().manual_seed(6)
    full, half = torch.randn(1, 4, 8, 2, 2, generator=g), torch.randn(1, 4, 4, 1, 1, generator=g)
    base = DiceCELoss("labels")
    half_labels = torch.arange(4).reshape(1, 4, 1, 1)
    expected = 0.25 * base(full, labels) + 0.75 * base(half, half_labels)
    loss = build_loss("labels", deep_supervision_weights=[1, 3])([full, half], labels)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="2 deep-supervision outputs but 3 weights"):
        build_loss("labels", deep_supervision_weights=[1, 1, 1])([full, half], labels)


def test_gradient_flows_through_every_level():
    levels = [torch.zeros(1, 3, 4, 4, 4, requires_grad=True),
              torch.zeros(1, 3, 2, 2, 2, requires_grad=True)]
    labels = torch.randint(0, 4, (1, 4, 4, 4), generator=torch.Generator().manual_seed(7))
    build_loss("regions")(levels, labels).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in levels)


def test_region_weights_scale_each_regions_terms():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 6)
    labels = torch.randint(0, 4, (2, 6, 6, 6))
    per_region = []
    for k in range(3):  # each region's Dice + BCE on its own
        one = DiceCELoss("regions", region_weights=[float(i == k) for i in range(3)])
        per_region.append(one(logits, labels) / 3.0)  # weights (0,0,1) are scaled to (0,0,3)
    plain = DiceCELoss("regions")(logits, labels)
    assert torch.allclose(sum(per_region), plain, atol=1e-6)
    weighted = DiceCELoss("regions", region_weights=[1.0, 1.0, 2.0])(logits, labels)
    assert torch.allclose(weighted, 0.75 * (per_region[0] + per_region[1]) + 1.5 * per_region[2], atol=1e-6)
    assert DiceCELoss("regions", region_weights=[2, 2, 2]).region_weights is None  # equal: the plain loss


@pytest.mark.parametrize("weights", [[1, 1], [0, 0, 0], [1, -1, 2], [1, float("nan"), 1]])
def test_bad_region_weights_are_refused(weights):
    with pytest.raises(ValueError, match="region_weights"):
        DiceCELoss("regions", region_weights=weights)


def test_region_weights_refused_in_labels_mode():
    with pytest.raises(ValueError, match="regions"):
        DiceCELoss("labels", region_weights=[1, 1, 2])


def test_the_trainer_builds_its_loss_with_the_configs_region_weights(tmp_path):
    from brats_seg.seg3d.config import load_config
    from brats_seg.seg3d.data import open_dataset
    from brats_seg.seg3d.trainer import build_3d
    from tests.train_fixtures import TINY, make_dataset

    path = make_dataset(tmp_path, n_cases=2, shape=(16, 16, 16))
    cfg = load_config(None, [*TINY, "loss.region_weights=[1,2,3]", "data.fold=-1"])
    weights = build_3d(cfg, open_dataset(path, cfg)).loss_fn.base.region_weights
    assert weights.tolist() == pytest.approx([0.5, 1.0, 1.5])
    plain = load_config(None, [*TINY, "data.fold=-1"])
    assert build_3d(plain, open_dataset(path, plain)).loss_fn.base.region_weights is None
