"""LR schedule bound to a wall-clock budget (set_time_fraction), its checkpoint round trip, and
the step plan for N processes (distributed.scaling, optim.lr_scaling) with its config hash."""
from __future__ import annotations

import math

import pytest
import torch

from brats_seg.core.hashing import sha256_json
from brats_seg.core.typed_config import to_dict
from brats_seg.engine.config import (HASH_NEUTRAL_DEFAULTS, RUN_CONTROL_KEYS, ScheduleConfig, config_hash, epoch_steps,
                                     lr_scale, total_steps)
from brats_seg.engine.loader import samples_per_epoch
from brats_seg.engine.schedule import LRSchedule
from brats_seg.errors import InputError
from brats_seg.seg2d.config import legacy_config_hash, load_config_2d
from brats_seg.seg3d.config import Config3D, load_config


def _schedule(cfg: ScheduleConfig, total: int = 1000, lr: float = 1.0, scale: float = 1.0) -> LRSchedule:
    return LRSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr), cfg, total, scale)


@pytest.mark.parametrize("name", ["poly", "cosine"])
@pytest.mark.parametrize("min_lr", [0.0, 0.01])
def test_time_fraction_ends_the_decay_whatever_the_step(name, min_lr):
    """A budget that runs out at step 37 of 1000 still ends at min_lr, falling all the way."""
    sched = _schedule(ScheduleConfig(name=name, min_lr=min_lr, warmup_steps=5))
    lrs = []
    for i in range(37):
        sched.step()
        sched.set_time_fraction((i + 1) / 37)
        lrs.append(sched.lr)
    assert lrs[-1] == pytest.approx(min_lr, abs=1e-12)
    assert all(b <= a + 1e-15 for a, b in zip(lrs[5:], lrs[6:])), "the decay must be monotone past warm-up"
    assert lrs[20] < 0.8 and lrs[20] > min_lr  # on its way, not a cliff at the end


def test_without_a_budget_the_steps_rule():
    cfg = ScheduleConfig(name="poly", poly_power=0.9)
    plain, timed = _schedule(cfg, 10), _schedule(cfg, 10)
    for _ in range(10):
        plain.step()
        timed.step()
        timed.set_time_fraction(0.0)  # no budget: the loop reports nothing or 0
        assert timed.lr == plain.lr
    assert plain.lr == 0.0


def test_steps_win_when_they_are_ahead_of_the_clock():
    """progress = max(steps, time): a budget larger than the run never slows the decay."""
    sched = _schedule(ScheduleConfig(name="cosine"), 10)
    for _ in range(5):
        sched.step()
    sched.set_time_fraction(0.1)
    assert sched.lr == pytest.approx(0.5)  # step 5 of 10, not 10% of the budget


def test_warm_up_is_unaffected():
    sched = _schedule(ScheduleConfig(name="constant", warmup_steps=4))
    sched.set_time_fraction(0.9)
    assert sched.lr == pytest.approx(0.25)  # constant: no decay, warm-up counts steps
    poly = _schedule(ScheduleConfig(name="poly", warmup_steps=4, poly_power=1.0), 100)
    poly.set_time_fraction(0.5)
    assert poly.lr == pytest.approx(0.25 * 0.5)  # warm-up factor (steps) x decay (time)


def test_fraction_clamped_never_lowered_and_switchable():
    sched = _schedule(ScheduleConfig(name="poly"))
    sched.set_time_fraction(0.6)
    sched.set_time_fraction(0.2)  # a resume with a larger budget: the LR is held, not raised
    assert sched.time_fraction == 0.6
    sched.set_time_fraction(7.0)
    assert sched.time_fraction == 1.0 and sched.lr == 0.0
    sched.set_time_fraction(float("nan"))
    assert sched.time_fraction == 1.0
    off = _schedule(ScheduleConfig(name="poly", follow_budget=False), 10)
    off.set_time_fraction(0.99)
    assert off.lr == 1.0  # schedule.follow_budget: false keeps the steps rule


