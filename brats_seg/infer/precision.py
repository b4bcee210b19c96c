"""The autocast dtype of inference (`predict --amp {auto,fp16,bf16,none}`).

A network trained under bf16 autocast can produce activations beyond fp16's range (65504), so fp16
inference of such a model risks inf/NaN probabilities (refused as an error by the Segmenter, never
an empty region); 'auto' therefore follows the dtype the model was trained with (ModelMeta.amp_dtype;
None, as in every checkpoint from before that field: float32). bf16 runs only where it is native
(compute capability >= 8, Ampere and newer): older GPUs (V100, T4) emulate it slowly although
torch.cuda.is_bf16_supported() says yes, so there bf16 becomes float32, with one warning, rather
than fp16. On CPU the setting is ignored: inference runs in float32.
"""
from __future__ import annotations

import sys

import torch

from brats_seg.errors import InputError

AMP_CHOICES = ("auto", "fp16", "bf16", "none")
NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", None: "fp32"}


def inference_dtype(setting: str, device: torch.device, trained: str | None = None) -> torch.dtype | None:
    """The autocast dtype for `setting` on `device` for a model trained in `trained` ('bf16',
    'fp16' or None: float32); None means float32 (no autocast)."""
    if setting not in AMP_CHOICES:
        raise InputError("--amp", f"{setting!r} is not known; expected one of {', '.join(AMP_CHOICES)}")
    device = torch.device(device)
    if device.type != "cuda" or setting == "none":
        return None
    wanted = trained if setting == "auto" else setting
    if wanted is None:
        return None
    if wanted == "fp16":
        if trained == "bf16":
            _warn("--amp fp16 on a model trained in bf16: its activations may exceed fp16's range "
                  "(non-finite probabilities stop the case); --amp auto predicts in bf16 or float32")
        return torch.float16
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return torch.bfloat16
    _warn(f"--amp {setting}: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no "
          "native bf16; predicting in float32 (fp16 could overflow a model trained in bf16)")
    return None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
