"""Optimisers and learning-rate schedules shared by the 3D and 2D trainers.

One small schedule class instead of chaining torch schedulers: lr(step) = base_lr · warm-up(step)
· decay(step), where decay is poly, cosine, constant, or a plateau factor that validation lowers.
Its whole state is a few numbers, so it checkpoints exactly and combines warm-up with
ReduceLROnPlateau, which torch's schedulers do not do cleanly.

Bound to a wall-clock budget (train.time_budget_s > 0 and schedule.follow_budget): the loop reports
the fraction of the budget spent (set_time_fraction), and poly/cosine decay by max(step progress,
time fraction), so the LR reaches its end when the budget runs out, whatever the step rate; with
no budget the fraction stays 0 and the decay follows the steps alone.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from brats_seg.engine.config import OptimConfig, ScheduleConfig
from brats_seg.errors import InputError


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with (Nesterov) momentum as in nnU-Net."""
    params = [p for p in params if p.requires_grad]
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


class LRSchedule:
    """Per-step learning rate with linear warm-up; call step() after each optimiser step.

    `observe(metric)` feeds a validation score (higher is better) to the plateau schedule; other
    schedules ignore it. `lr_scale` multiplies the optimiser's LRs once, at construction (the
    optim.lr_scaling rule for N processes); the scaled values are the schedule's base LRs.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int,
                 lr_scale: float = 1.0) -> None:
        self.optimizer, self.cfg = optimizer, cfg
        self.total_steps, self.lr_scale = max(1, total_steps), float(lr_scale)
        self.base_lrs = [group["lr"] * self.lr_scale for group in optimizer.param_groups]
        self.step_count, self.time_fraction = 0, 0.0
        self.plateau_scale, self.best, self.bad_validations = 1.0, -math.inf, 0
        self._apply()

    def progress(self, step: int) -> float:
        """Decay progress in [0, 1] at `step`: past warm-up by steps, or the budget's time fraction
        when that is further along (schedule.follow_budget)."""
        warm = self.cfg.warmup_steps
        by_steps = min(1.0, max(0.0, (step - warm) / max(1, self.total_steps - warm)))
        return max(by_steps, self.time_fraction) if self.cfg.follow_budget else by_steps

    def factor(self, step: int) -> float:
        """Multiplier on the base LR at `step` (before the min_lr floor); warm-up counts steps only."""
        warm = self.cfg.warmup_steps
        w = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        progress = self.progress(step)
        name = self.cfg.name
        if name == "poly":
            d = (1.0 - progress) ** self.cfg.poly_power
        elif name == "cosine":
            d = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif name == "plateau":
            d = self.plateau_scale
        else:
            d = 1.0
        return w * d

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = max(base * f, min(self.cfg.min_lr, base))

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def set_time_fraction(self, fraction: float) -> None:
        """Spent share of the wall-clock budget (elapsed / train.time_budget_s, the max over ranks).
        Clamped to [0, 1] and never lowered: a resume with a larger budget holds the LR until the
        new budget's fraction catches up instead of raising it again. Applies at once."""
        if math.isfinite(fraction):
            self.time_fraction = max(self.time_fraction, min(1.0, max(0.0, float(fraction))))
            self._apply()

    def observe(self, metric: float) -> None:
        if self.cfg.name != "plateau" or not math.isfinite(metric):
            return
        if metric > self.best + 1e-4:
            self.best, self.bad_validations = metric, 0
            return
        self.bad_validations += 1
        if self.bad_validations > self.cfg.plateau_patience:
            self.plateau_scale *= self.cfg.plateau_factor
            self.bad_validations = 0
            self._apply()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "plateau_scale": self.plateau_scale,
                "best": self.best, "bad_validations": self.bad_validations,
                "base_lrs": list(self.base_lrs), "time_fraction": self.time_fraction,
                "total_steps": self.total_steps, "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict) -> None:
        """Restore; state dicts written before time_fraction / total_steps / lr_scale existed load
        as fraction 0 and this run's plan."""
        check_same_plan(state, self.total_steps, self.lr_scale)
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.best, self.bad_validations = float(state["best"]), int(state["bad_validations"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.time_fraction = float(state.get("time_fraction", 0.0))
        self._apply()


def check_same_plan(state: dict, total_steps: int, lr_scale: float) -> None:
    """InputError when a checkpoint's schedule was planned for other steps per rank or another LR
    scale: both follow from the config (hashed) and the number of processes, so it was written
    with another world size under distributed.scaling=samples or optim.lr_scaling."""
    old_total, old_scale = int(state.get("total_steps", total_steps)), float(state.get("lr_scale", lr_scale))
    if old_total != total_steps or not math.isclose(old_scale, lr_scale, rel_tol=1e-12):
        raise InputError("--resume", f"the checkpoint was planned for {old_total} steps per process at LR scale "
                                     f"{old_scale:g}, this run for {total_steps} at {lr_scale:g}: it was written "
                                     "by another number of processes (distributed.scaling=samples and "
                                     "optim.lr_scaling depend on it); resume with the number it was written by")
