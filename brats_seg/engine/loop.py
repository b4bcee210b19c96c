"""The 3D trainer: epochs of patch batches, validation every N epochs, checkpoints, exact resume.

Flow: run_training -> train_3d (process group, SIGTERM flag) -> build_state -> [restore] ->
run_epochs -> run_epoch (steps, stop checks, step checkpoints) -> end_epoch (validation, best,
epoch checkpoint). Every rank runs every collective at the same step (loss averages, stop votes,
RNG gathering for checkpoints, validation); only rank 0 writes.

Exit codes: see brats_seg.engine.runtime (0 done, 2 bad input, 75 pre-empted by SIGTERM).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from brats_seg.errors import InputError
from brats_seg.engine import checkpoint as ckpt
from brats_seg.seg3d.config import Config3D, load_config
from brats_seg.seg3d.data import open_dataset
from brats_seg.engine.distributed import DistInfo, all_reduce_sum, init_distributed, shutdown
from brats_seg.engine.run_info import write_run_info
from brats_seg.engine.runtime import EXIT_OK, EXIT_PREEMPTED, StopFlag
from brats_seg.engine.session import Session, build_state, check_run_dir, start_session
from brats_seg.engine.state import TrainState, checkpoint_payload
from brats_seg.engine.step import optimizer_step, train_step
from brats_seg.seg3d.validate import validate


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
        check_run_dir(run_dir, resume)
        state = build_state(cfg, data, info, run_dir)
        session = start_session(state, cfg, data, stop, resume)
        status = _run_guarded(state, session)
        _finish(state, session, status)
        return EXIT_PREEMPTED if status == "preempted" else EXIT_OK
    finally:
        stop.restore()
        shutdown(info)


def _run_guarded(state: TrainState, session: Session) -> str:
    """run_epochs, with a one-line diagnosis before the traceback when a collective fails."""
    try:
        return run_epochs(state, session)
    except RuntimeError as exc:
        if state.info.is_distributed:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            print(f"error: rank {state.info.rank}: a collective failed at step {state.progress.step} ({first}); "
                  f"another rank died or hung longer than distributed.timeout_s="
                  f"{session.cfg.distributed.timeout_s:g}", file=sys.stderr, flush=True)
        raise


def run_epochs(state: TrainState, session: Session, end_epoch_fn: Callable | None = None) -> str:
    """'finished', 'budget' (wall-clock limit) or 'preempted' (SIGTERM).

    `end_epoch_fn` closes an epoch (record, validation, checkpoint): the 3D one by default; the 2D
    trainer passes its own so both tasks share every other line of the loop.
    """
    p = state.progress
    while p.step < session.total and p.epoch < session.cfg.train.epochs:
        status = run_epoch(state, session, end_epoch_fn or end_epoch)
        if status != "continue":
            return status
    return "finished"


def run_epoch(state: TrainState, session: Session, close: Callable | None = None) -> str:
    close = close or end_epoch
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
                close(state, session, partial=True)
                return reason
            every = cfg.train.checkpoint_every_steps
            if every and p.step % every == 0 and p.epoch_step < cfg.train.steps_per_epoch:
                save(state, session)
    close(state, session)
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
        record = {"kind": "step", "step": p.step, "epoch": p.epoch + 1, "loss": mean, "lr": state.schedule.lr}
        session.logger.log(record)
        if state.info.is_main and not (cfg.train.progress and sys.stderr.isatty()):
            print(f"step {p.step} epoch {p.epoch + 1} loss {mean:.4f} lr {state.schedule.lr:.3e}", flush=True)


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


def end_epoch(state: TrainState, session: Session, partial: bool = False) -> None:
    """Epoch record (+ validation when due or final), epoch counters forward, checkpoint.

    partial: the time budget ended the run mid-epoch; validate and record, but leave the epoch
    counters where they are, so a resume with a larger budget continues the same epoch.
    """
    cfg, p = session.cfg, state.progress
    final = partial or p.step >= session.total or p.epoch + 1 >= cfg.train.epochs
    record = {"kind": "epoch", "epoch": p.epoch + 1, "step": p.step,
              "train_loss": _mean_over_ranks(p.epoch_loss_sum, p.epoch_loss_count, state.info),
              "lr": state.schedule.lr, "skipped_steps": p.skipped_steps}
    if session.data.val and ((p.epoch + 1) % cfg.validation.every_epochs == 0 or final):
        record.update(run_validation(state, session))
    record["time_s"] = round(session.elapsed(), 2)
    record["partial"] = partial
    if not partial:
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
        p.best_metric, p.best_epoch, p.best_step = metrics["val_dice_mean"], p.epoch + 1, p.step
        best = {"epoch": p.epoch + 1, "step": p.step, **metrics}
        if state.info.is_main:
            path = ckpt.save_best(state.run_dir, state.model.state_dict(), state.meta, best)
            session.run_info["best"] = best
            session.run_info["checkpoints"]["best"] = str(path.relative_to(state.run_dir))
    return metrics


def _epoch_line(rec: dict, epochs: int, best: float) -> str:
    line = f"epoch {rec['epoch']}/{epochs} step {rec['step']} loss {rec['train_loss']:.4f} lr {rec['lr']:.2e}"
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
