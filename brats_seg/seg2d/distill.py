"""Knowledge distillation loss (Hinton et al. 2015) for per-pixel segmentation logits.

    loss = alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))   (mean over valid pixels)
         + (1 - alpha) * CE(student, labels)                              (mean over valid pixels)

The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when T
changes (soft-target gradients shrink as 1/T^2), so alpha alone sets the balance: alpha=0.5
weighs teacher and labels equally; alpha=1 is pure distillation (labels only pick the pixels).
The KL is summed over classes and averaged over pixels whose label is not `ignore_index`:
void/boundary pixels carry no supervision in either term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                      T: float = 4.0, alpha: float = 0.5, ignore_index: int = 255) -> torch.Tensor:
    """Scalar KD loss; logits are (N, K, H, W), labels (N, H, W) or None (KL over all pixels, no CE)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                         "logits must have the same shape (resize the teacher's output first)")
    if T <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need T > 0 and 0 <= alpha <= 1, got T={T}, alpha={alpha}")
    teacher_logits = teacher_logits.detach()
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits / T, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)  # (N, H, W)
    if labels is None:
        return kl.mean() * T * T
    valid = labels != ignore_index
    n_valid = valid.sum()
    if n_valid == 0:  # nothing supervised in this batch: a zero that still has a graph
        return student_logits.sum() * 0.0
    soft = (kl * valid).sum() / n_valid
    hard = F.cross_entropy(student_logits, labels, ignore_index=ignore_index)
    return alpha * T * T * soft + (1.0 - alpha) * hard
