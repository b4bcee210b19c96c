"""`bench train`: where a training step's time goes, and our data path against MONAI's.

(a) The trainer's step (next batch from the loader + train_step + optimizer_step + per-step
    bookkeeping, the same functions the loop calls) against pure compute on one batch already
    on the device: forward+backward, and forward+backward+optimiser step. The difference is what
    data loading and bookkeeping add.
(b) Samples per second of that step against MONAI reference loops: same model (architecture and
    initial weights), loss, optimiser and step functions, batch and patch size, but MONAI's
    transforms and DataLoader with the same number of workers (see brats_seg/bench/monai_train.py):
    MONAI fed from our preprocessed arrays, and MONAI's BraTS-tutorial pipeline that decodes and
    preprocesses the raw files for every sample. The references run the model in PyTorch's default
    memory layout, as MONAI's loops do; ours runs in the layout `train.memory_format` picks
    (channels-last on CPU). Pure forward+backward in the default layout is timed as well, so the
    report separates what the layout gains from what the data path gains.
"""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from brats_seg.bench.common import alternate, seconds
from brats_seg.bench.monai_train import monai_preprocessed_loader, monai_tutorial_loader
from brats_seg.seg3d.config import load_config
from brats_seg.seg3d.data import open_dataset
from brats_seg.engine.distributed import DistInfo, pick_device
from brats_seg.engine.loop import after_step, stop_reason
from brats_seg.engine.runtime import StopFlag
from brats_seg.engine.session import build_state, start_session
from brats_seg.engine.state import TrainState
from brats_seg.engine.step import optimizer_step, train_step
from brats_seg.seg3d.trainer import task_3d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_blocks(fns: dict[str, Callable[[], Any]], drains: dict[str, Callable[[], Any]], rounds: int,
                 block: int, device: torch.device, loaders: dict[str, Any] | None = None) -> dict[str, float]:
    """Median seconds per call, measured in alternating blocks (A x block, B x block, ..., repeated
    `rounds` times) so that a busy neighbour hits every contender alike. Before each block a
    contender's drain() throws away what its loader prefetched while the others ran: the point is
    the steady state, in which loading has to keep up with the steps. The other contenders'
    loader workers are paused (SIGSTOP) during a block, so their prefetching costs nobody else."""
    loaders = loaders or {}

    def before_block(name: str) -> None:
        for other, loader in loaders.items():
            _signal_workers(loader, signal.SIGCONT if other == name else signal.SIGSTOP)
        drains.get(name, lambda: None)()

    try:
        calls = alternate(fns, rounds, block, before_block, sync=lambda: _sync(device))
    finally:
        for loader in loaders.values():
            _signal_workers(loader, signal.SIGCONT)
    return {name: float(sorted(seconds(c))[len(c) // 2]) for name, c in calls.items()}


def _signal_workers(loader: Any, sig: int) -> None:
    """Send `sig` to a DataLoader's persistent worker processes (none when it has no live iterator)."""
    iterator = getattr(loader, "_iterator", None)
    for worker in getattr(iterator, "_workers", []) or []:
        if worker.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, sig)


def _drain(batches, count: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(count):
            next(batches)
    return run


def _pure_compute(state: TrainState, batch: dict, with_optimizer: bool) -> Callable[[], None]:
    image = batch["image"].to(state.info.device, memory_format=state.memory_format)
    label = batch["label"].to(state.info.device)

    def run() -> None:
        with state.autocast():
            out = state.train_model(image)
        state.loss_fn(out, label).backward()
        if with_optimizer:
            state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
    return run


def _loop_step(state: TrainState, session, batches) -> Callable[[], None]:
    accum = session.cfg.optim.grad_accum

    def run() -> None:
        loss = train_step(state, [next(batches) for _ in range(accum)])
        finite = optimizer_step(state, session.cfg.optim.grad_clip)
        after_step(state, session, loss, finite)
        stop_reason(state, session)
    return run


def _endless(loader) -> Any:
    while True:
        yield from loader


def bench_train(data: Path, config: Path | None = None, overrides: Sequence[str] = (), steps: int = 4,
                rounds: int = 3, monai_reference: bool = True, tutorial_reference: bool = True,
                data_roots: Sequence[Path] = ()) -> dict[str, Any]:
    """Measure (a) and (b) above on one process; returns seconds per step and samples per second
    (medians over `rounds` x `steps` timed steps per contender)."""
    cfg = load_config(config, [*overrides, "data.fold=-1"])
    dataset = open_dataset(data, cfg)
    info = DistInfo(device=pick_device(cfg.train.device))
    with tempfile.TemporaryDirectory(prefix="brats-bench-") as tmp:
        plain = build_state(task_3d(load_config(config, [*overrides, "data.fold=-1", "train.memory_format=contiguous"]),
                                    dataset), info, Path(tmp))  # the references' layout, same initial weights
        task = task_3d(cfg, dataset)
        state = build_state(task, info, Path(tmp))
        session = start_session(state, task, StopFlag(), resume=False)
        session.sampler.set_position(0, 0)
        batches = _endless(session.loader)
        first = next(batches)
        depth = 2 * max(1, cfg.data.num_workers)  # batches a loader may hold (prefetch_factor 2 per worker)
        contenders = {
            "fwd_bwd_s": _pure_compute(state, first, False),
            "reference_fwd_bwd_s": _pure_compute(plain, first, False),
            "fwd_bwd_opt_s": _pure_compute(state, first, True),
            "train_step_s": _loop_step(state, session, batches),
        }
        drains = {"train_step_s": _drain(batches, depth)}
        loaders = {"train_step_s": session.loader}
        references = {"monai_step_s": monai_preprocessed_loader if monai_reference else None,
                      "monai_tutorial_step_s": monai_tutorial_loader if tutorial_reference else None}
        for name, make_loader in references.items():
            if make_loader is not None:
                extra = {"data_roots": data_roots} if make_loader is monai_tutorial_loader else {}
                loaders[name] = make_loader(dataset, cfg, **extra)
                reference = _endless(loaders[name])
                contenders[name] = _loop_step(plain, session, reference)
                drains[name] = _drain(reference, depth)
        for fn in contenders.values():  # warm-up: allocator, kernel selection, worker start
            fn()
        result: dict[str, Any] = {
            "device": str(info.device), "patch_size": list(cfg.data.patch_size), "batch_size": cfg.data.batch_size,
            "num_workers": cfg.data.num_workers, "model": cfg.model.name, "features": list(cfg.model.features),
            "steps": steps * rounds, **_time_blocks(contenders, drains, rounds, steps, info.device, loaders),
        }
    return _summarise(result, cfg.data.batch_size * cfg.optim.grad_accum)


def _summarise(r: dict[str, Any], samples_per_step: int) -> dict[str, Any]:
    r["overhead_vs_fwd_bwd_opt"] = r["train_step_s"] / r["fwd_bwd_opt_s"] - 1.0
    r["overhead_vs_fwd_bwd"] = r["train_step_s"] / r["fwd_bwd_s"] - 1.0
    r["samples_per_s"] = samples_per_step / r["train_step_s"]
    r["layout_speedup"] = r["reference_fwd_bwd_s"] / r["fwd_bwd_s"]
    for prefix in ("monai", "monai_tutorial"):
        if f"{prefix}_step_s" in r:
            r[f"{prefix}_samples_per_s"] = samples_per_step / r[f"{prefix}_step_s"]
            r[f"speedup_vs_{prefix}"] = r["samples_per_s"] / r[f"{prefix}_samples_per_s"]
    return r
