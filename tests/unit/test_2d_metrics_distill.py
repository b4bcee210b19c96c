"""mIoU from a hand-computed confusion matrix, and the KD loss against a hand-computed case."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brats_seg.seg2d.distill import distillation_loss
from brats_seg.seg2d.metrics import SegmentationMeter, confusion_matrix, iou_per_class, mean_class_accuracy, mean_iou, pixel_accuracy

torch.set_num_threads(1)

TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 0, 2]])  # the last pixel is ignored whatever it predicts


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PRED, TARGET, num_classes=4)
    # rows = ground truth, columns = prediction; class 3 appears nowhere
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_iou_scores_by_hand():
    cm = confusion_matrix(PRED, TARGET, num_classes=4)
    ious = iou_per_class(cm)
    # class 0: TP 1, FP 1 (gt 2 -> pred 0), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: 0/1
    assert ious[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert math.isnan(float(ious[3]))  # absent from pred and gt: excluded from the mean
    assert mean_iou(cm) == pytest.approx(1 / 3)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)
    assert mean_class_accuracy(cm) == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_meter_accumulates_logits_and_ignores():
    meter = SegmentationMeter(num_classes=4)
    logits = F.one_hot(PRED, 4).permute(2, 0, 1)[None].float()
    meter.update(logits, TARGET[None])
    meter.update(PRED[None], TARGET[None])
    scores = meter.compute()
    assert meter.cm.sum() == 10
    assert scores["miou"] == pytest.approx(1 / 3) and scores["iou_per_class"][3] is None


def test_confusion_matrix_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), num_classes=4)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(torch.tensor([5]), torch.tensor([0]), num_classes=4)


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_distillation_loss_by_hand():
    T, alpha = 2.0, 0.3
    s, t = [1.0, 0.0], [0.0, 2.0]
    p_t, p_s = _softmax([v / T for v in t]), _softmax([v / T for v in s])
    kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    ce = -math.log(_softmax(s)[0])
    expected = alpha * T * T * kl + (1 - alpha) * ce
    # pixel 2 is ignored: wild logits there must not matter
    student = torch.tensor([[1.0, 50.0], [0.0, -50.0]])[None, :, None, :]  # (1, 2 classes, 1, 2 pixels)
    teacher = torch.tensor([[0.0, -30.0], [2.0, 30.0]])[None, :, None, :]
    labels = torch.tensor([[[0, 255]]])
    loss = distillation_loss(student, teacher, labels, T=T, alpha=alpha)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_distillation_limits_and_gradients():
    torch.manual_seed(0)
    student = torch.randn(2, 5, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 5, 4, 4, requires_grad=True)
    labels = torch.randint(0, 5, (2, 4, 4))
    labels[0, 0] = 255
    ce = F.cross_entropy(student, labels, ignore_index=255).item()
    assert distillation_loss(student, teacher, labels, alpha=0.0).item() == pytest.approx(ce)
    assert distillation_loss(teacher, teacher, labels, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)
    distillation_loss(student, teacher, labels).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None  # the teacher is a fixed target
    all_ignored = torch.full_like(labels, 255)
    assert distillation_loss(student, teacher, all_ignored).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(student, teacher[:, :3], labels)
