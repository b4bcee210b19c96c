"""BraTS regions on tensors: labels <-> region masks, network outputs -> labels, Dice per region.

Training (losses, validation) and inference (predict) must decode a network's output the same
way, or the checkpoint validation picks is not the one predict would pick; so the decoding lives
here once. The region definitions themselves (REGIONS) sit in io/labels.py, beside the label
conventions. A network has two output modes: "regions", three sigmoid channels WT, TC, ET; and
"labels", a softmax over the canonical labels 0..3.
"""
from __future__ import annotations

import torch

from brats_seg.io.labels import NUM_LABELS, REGIONS

_REGION_IDS = tuple(REGIONS.values())


def squeeze_labels(labels: torch.Tensor) -> torch.Tensor:
    """(B,1,*S) or (B,*S) integer labels -> (B,*S) long."""
    if labels.is_floating_point():
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.ndim >= 3 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return labels.long()


def labels_to_regions(labels: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Canonical labels (B,X,Y,Z) or (B,1,X,Y,Z) -> float region masks (B,3,X,Y,Z): WT, TC, ET.
    check=False skips the range check, which reads the device twice (the training loss checks
    its labels once per case instead: seg3d.losses)."""
    labels = squeeze_labels(labels)
    if check and labels.numel() and (labels.min() < 0 or labels.max() >= NUM_LABELS):
        raise ValueError(
            f"labels must be canonical 0..{NUM_LABELS - 1} (0 bg, 1 NCR, 2 ED, 3 ET), found values "
            f"in [{int(labels.min())}, {int(labels.max())}]; convert the dataset's convention "
            "first")
    masks = [torch.isin(labels, torch.tensor(ids, device=labels.device)) for ids in _REGION_IDS]
    return torch.stack(masks, dim=1).float()


def regions_to_labels(regions: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Region probabilities or binary masks (B,3,...) in WT, TC, ET order -> labels (B,...).

    A channel is "on" where its value is > threshold. Nesting is enforced top-down, so the result
    is always consistent: 0 if not WT; 2 (ED) if WT and not TC; 1 (NCR) if WT and TC and not ET;
    3 (ET) if WT and TC and ET. TC outside WT, or ET outside TC, is therefore dropped.
    """
    if regions.ndim < 3 or regions.shape[1] != 3:
        raise ValueError(
            f"regions must be (B, 3, ...) in WT, TC, ET order, got {tuple(regions.shape)}")
    wt = regions[:, 0] > threshold
    tc = wt & (regions[:, 1] > threshold)
    et = tc & (regions[:, 2] > threshold)
    labels = torch.zeros(wt.shape, dtype=torch.long, device=regions.device)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 3
    return labels


def activate(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """One case's (K, X, Y, Z) logits -> probabilities: sigmoid (in place) or softmax over K."""
    return logits.sigmoid_() if mode == "regions" else torch.softmax(logits, dim=0)


def background_fill(mode: str) -> float | list[float]:
    """The probabilities of a voxel no window covered: no region, or certain background."""
    return 0.0 if mode == "regions" else [1.0] + [0.0] * (NUM_LABELS - 1)


def probabilities_to_labels(probs: torch.Tensor, mode: str) -> torch.Tensor:
    """One case's (K, X, Y, Z) probabilities -> canonical labels (X, Y, Z), long, on their device."""
    if mode == "regions":
        return regions_to_labels(probs[None], threshold=0.5)[0]
    return probs.argmax(dim=0)


def dice_per_region_torch(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Canonical label tensors (same shape) -> tensor [WT, TC, ET] (float64), on their device.

    The same numbers as evaluate.dice.dice_per_region (1 when both are empty), so validation on
    the GPU and evaluation on disk agree without copying whole volumes to the host.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} does not match reference shape {tuple(ref.shape)}")
    out = []
    for ids in _REGION_IDS:
        lut = torch.zeros(max(NUM_LABELS, int(max(pred.max(), ref.max())) + 1), dtype=torch.bool, device=pred.device)
        lut[list(ids)] = True
        p, r = lut[pred.long()], lut[ref.long()]
        total = p.sum(dtype=torch.float64) + r.sum(dtype=torch.float64)
        inter = (p & r).sum(dtype=torch.float64)
        out.append(torch.where(total > 0, 2.0 * inter / total.clamp_min(1), torch.ones_like(total)))
    return torch.stack(out)
