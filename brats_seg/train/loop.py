"""The 3D trainer: epochs of patch batches, validation every N epochs, checkpoints, exact resume.

Flow: run_training -> train_3d (process group, SIGTERM flag) -> build_state -> [restore] ->
run_epochs -> run_epoch (steps, stop checks, step checkpoints) -> end_epoch (validation, best,
epoch checkpoint). Every rank runs every collective at the same step (loss averages, stop votes,
RNG gathering for checkpoints, validation); only rank 0 writes.

Exit codes: see brats_seg.train.runtime (0 done, 2 bad input, 75 pre-empted by SIGTERM).
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from brats_seg.errors import InputError
from brats_seg.train import checkpoint as ckpt
from brats_seg.train.config import Config3D, config_hash, load_config, to_dict, total_steps
from brats_seg.train.data3d import Dataset3D, build_loader, model_meta, open_dataset
from brats_seg.train.distributed import DistInfo, all_reduce_sum, init_distributed, shutdown
from brats_seg.train.logging import MetricsLogger
from brats_seg.train.run_info import load_run_info, new_run_info, now, write_run_info
from brats_seg.train.runtime import (EXIT_OK, EXIT_PREEMPTED, StopFlag, amp_dtype, autocast_factory,
                                     configure_runtime, make_scaler, seed_all)
from brats_seg.train.schedule import LRSchedule, build_optimizer
from brats_seg.train.state import TrainState, checkpoint_payload, restore_from
from brats_seg.train.step import optimizer_step, train_step
from brats_seg.train.validate import validate


@dataclass
class Session:
    """Per-invocation things that are not checkpointed."""

    cfg: Config3D
    data: Dataset3D
    loader: torch.utils.data.DataLoader
    sampler: object
    logger: MetricsLogger
    stop: StopFlag
    run_info: dict
    total: int
    started: float = field(default_factory=time.monotonic)
    elapsed_at_start: float = 0.0
    interval: list = field(default_factory=list)

    def elapsed(self) -> float:
        return self.elapsed_at_start + time.monotonic() - self.started


def run_training(config: Path | None, data: Path, out: Path, fold: int | None, resume: bool,
                 overrides: Sequence[str]) -> int:
    """Entry point of `brats-seg train` for task '3d'."""
    overrides = list(overrides) + ([f"data.fold={fold}"] if fold is not None else [])
    if config is None:
        if not resume:
            raise InputError("--config", "required for a new run (e.g. --config pipelines/train_cpu.yaml)")
        config = Path(out) / "config.yaml"
    return train_3d(load_config(config, overrides), Path(data), Path(out), resume)


def train_3d(cfg: Config3D, data_path: Path, run_dir: Path, resume: bool) -> int:
    info = init_distributed(cfg.train.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    stop = StopFlag().install()
    try:
        data = open_dataset(data_path, cfg)
        _check_run_dir(run_dir, resume)
        state = build_state(cfg, data, info, run_dir)
        session = _start_session(state, cfg, data, stop, resume)
        status = run_epochs(state, session)
        _finish(state, session, status)
        return EXIT_PREEMPTED if status == "preempted" else EXIT_OK
    finally:
        stop.restore()
        shutdown(info)


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    folder = ckpt.checkpoint_dir(run_dir)
    has_run = (folder / ckpt.LATEST).exists() or (folder / ckpt.PREVIOUS).exists()
    if has_run and not resume:
        raise InputError(run_dir, "already holds a training run (checkpoints/); pass --resume to continue "
                                  "it or choose a new --out")


def build_state(cfg: Config3D, data: Dataset3D, info: DistInfo, run_dir: Path) -> TrainState:
    """Model, optimiser, schedule, scaler and loss, freshly initialised from the seed."""
    from brats_seg.losses import build_loss
    from brats_seg.models.registry import create_model

    configure_runtime(cfg.train.num_threads, cfg.train.deterministic, info.device)
    seed_all(cfg.seed)
    meta = model_meta(cfg, data)
    try:
        model = create_model(meta["model"], **meta["model_kwargs"]).to(info.device)
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError("model", str(exc).strip("'\""))
    seed_all(cfg.seed + 7919 * (info.rank + 1))  # ranks draw different dropout masks
    dtype = amp_dtype(cfg.train.amp, info.device)
    ddp = _wrap_ddp(model, info)
    train_model = torch.compile(ddp or model) if cfg.train.compile else (ddp or model)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    loss_fn = build_loss(cfg.loss.mode, cfg.loss.dice_weight, cfg.loss.ce_weight, batch_dice=cfg.loss.batch_dice)
    return TrainState(model, train_model, optimizer, LRSchedule(optimizer, cfg.schedule, total_steps(cfg.train)),
                      make_scaler(info.device, dtype), loss_fn, autocast_factory(info.device, dtype), info,
                      Path(run_dir), config_hash(cfg), data.sha256, meta, ddp=ddp)


def _wrap_ddp(model: torch.nn.Module, info: DistInfo):
    if not info.is_distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def _start_session(state: TrainState, cfg: Config3D, data: Dataset3D, stop: StopFlag, resume: bool) -> Session:
    info, run_dir = state.info, state.run_dir
    resumed_from = None
    if resume:
        payload, resumed_from = ckpt.load_latest(run_dir)
        ckpt.check_compatible(payload, resumed_from, state.config_hash, state.data_sha256)
        restore_from(state, payload)
    loader, sampler = build_loader(data, cfg, info.rank, info.world_size, info.device)
    logger = MetricsLogger(run_dir, enabled=info.is_main)
    run_info = (load_run_info(run_dir) if resume else None) or new_run_info(
        to_dict(cfg), state.config_hash, data.manifest_path, data.sha256, data.split, info.world_size,
        str(info.device), state.meta)
    session = Session(cfg, data, loader, sampler, logger, stop, run_info, total_steps(cfg.train),
                      elapsed_at_start=state.progress.elapsed_s)
    if info.is_main:
        _write_start_files(state, session, resumed_from)
    return session


def _write_start_files(state: TrainState, session: Session, resumed_from: Path | None) -> None:
    import yaml

    from brats_seg.manifest import atomic_write_text

    run_dir, p = state.run_dir, state.progress
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(session.cfg), sort_keys=False))
    if resumed_from is not None:
        session.logger.resume_at(p.step)
        session.run_info["resumed"].append({"at": now(), "step": p.step, "epoch": p.epoch,
                                            "checkpoint": str(resumed_from)})
        print(f"resumed from {resumed_from} at step {p.step} (epoch {p.epoch})", flush=True)
    if session.data.unlabelled:
        print(f"note: {len(session.data.unlabelled)} unlabelled case(s) not used for training", flush=True)
    session.run_info["status"] = "running"
    write_run_info(run_dir, session.run_info)


def run_epochs(state: TrainState, session: Session) -> str:
    """'finished', 'budget' (wall-clock limit) or 'preempted' (SIGTERM)."""
    p = state.progress
    while p.step < session.total and p.epoch < session.cfg.train.epochs:
        status = run_epoch(state, session)
        if status != "continue":
            return status
    return "finished"


def run_epoch(state: TrainState, session: Session) -> str:
    cfg, p = session.cfg, state.progress
    accum = cfg.optim.grad_accum
    session.sampler.set_position(p.epoch, p.epoch_step * accum * cfg.data.batch_size)
    batches = iter(session.loader)
    with _progress_bar(state, session) as bar:
        while p.epoch_step < cfg.train.steps_per_epoch and p.step < session.total:
            loss = train_step(state, [next(batches) for _ in range(accum)])
            finite = optimizer_step(state, cfg.optim.grad_clip)
            _after_step(state, session, loss, finite)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{state.schedule.lr:.2e}")
            reason = _stop_reason(state, session)
            if reason == "preempted":
                save(state, session)
                return reason
            if reason == "budget":
                end_epoch(state, session, final=True)
                return reason
            every = cfg.train.checkpoint_every_steps
            if every and p.step % every == 0 and p.epoch_step < cfg.train.steps_per_epoch:
                save(state, session)
    end_epoch(state, session)
    return "continue"


def _progress_bar(state: TrainState, session: Session):
    from tqdm import tqdm

    show = state.info.is_main and session.cfg.train.progress and sys.stderr.isatty()
    return tqdm(total=session.cfg.train.steps_per_epoch, initial=state.progress.epoch_step, disable=not show,
                desc=f"epoch {state.progress.epoch}", leave=False, dynamic_ncols=True)


def _after_step(state: TrainState, session: Session, loss: float, finite: bool) -> None:
    p, cfg = state.progress, session.cfg
    p.step += 1
    p.epoch_step += 1
    p.epoch_loss_sum += loss
    p.epoch_loss_count += 1
    p.skipped_steps += 0 if finite else 1
    session.interval.append(loss)
    if p.step % cfg.train.log_every_steps == 0:
        mean = _mean_over_ranks(sum(session.interval), len(session.interval), state.info)
        session.interval.clear()
        record = {"kind": "step", "step": p.step, "epoch": p.epoch, "loss": mean, "lr": state.schedule.lr}
        session.logger.log(record)
        if state.info.is_main and not (cfg.train.progress and sys.stderr.isatty()):
            print(f"step {p.step} epoch {p.epoch} loss {mean:.4f} lr {state.schedule.lr:.3e}", flush=True)


def _mean_over_ranks(total: float, count: int, info: DistInfo) -> float:
    t = all_reduce_sum(torch.tensor([total, float(count)], dtype=torch.float64, device=info.device), info)
    return float(t[0] / t[1]) if float(t[1]) > 0 else float("nan")


def _stop_reason(state: TrainState, session: Session) -> str | None:
    """Agreed by all ranks: 'preempted' (SIGTERM anywhere), 'budget', or None."""
    budget = session.cfg.train.time_budget_s
    flags = torch.tensor([float(session.stop.requested), float(bool(budget) and session.elapsed() >= budget)],
                         dtype=torch.float64, device=state.info.device)
    if state.info.is_distributed:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    if flags[0] > 0:
        return "preempted"
    return "budget" if flags[1] > 0 else None


def end_epoch(state: TrainState, session: Session, final: bool = False) -> None:
    """Epoch record (+ validation when due or final), epoch counters forward, checkpoint."""
    cfg, p = session.cfg, state.progress
    final = final or p.step >= session.total or p.epoch + 1 >= cfg.train.epochs
    record = {"kind": "epoch", "epoch": p.epoch, "step": p.step,
              "train_loss": _mean_over_ranks(p.epoch_loss_sum, p.epoch_loss_count, state.info),
              "lr": state.schedule.lr, "skipped_steps": p.skipped_steps}
    if session.data.val and ((p.epoch + 1) % cfg.validation.every_epochs == 0 or final):
        record.update(run_validation(state, session))
    record["time_s"] = round(session.elapsed(), 2)
    p.epoch, p.epoch_step, p.epoch_loss_sum, p.epoch_loss_count = p.epoch + 1, 0, 0.0, 0
    session.logger.log(record)
    if state.info.is_main:
        print(_epoch_line(record, cfg.train.epochs, state.progress.best_metric), flush=True)
    save(state, session)


def run_validation(state: TrainState, session: Session) -> dict:
    """Validate, feed the plateau schedule, keep best.pt when the mean Dice improves."""
    cfg, p = session.cfg, state.progress
    metrics = validate(state.model, session.data.root, session.data.val, state.info, cfg.data.patch_size,
                       cfg.validation.overlap, cfg.validation.sw_batch_size, cfg.loss.mode, state.autocast)
    state.schedule.observe(metrics["val_dice_mean"])
    p.last_val_step = p.step
    if metrics["val_dice_mean"] > p.best_metric:
        p.best_metric, p.best_epoch, p.best_step = metrics["val_dice_mean"], p.epoch, p.step
        best = {"epoch": p.epoch, "step": p.step, **metrics}
        if state.info.is_main:
            path = ckpt.save_best(state.run_dir, state.model.state_dict(), state.meta, best)
            session.run_info["best"] = best
            session.run_info["checkpoints"]["best"] = str(path.relative_to(state.run_dir))
    return metrics


def _epoch_line(rec: dict, epochs: int, best: float) -> str:
    line = f"epoch {rec['epoch'] + 1}/{epochs} step {rec['step']} loss {rec['train_loss']:.4f} lr {rec['lr']:.2e}"
    if "val_dice_mean" in rec:
        line += (f" | val WT {rec['val_dice_WT']:.3f} TC {rec['val_dice_TC']:.3f} ET {rec['val_dice_ET']:.3f}"
                 f" mean {rec['val_dice_mean']:.3f} (best {best:.3f})")
    return line + f" | {rec['time_s']:.1f} s"


def save(state: TrainState, session: Session) -> None:
    """Checkpoint (collective: RNG states are gathered from every rank); rank 0 writes."""
    state.progress.elapsed_s = session.elapsed()
    payload = checkpoint_payload(state)
    if not state.info.is_main:
        return
    path = ckpt.save_checkpoint(state.run_dir, payload)
    info = session.run_info
    info["progress"] = {"step": state.progress.step, "epoch": state.progress.epoch,
                        "elapsed_s": round(state.progress.elapsed_s, 2)}
    info["checkpoints"].update(latest=str(path.relative_to(state.run_dir)),
                               previous=f"{ckpt.CKPT_DIR}/{ckpt.PREVIOUS}")
    write_run_info(state.run_dir, info)
    print(f"checkpoint: step {state.progress.step} -> {path}", flush=True)


def _finish(state: TrainState, session: Session, status: str) -> None:
    session.logger.close()
    if not state.info.is_main:
        return
    session.run_info["status"] = {"finished": "finished", "budget": "finished (time budget)",
                                  "preempted": "preempted"}[status]
    write_run_info(state.run_dir, session.run_info)
    if status == "preempted":
        print(f"stopped by SIGTERM at step {state.progress.step}; checkpoint saved, exit {EXIT_PREEMPTED}; "
              "continue with the same command plus --resume", flush=True)
    else:
        print(f"training {session.run_info['status']} at step {state.progress.step}", flush=True)
