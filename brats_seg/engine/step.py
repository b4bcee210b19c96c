"""One optimiser step: micro-batches (gradient accumulation), AMP, clipping, non-finite guard.

Shared by the 3D and 2D trainers: batches are dicts with 'image' and 'label'; the state supplies
the model, loss, scaler and autocast factory (see brats_seg.engine.state.TrainState).

Host syncs: a step needs two numbers on the host, the loss (the loop logs it and votes on its
finiteness) and whether the global gradient norm is finite (to skip a bad update). `train_and_step`
reads both with one device-to-host copy; `train_step` + `optimizer_step` read them one at a time
(two syncs), for callers that want the halves. Both give the same numbers bit for bit.
"""
from __future__ import annotations

import contextlib
import math

import torch


def train_step(state, micro_batches: list[dict]) -> float:
    """Forward/backward over the micro-batches; returns the loss (mean over micro-batches)."""
    return float(_forward_backward(state, micro_batches))


def optimizer_step(state, grad_clip: float) -> bool:
    """Unscale, clip, step (skipped on non-finite gradients), update the scaler and the LR.

    The decision uses the global gradient norm, which is identical on every rank after DDP's
    all-reduce, so ranks never disagree about skipping. With fp16 the GradScaler also lowers its
    scale. The LR schedule advances either way so it stays aligned with the step counter.
    Returns whether the gradients were finite.
    """
    finite = bool(torch.isfinite(_unscale_and_clip(state, grad_clip)))
    _update(state, finite)
    return finite


def train_and_step(state, micro_batches: list[dict], grad_clip: float) -> tuple[float, bool]:
    """train_step then optimizer_step with one host read for both: (loss, gradients finite)."""
    total = _forward_backward(state, micro_batches)
    norm = _unscale_and_clip(state, grad_clip)
    loss, norm_value = torch.stack([total.double(), norm.double()]).tolist()  # the step's one sync
    finite = math.isfinite(norm_value)
    _update(state, finite)
    return loss, finite


def _forward_backward(state, micro_batches: list[dict]) -> torch.Tensor:
    """The summed loss on the device (no host sync).

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
    return total


def _unscale_and_clip(state, grad_clip: float) -> torch.Tensor:
    """The global gradient norm before clipping (a device tensor); gradients clipped in place."""
    state.scaler.unscale_(state.optimizer)
    return torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip if grad_clip > 0 else float("inf"))


def _update(state, finite: bool) -> None:
    """Optimiser step unless the gradients are non-finite (GradScaler skips by itself), then the
    scaler, zero_grad and the LR schedule."""
    opt, scaler = state.optimizer, state.scaler
    if finite or scaler.is_enabled():
        scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    state.schedule.step()
