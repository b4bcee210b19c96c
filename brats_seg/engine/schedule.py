"""Optimisers and learning-rate schedules shared by the 3D and 2D trainers.

One small schedule class instead of chaining torch schedulers: lr(step) = base_lr · warm-up(step)
· decay(step), where decay is poly, cosine, constant, or a plateau factor that validation lowers.
Its whole state is three numbers, so it checkpoints exactly and combines warm-up with
ReduceLROnPlateau, which torch's schedulers do not do cleanly.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from brats_seg.engine.config import OptimConfig, ScheduleConfig


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
    schedules ignore it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int) -> None:
        self.optimizer, self.cfg = optimizer, cfg
        self.total_steps = max(1, total_steps)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step_count = 0
        self.plateau_scale, self.best, self.bad_validations = 1.0, -math.inf, 0
        self._apply()

    def factor(self, step: int) -> float:
        """Multiplier on the base LR at `step` (before the min_lr floor)."""
        warm = self.cfg.warmup_steps
        w = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        progress = min(1.0, max(0.0, (step - warm) / max(1, self.total_steps - warm)))
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
                "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.best, self.bad_validations = float(state["best"]), int(state["bad_validations"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._apply()
