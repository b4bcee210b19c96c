"""2D training losses: cross-entropy with an ignore index, optional soft Dice, auxiliary head,
and knowledge distillation, behind the `loss_fn(output, labels)` interface of train.step.

The model output may be a tensor or a dict: {"out", "aux"} from models with an auxiliary head
in training mode, plus "teacher" when `DistillWrapper` runs a frozen teacher beside the student.
Putting the teacher inside the wrapped model (rather than inside the loss) keeps the shared
train_step unchanged: it calls train_model(image) and loss_fn(output, label) as for 3D.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from brats_seg.seg2d.distill import distillation_loss


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean CE over non-ignored pixels; 0 (with a graph) when every pixel is ignored, not NaN."""
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of the batch soft Dice; ignored pixels count in neither sum.

    `smooth` (in pixels) makes a class absent from both labels and prediction score ~1, so small
    batches without a class are not punished for it.
    """
    k = logits.shape[1]
    valid = (labels != ignore_index).unsqueeze(1)
    probs = logits.float().softmax(dim=1) * valid
    target = F.one_hot(torch.where(valid[:, 0], labels, 0), k).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    return 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()


class Seg2DLoss(nn.Module):
    """ce_weight·CE + dice_weight·Dice (+ aux_weight·CE on "aux"); with a "teacher" output, the
    distillation loss alpha·T²·KL + (1-alpha)·CE replaces the CE term (ce_weight is then unused)."""

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 0.0, aux_weight: float = 0.4,
                 ignore_index: int = 255, temperature: float = 4.0, alpha: float = 0.5) -> None:
        super().__init__()
        self.ce_weight, self.dice_weight, self.aux_weight = ce_weight, dice_weight, aux_weight
        self.ignore_index, self.temperature, self.alpha = ignore_index, temperature, alpha

    def forward(self, output: torch.Tensor | dict, labels: torch.Tensor) -> torch.Tensor:
        parts = output if isinstance(output, dict) else {"out": output}
        main, ii = parts["out"], self.ignore_index
        if "teacher" in parts:
            loss = distillation_loss(main.float(), parts["teacher"].float(), labels, self.temperature,
                                     self.alpha, ii)
        else:
            loss = self.ce_weight * masked_cross_entropy(main, labels, ii)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * soft_dice_loss(main, labels, ii)
        if parts.get("aux") is not None and self.aux_weight > 0:
            loss = loss + self.aux_weight * masked_cross_entropy(parts["aux"], labels, ii)
        return loss


class DistillWrapper(nn.Module):
    """student(x) plus the frozen teacher's logits on the same batch, as one training-time model.

    The teacher stays in eval mode (BatchNorm running statistics, no dropout) whatever train()
    is called with, has requires_grad off, and runs under no_grad.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "DistillWrapper":
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict:
        out = self.student(x)
        with torch.no_grad():
            teacher = self.teacher(x)
        if isinstance(teacher, dict):
            teacher = teacher["out"]
        parts = dict(out) if isinstance(out, dict) else {"out": out}
        parts["teacher"] = teacher
        return parts
