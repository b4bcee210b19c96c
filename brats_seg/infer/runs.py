"""The hook between training and inference: a run dir or checkpoint -> (model, ModelSpec).

The weights and the model metadata come from `engine.checkpoint.load_model` (best.pt, else
latest.pt; torch.load(weights_only=True)), which refuses a 2D run with one InputError. The preprocessing spacing comes from the
checkpoint meta's "preprocess" section when present, else from the preprocessed manifest that
run.json names, else (with a warning) the training data's voxel size `meta["spacing"]`, which
is what a "native" run on 1 mm BraTS data amounts to. The model's identity is the checkpoint
file's sha256.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from brats_seg.core.hashing import sha256_file
from brats_seg.infer.model_spec import ModelSpec


def checkpoint_file(path: Path) -> Path:
    """The file a run dir stands for (checkpoints/best.pt, else checkpoints/latest.pt)."""
    from brats_seg.engine.checkpoint import model_checkpoint

    return model_checkpoint(path)


def run_spacing(ckpt: Path, meta: dict) -> Any:
    """'native' or (x, y, z) mm: how the run's training data were preprocessed."""
    pre = meta.get("preprocess")
    if isinstance(pre, dict) and "spacing" in pre:
        return pre["spacing"]
    run_json = Path(ckpt).resolve().parent.parent / "run.json"
    try:
        manifest = Path(json.loads(run_json.read_text())["data"]["manifest"])
        return json.loads(manifest.read_text())["config"]["preprocess"]["spacing"]
    except (OSError, KeyError, TypeError, ValueError):
        pass
    if meta.get("spacing"):
        print(f"warning: {ckpt}: the run's preprocessing config is not recorded or its manifest is gone; "
              f"resampling inputs to the training data's voxel size {meta['spacing']} mm", file=sys.stderr)
        return [float(v) for v in meta["spacing"]]
    return "native"


def load_run_model(path: Path, device: torch.device) -> tuple[torch.nn.Module, ModelSpec]:
    """(3D model in eval mode, its ModelSpec) from a run dir or checkpoint."""
    from brats_seg.engine.checkpoint import load_model

    ckpt = checkpoint_file(path)
    model, meta = load_model(ckpt, device, task="3d")
    identity = {"checkpoint": str(ckpt.resolve()), "sha256": sha256_file(ckpt), "model": meta.model}
    return model, ModelSpec.from_meta(meta, run_spacing(ckpt, meta.to_dict()), identity)
