"""`bench train`: where a training step's time goes, and our data path against MONAI's.

(a) The trainer's step (next batch from the loader + train_step + optimizer_step + per-step
    bookkeeping, the same functions the loop calls) against pure compute on one batch already
    on the device: forward+backward, and forward+backward+optimiser step. The difference is what
    data loading and bookkeeping add.
(b) Samples per second of that step against a MONAI reference loop: same model, loss, optimiser
    and step functions, batch and patch size, but MONAI's loading (LoadImaged of the whole
    volume), RandCropByPosNegLabeld (1 positive : 2 negative, like our third of foreground
    patches), RandFlipd/RandRotated/RandZoomd/intensity transforms and monai's DataLoader with the
    same number of workers.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from brats_seg.train.config import Config3D, load_config
from brats_seg.train.data3d import Dataset3D, open_dataset
from brats_seg.train.distributed import DistInfo, pick_device
from brats_seg.train.loop import _after_step, _stop_reason
from brats_seg.train.runtime import StopFlag
from brats_seg.train.setup3d import build_state, start_session
from brats_seg.train.state import TrainState
from brats_seg.train.step import optimizer_step, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_blocks(fns: dict[str, Callable[[], Any]], drains: dict[str, Callable[[], Any]], rounds: int,
                 block: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call, measured in alternating blocks (A x block, B x block, ..., repeated
    `rounds` times) so that a busy neighbour hits every contender alike. Before each block a
    contender's drain() throws away what its loader prefetched while the others ran: the point is
    the steady state, in which loading has to keep up with the steps."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            drains.get(name, lambda: None)()
            for _ in range(block):
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    return {name: float(sorted(t)[len(t) // 2]) for name, t in times.items()}


def _drain(batches, count: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(count):
            next(batches)
    return run


def _pure_compute(state: TrainState, batch: dict, with_optimizer: bool) -> Callable[[], None]:
    image = batch["image"].to(state.info.device)
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
        _after_step(state, session, loss, finite)
        _stop_reason(state, session)
    return run


def _endless(loader) -> Any:
    while True:
        yield from loader


def monai_loader(data: Dataset3D, cfg: Config3D):
    """The MONAI reference pipeline over the same training cases (whole volumes loaded per sample)."""
    import numpy as np
    from monai import transforms as T
    from monai.data import DataLoader, Dataset

    keys, patch = ["image", "label"], list(cfg.data.patch_size)
    items = [{"image": str(data.root / c["image"]), "label": str(data.root / c["seg"])} for c in data.train]
    chain = T.Compose([
        T.LoadImaged(keys, reader="NumpyReader", image_only=True),
        T.EnsureChannelFirstd("image", channel_dim=-1), T.EnsureChannelFirstd("label", channel_dim="no_channel"),
        T.CastToTyped("image", dtype=np.float32),
        T.SpatialPadd(keys, spatial_size=patch),
        T.RandCropByPosNegLabeld(keys, "label", spatial_size=patch, pos=1, neg=2, num_samples=1),
        T.RandRotated(keys, range_x=0.52, range_y=0.52, range_z=0.52, prob=0.2, mode=("bilinear", "nearest"),
                      keep_size=True),
        T.RandZoomd(keys, min_zoom=0.7, max_zoom=1.4, prob=0.2, mode=("trilinear", "nearest"), keep_size=True),
        T.RandScaleIntensityd("image", factors=0.25, prob=0.15),
        T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
        T.RandGaussianNoised("image", std=0.1, prob=0.1),
        T.RandFlipd(keys, prob=0.5, spatial_axis=0), T.RandFlipd(keys, prob=0.5, spatial_axis=1),
        T.RandFlipd(keys, prob=0.5, spatial_axis=2),
        T.CastToTyped("label", dtype=np.uint8),
        T.EnsureTyped(keys, track_meta=False),
    ])
    chain.set_random_state(seed=cfg.seed)
    dataset = Dataset(items, transform=chain)
    return DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=cfg.data.num_workers > 0,
                      collate_fn=_collate_first_sample)


def _collate_first_sample(samples: list) -> dict:
    """RandCropByPosNegLabeld returns a list of crops per item; stack the (single) crops."""
    flat = [s[0] if isinstance(s, list) else s for s in samples]
    return {k: torch.stack([torch.as_tensor(s[k]) for s in flat]) for k in ("image", "label")}


def bench_train(data: Path, config: Path | None = None, overrides: Sequence[str] = (), steps: int = 4,
                rounds: int = 3, monai_reference: bool = True) -> dict[str, Any]:
    """Measure (a) and (b) above on one process; returns seconds per step and samples per second
    (medians over `rounds` x `steps` timed steps per contender)."""
    cfg = load_config(config, [*overrides, "data.fold=-1"])
    dataset = open_dataset(data, cfg)
    info = DistInfo(device=pick_device(cfg.train.device))
    with tempfile.TemporaryDirectory(prefix="brats-bench-") as tmp:
        state = build_state(cfg, dataset, info, Path(tmp))
        session = start_session(state, cfg, dataset, StopFlag(), resume=False)
        session.sampler.set_position(0, 0)
        batches = _endless(session.loader)
        first = next(batches)
        depth = 2 * max(1, cfg.data.num_workers)  # batches a loader may hold (prefetch_factor 2 per worker)
        contenders = {
            "fwd_bwd_s": _pure_compute(state, first, False),
            "fwd_bwd_opt_s": _pure_compute(state, first, True),
            "train_step_s": _loop_step(state, session, batches),
        }
        drains = {"train_step_s": _drain(batches, depth)}
        if monai_reference:
            reference = _endless(monai_loader(dataset, cfg))
            contenders["monai_step_s"] = _loop_step(state, session, reference)
            drains["monai_step_s"] = _drain(reference, depth)
        for fn in contenders.values():  # warm-up: allocator, kernel selection, worker start
            fn()
        result: dict[str, Any] = {
            "device": str(info.device), "patch_size": list(cfg.data.patch_size), "batch_size": cfg.data.batch_size,
            "num_workers": cfg.data.num_workers, "model": cfg.model.name, "features": list(cfg.model.features),
            "steps": steps * rounds, **_time_blocks(contenders, drains, rounds, steps, info.device),
        }
    return _summarise(result, cfg.data.batch_size * cfg.optim.grad_accum)


def _summarise(r: dict[str, Any], samples_per_step: int) -> dict[str, Any]:
    r["overhead_vs_fwd_bwd_opt"] = r["train_step_s"] / r["fwd_bwd_opt_s"] - 1.0
    r["overhead_vs_fwd_bwd"] = r["train_step_s"] / r["fwd_bwd_s"] - 1.0
    r["samples_per_s"] = samples_per_step / r["train_step_s"]
    if "monai_step_s" in r:
        r["monai_samples_per_s"] = samples_per_step / r["monai_step_s"]
        r["speedup_vs_monai"] = r["samples_per_s"] / r["monai_samples_per_s"]
    return r
