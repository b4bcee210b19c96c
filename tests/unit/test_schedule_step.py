"""The optimiser step with its schedule: train_and_step (one host read for loss and gradient
check) gives what train_step + optimizer_step give, bit for bit, and skips non-finite updates;
the 3D loss checks label ranges only where that costs no device sync (CPU)."""
from __future__ import annotations

import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch

from brats_seg.engine.config import ScheduleConfig
from brats_seg.engine.schedule import LRSchedule
from brats_seg.engine.step import optimizer_step, train_and_step, train_step
from brats_seg.seg3d.losses import build_loss


def _state(seed: int = 0) -> SimpleNamespace:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    return SimpleNamespace(model=model, train_model=model, optimizer=opt, loss_fn=build_loss("labels"),
                           schedule=LRSchedule(opt, ScheduleConfig(name="poly"), 10),
                           scaler=torch.amp.GradScaler("cpu", enabled=False), autocast=contextlib.nullcontext,
                           info=SimpleNamespace(device=torch.device("cpu")), ddp=None,
                           memory_format=torch.preserve_format)


def _batches(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.randn(2, 2, 8, 8, 8, generator=g), "label": torch.randint(0, 4, (2, 8, 8, 8), generator=g)}
            for _ in range(n)]


def test_one_read_step_equals_the_two_halves():
    a, b = _state(), _state()
    for batch in (_batches(2), _batches(1)):
        loss_a = train_step(a, batch)
        finite_a = optimizer_step(a, grad_clip=1.0)
        loss_b, finite_b = train_and_step(b, batch, grad_clip=1.0)
        assert (loss_a, finite_a) == (loss_b, finite_b) and finite_a
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert a.schedule.step_count == b.schedule.step_count == 2 and a.schedule.lr == b.schedule.lr


def test_non_finite_gradients_skip_the_update_but_not_the_schedule():
    state = _state()
    before = copy.deepcopy(state.model.state_dict())
    batch = _batches(1)
    batch[0]["image"][0, 0, 0, 0, 0] = float("inf")
    loss, finite = train_and_step(state, batch, grad_clip=0.0)
    assert not finite and state.schedule.step_count == 1
    for key, value in state.model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("bad", [4, -1])
def test_out_of_range_labels_still_fail_on_cpu(bad):
    label = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    label[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=rf"0..3 for 4 output channels, found \[{min(bad, 0)}, {max(bad, 0)}\]"):
        build_loss("labels")([torch.randn(1, 4, 4, 4, 4), torch.randn(1, 4, 2, 2, 2)], label)


def test_label_regions_match_io_regions_and_skip_reads_off_cpu():
    from brats_seg.io.regions import labels_to_regions
    from brats_seg.seg3d.losses import _check_label_range, label_regions

    labels = torch.randint(0, 4, (2, 5, 6, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(label_regions(labels), labels_to_regions(labels))
    assert torch.equal(label_regions(labels[:, None]), labels_to_regions(labels))
    with pytest.raises(ValueError, match=r"found \[0, 4\]"):
        label_regions(torch.tensor([0, 4]).reshape(1, 2, 1, 1))
    # off the CPU the check reads nothing (a meta tensor has no values: any read would raise)
    _check_label_range(torch.full((1, 2, 2, 2), 9, device="meta"), 4)
