"""A tiny 3D run folder (RUN/checkpoints/best.pt) as training writes it, for inference tests."""
from __future__ import annotations

from pathlib import Path

CHANNELS = ["t1", "t1ce", "t2", "flair"]


def make_tiny_run(run_dir: Path, seed: int = 0, spacing="native", tumour_bias: bool = True, **model_options) -> Path:
    """RUN/checkpoints/best.pt for a random Attention U-Net with features (4, 8, 16); returns RUN.

    tumour_bias: nudge the head towards tumour so that predicted masks are not empty.
    """
    import torch

    from brats_seg.models.registry import create_model
    from brats_seg.engine.checkpoint import save_best

    torch.manual_seed(seed)
    kwargs = {"in_channels": 4, "out_channels": 3, "features": [4, 8, 16], "norm": "instance", **model_options}
    model = create_model("attention_unet3d", **kwargs)
    if tumour_bias:
        with torch.no_grad():
            model.head.bias.copy_(torch.tensor([0.3, 0.0, -0.2]))
    meta = {"model": "attention_unet3d", "model_kwargs": kwargs, "loss_mode": "regions", "patch_size": [16, 16, 16],
            "channels": list(CHANNELS), "spacing": [1.0, 1.0, 1.0], "preprocess": {"spacing": spacing}}
    save_best(run_dir, model.state_dict(), meta, {"val_dice_mean": 0.5})
    return Path(run_dir)
