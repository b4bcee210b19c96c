"""One optimiser step: micro-batches (gradient accumulation), AMP, clipping, non-finite guard.

Shared by the 3D and 2D trainers: batches are dicts with 'image' and 'label'; the state supplies
the model, loss, scaler and autocast factory (see brats_seg.engine.state.TrainState).
"""
from __future__ import annotations

import contextlib

import torch


def train_step(state, micro_batches: list[dict]) -> float:
    """Forward/backward over the micro-batches; returns the loss (mean over micro-batches).

    The loss of each micro-batch is divided by their number, so accumulation of k batches of b
    gives the gradient of one batch of k·b. Under DDP gradients are all-reduced only on the last
    micro-batch (no_sync on the others).
    """
    device, n = state.info.device, len(micro_batches)
    total = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        image = batch["image"].to(device, non_blocking=True, memory_format=state.memory_format)
        label = batch["label"].to(device, non_blocking=True)
        sync = state.ddp.no_sync() if (state.ddp is not None and i < n - 1) else contextlib.nullcontext()
        with sync:
            with state.autocast():
                out = state.train_model(image)
            loss = state.loss_fn(out, label) / n
            state.scaler.scale(loss).backward()
        total += loss.detach()
    return float(total)  # one host sync per step; the next batch is already prefetched


def optimizer_step(state, grad_clip: float) -> bool:
    """Unscale, clip, step (skipped on non-finite gradients), update the scaler and the LR.

    The decision uses the global gradient norm, which is identical on every rank after DDP's
    all-reduce, so ranks never disagree about skipping. With fp16 the GradScaler also lowers its
    scale. The LR schedule advances either way so it stays aligned with the step counter.
    Returns whether the gradients were finite.
    """
    opt, scaler = state.optimizer, state.scaler
    scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    finite = bool(torch.isfinite(norm))
    if finite or scaler.is_enabled():
        scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    state.schedule.step()
    return finite
