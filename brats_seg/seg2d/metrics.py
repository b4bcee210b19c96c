"""Confusion-matrix metrics for 2D semantic segmentation: per-class IoU, mIoU, pixel accuracy.

The confusion matrix accumulates over a whole dataset (rows = ground truth, columns =
prediction), and scores are computed from it once: this is the standard VOC/ADE protocol, and
it differs from averaging per-image IoUs. Pixels whose label is `ignore_index` are left out.
A class that appears neither in the ground truth nor in the predictions has IoU 0/0: it is
reported as NaN and left out of the mean (a class absent from a small validation split would
otherwise count as either 0 or 1 and skew mIoU).
"""
from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """KxK int64 counts; `pred` and `target` are label maps of equal shape (any N, H, W)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    for name, t in (("target", target), ("pred", pred)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1} (ignore_index={ignore_index})")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """TP / (TP + FP + FN) per class; NaN where the class is absent from both pred and gt."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm: torch.Tensor) -> float:
    return float(torch.nanmean(iou_per_class(cm)))


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = cm.sum()
    return float(cm.diag().sum().double() / total) if total > 0 else float("nan")


def mean_class_accuracy(cm: torch.Tensor) -> float:
    """Recall averaged over classes present in the ground truth."""
    cm = cm.double()
    gt = cm.sum(1)
    return float((cm.diag()[gt > 0] / gt[gt > 0]).mean()) if (gt > 0).any() else float("nan")


class SegmentationMeter:
    """Accumulates a confusion matrix batch by batch; `update` takes logits (N,K,H,W) or labels."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        self.cm += confusion_matrix(pred.detach(), target.detach(), self.num_classes, self.ignore_index)

    def compute(self) -> dict:
        ious = iou_per_class(self.cm)
        return {"miou": mean_iou(self.cm), "pixel_accuracy": pixel_accuracy(self.cm),
                "mean_class_accuracy": mean_class_accuracy(self.cm),
                "iou_per_class": [None if v != v else float(v) for v in ious.tolist()]}