def test_state_round_trip_and_old_state_dicts():
    cfg = ScheduleConfig(name="poly", warmup_steps=2)
    sched = _schedule(cfg, 100, lr=0.3, scale=2.0)
    for _ in range(10):
        sched.step()
    sched.set_time_fraction(0.4)
    state = sched.state_dict()
    assert state["time_fraction"] == 0.4 and state["total_steps"] == 100 and state["lr_scale"] == 2.0
    other = _schedule(cfg, 100, lr=0.3, scale=2.0)
    other.load_state_dict(state)
    assert other.lr == sched.lr and other.state_dict() == state
    old = {k: state[k] for k in ("step_count", "plateau_scale", "best", "bad_validations", "base_lrs")}
    legacy = _schedule(cfg, 100, lr=0.3, scale=2.0)
    legacy.load_state_dict(old)  # written before the fraction and the plan were saved
    assert legacy.time_fraction == 0.0 and legacy.step_count == 10
    assert legacy.lr == pytest.approx(0.6 * (1 - 8 / 98) ** 0.9)


def test_lr_scale_multiplies_the_base_lr():
    sched = _schedule(ScheduleConfig(name="constant"), 10, lr=0.01, scale=4.0)
    assert sched.lr == pytest.approx(0.04) and sched.base_lrs == [pytest.approx(0.04)]


def test_a_checkpoint_of_another_plan_is_refused():
    """Written by 2 processes under scaling=samples (50 steps each), resumed by 1 (100 steps)."""
    state = _schedule(ScheduleConfig(), 50).state_dict()
    with pytest.raises(InputError, match="50 steps per process.*this run for 100") as err:
        _schedule(ScheduleConfig(), 100).load_state_dict(state)
    assert err.value.where == "--resume" and "\n" not in err.value.line()
    with pytest.raises(InputError, match="LR scale 2"):
        _schedule(ScheduleConfig(), 50, scale=1.0).load_state_dict(_schedule(ScheduleConfig(), 50, scale=2.0).state_dict())


def test_step_plan_for_n_processes():
    cfg = load_config(None, ["train.epochs=3", "train.steps_per_epoch=10", "train.max_steps=0",
                             "data.batch_size=2", "optim.grad_accum=2"])
    assert (epoch_steps(cfg, 1), total_steps(cfg, 1)) == (10, 30)
    assert (epoch_steps(cfg, 2), total_steps(cfg, 2), epoch_steps(cfg, 3), total_steps(cfg, 3)) == (5, 15, 4, 12)
    assert samples_per_epoch(cfg, 1) == 40 and samples_per_epoch(cfg, 2) == 20  # x2 ranks: one process's
    capped = load_config(None, ["train.epochs=3", "train.steps_per_epoch=10", "train.max_steps=7"])
    assert total_steps(capped, 1) == 7 and total_steps(capped, 2) == 4  # max_steps counts like the epochs
    steps = load_config(None, ["train.epochs=3", "train.steps_per_epoch=10", "distributed.scaling=steps"])
    assert (epoch_steps(steps, 4), total_steps(steps, 4)) == (10, 30)
    assert lr_scale(cfg, 4) == 1.0
    assert lr_scale(load_config(None, ["optim.lr_scaling=linear"]), 4) == 4.0
    assert lr_scale(load_config(None, ["optim.lr_scaling=sqrt"]), 8) == pytest.approx(math.sqrt(8))


def test_new_keys_hash_only_when_not_default():
    """Defaults keep the hashes of existing runs (3D and 2D: the hash of the config without the
    new keys, as it was computed before they existed); any other value is a different run."""
    for cfg, skip in ((Config3D(), RUN_CONTROL_KEYS), (load_config_2d(None), RUN_CONTROL_KEYS)):
        data = to_dict(cfg)
        for dotted in (*skip, *HASH_NEUTRAL_DEFAULTS):
            section, _, key = dotted.partition(".")
            data.get(section, {}).pop(key, None)
        assert config_hash(cfg) == sha256_json(data)
    assert legacy_config_hash(load_config_2d(None)) != config_hash(load_config_2d(None))  # still its own
    base = config_hash(Config3D())
    for override in ("distributed.scaling=steps", "optim.lr_scaling=linear", "optim.lr_scaling=sqrt",
                     "schedule.follow_budget=false"):
        assert config_hash(load_config(None, [override])) != base, override
    assert config_hash(load_config(None, ["distributed.scaling=samples", "optim.lr_scaling=none"])) == base


@pytest.mark.parametrize("override", ["distributed.scaling=tokens", "optim.lr_scaling=cubic",
                                      "schedule.follow_budget=1"])
def test_new_keys_are_typed(override):
    with pytest.raises(InputError) as err:
        load_config(None, [override])
    assert err.value.where == override.split("=")[0]
