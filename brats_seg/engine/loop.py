"""The training loop of every task: epochs of batches, validation every N epochs, checkpoints,
exact resume, time budget and SIGTERM.

Flow: train (process group, SIGTERM flag, the task) -> build_state -> start_session [restore] ->
run_epochs -> run_epoch (steps, stop votes, step checkpoints) -> end_epoch (validation, best.pt,
epoch checkpoint) -> finish. Every rank runs every collective at the same step (loss averages,
stop votes, RNG gathering for checkpoints, validation); only rank 0 writes. What differs between
tasks comes from the Task (brats_seg.engine.task).

Non-finite numbers stop the run: the per-step stop vote carries "this rank's loss is not finite"
(the loss is on the host already, so no extra sync), and the weights are checked before every
checkpoint and best.pt; either ends the run with exit 1 and one line naming the step, and no
checkpoint ever holds non-finite weights.

Pre-emption (SIGTERM, to the rank or its whole process group): loader workers ignore it
(engine.loader), the rank's handler only sets a flag, so the step, validation or checkpoint write in
hand finishes; the next stop vote (after every step, and at the start of every epoch) stops all
ranks at the same step, rank 0 saves (unless that state is saved already) and writes run.json
"preempted", every rank waits for it at a barrier, closes its loader workers and exits 75. A first
Ctrl-C (SIGINT) stops the same way, with run.json "interrupted" (launch scripts requeue "preempted"
only), and exits 130; a second one stops at once (KeyboardInterrupt).

Exit codes: see brats_seg.engine.runtime (0 done, 1 non-finite, 2 bad input, 75 pre-empted by SIGTERM, 130 stopped by Ctrl-C).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from brats_seg.engine import checkpoint as ckpt
from brats_seg.engine.config import epoch_steps
from brats_seg.engine.distributed import DistInfo, barrier, init_distributed, mean_over_ranks, shutdown
from brats_seg.engine.loader import close_loader
from brats_seg.engine.run_info import write_run_info
from brats_seg.engine.runtime import EXIT_NOT_FINITE, EXIT_OK, StopFlag, pause_point
from brats_seg.engine.session import Session, build_state, check_run_dir, start_session
from brats_seg.engine.state import TrainState, checkpoint_payload
from brats_seg.engine.step import optimizer_step, train_step
from brats_seg.engine.task import Task


def train(cfg: Any, make_task: Callable[[DistInfo], Task], run_dir: Path, resume: bool) -> int:
    """Train the task `make_task` builds (after the process group is up) into `run_dir`; the exit code.

    The SIGTERM flag is up before the process group, so a pre-emption during start-up is a stop at
    the first vote too. Every rank ends at a barrier after rank 0's last write (checkpoint, run.json):
    a launcher that ends the job at the first non-zero exit (torchrun, srun --kill-on-bad-exit)
    cannot kill rank 0 in the middle of it."""
    stop = StopFlag().install()
    info = init_distributed(cfg.train.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    session = None
    try:
        task = make_task(info)
        check_run_dir(run_dir, resume)
        state = build_state(task, info, run_dir, fresh=not resume)
        session = start_session(state, task, stop, resume)
        try:
            status = run_guarded(state, session)
        except NotFinite as exc:
            stopped(state, session, exc)
            barrier(info)
            return EXIT_NOT_FINITE
        finish(state, session, status)
        barrier(info)
        return stop.exit_code if status == "preempted" else EXIT_OK
    finally:
        if session is not None:
            close_loader(session.loader)
        stop.restore()
        shutdown(info)


class NotFinite(Exception):
    """The loss or the weights stopped being finite; the message names the step."""


def run_guarded(state: TrainState, session: Session) -> str:
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


def run_epochs(state: TrainState, session: Session) -> str:
    """'finished', 'budget' (wall-clock limit) or 'preempted' (SIGTERM).

    A stop vote opens every epoch, so a SIGTERM during start-up, the last step's validation or the
    epoch checkpoint stops here, before another step (saving only if the state moved since the
    last checkpoint); the step votes catch the rest."""
    p = state.progress
    while p.step < session.total and p.epoch < session.cfg.train.epochs:
        if stop_reason(state, session) == "preempted":
            if session.saved_step != p.step:
                save(state, session)
            return "preempted"
        status = run_epoch(state, session)
        if status != "continue":
            return status
    return "finished"


def run_epoch(state: TrainState, session: Session) -> str:
    cfg, p = session.cfg, state.progress
    accum, steps = cfg.optim.grad_accum, epoch_steps(cfg, state.info.world_size)  # this rank's share
    session.sampler.set_position(p.epoch, p.epoch_step * accum * cfg.data.batch_size)
    with session.stop.held():  # the first iter() forks the workers; see StopFlag.held
        batches = iter(session.loader)
    with _progress_bar(state, session) as bar:
        while p.epoch_step < steps and p.step < session.total:
            loss = train_step(state, [next(batches) for _ in range(accum)])
            pause_point("step", p.step + 1, state.info.rank)  # test-only; see runtime.pause_point
            finite = optimizer_step(state, cfg.optim.grad_clip)
            after_step(state, session, loss, finite)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{state.schedule.lr:.2e}")
            reason = stop_reason(state, session)
            if reason == "not_finite":
                where = f"got {loss}" if not math.isfinite(loss) else f"on a rank other than {state.info.rank}"
                raise NotFinite(f"loss is not finite at step {p.step} ({where})")
            if reason == "preempted":
                save(state, session)
                return reason
            if reason == "budget":
                end_epoch(state, session, partial=True)
                return reason
            every = cfg.train.checkpoint_every_steps
            if every and p.step % every == 0 and p.epoch_step < steps:
                save(state, session)
    end_epoch(state, session)
    return "continue"


def _progress_bar(state: TrainState, session: Session):
    from tqdm import tqdm

    show = state.info.is_main and session.cfg.train.progress and sys.stderr.isatty()
    return tqdm(total=epoch_steps(session.cfg, state.info.world_size), initial=state.progress.epoch_step,
                disable=not show, desc=f"epoch {state.progress.epoch}", leave=False, dynamic_ncols=True)


def after_step(state: TrainState, session: Session, loss: float, finite: bool) -> None:
    """Counters forward; every log_every_steps a step record (loss averaged over ranks)."""
    p, cfg = state.progress, session.cfg
    p.step += 1
    p.epoch_step += 1
    p.epoch_loss_sum += loss
    p.epoch_loss_count += 1
    p.skipped_steps += 0 if finite else 1
    session.interval.append(loss)
    session.last_loss = loss
    if p.step % cfg.train.log_every_steps == 0:
        mean = mean_over_ranks(sum(session.interval), len(session.interval), state.info)
        session.interval.clear()
        record = {"kind": "step", "step": p.step, "epoch": p.epoch + 1, "loss": mean, "lr": state.schedule.lr}
        session.logger.log(record)
        if state.info.is_main and not (cfg.train.progress and sys.stderr.isatty()):
            print(f"step {p.step} epoch {p.epoch + 1} loss {mean:.4f} lr {state.schedule.lr:.3e}", flush=True)


def stop_reason(state: TrainState, session: Session) -> str | None:
    """Agreed by all ranks: 'not_finite' (a non-finite step loss anywhere: session.last_loss),
    'preempted' (SIGTERM anywhere), 'budget', or None. The vote also carries the elapsed time (the
    max over ranks), so with a time budget every rank sets the same LR (schedule.set_time_fraction)."""
    budget = session.cfg.train.time_budget_s
    flags = torch.tensor([float(session.stop.requested), float(not math.isfinite(session.last_loss)),
                          session.elapsed()], dtype=torch.float64, device=state.info.device)
    if state.info.is_distributed:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    requested, not_finite, elapsed = flags.tolist()  # the step's one host sync
    if budget > 0:
        state.schedule.set_time_fraction(elapsed / budget)
    if not_finite > 0:
        return "not_finite"
    if requested > 0:
        return "preempted"
    return "budget" if budget > 0 and elapsed >= budget else None


def require_finite_weights(state: TrainState, before: str) -> None:
    """NotFinite unless every floating weight is finite (the same answer on every rank: DDP keeps
    the weights identical). One device sync, at checkpoints only."""
    tensors = [t for t in state.model.state_dict().values() if t.is_floating_point()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise NotFinite(f"weights are not finite at step {state.progress.step}; {before} was not written")


def end_epoch(state: TrainState, session: Session, partial: bool = False) -> None:
    """Epoch record (+ validation when due or final), epoch counters forward, checkpoint.

    partial: the time budget ended the run mid-epoch; validate and record, but leave the epoch
    counters where they are, so a resume with a larger budget continues the same epoch.
    """
    cfg, p, task = session.cfg, state.progress, session.task
    final = partial or p.step >= session.total or p.epoch + 1 >= cfg.train.epochs
    record = {"kind": "epoch", "epoch": p.epoch + 1, "step": p.step,
              "train_loss": mean_over_ranks(p.epoch_loss_sum, p.epoch_loss_count, state.info),
              "lr": state.schedule.lr, "skipped_steps": p.skipped_steps}
    if task.validate is not None and ((p.epoch + 1) % cfg.validation.every_epochs == 0 or final):
        record.update(run_validation(state, session))
    record["time_s"] = round(session.elapsed(), 2)
    record["partial"] = partial
    if not partial:
        p.epoch, p.epoch_step, p.epoch_loss_sum, p.epoch_loss_count = p.epoch + 1, 0, 0.0, 0
    session.logger.log(record)
    if state.info.is_main:
        print(epoch_line(task, record, state.progress.best_metric), flush=True)
    save(state, session)


def run_validation(state: TrainState, session: Session) -> dict:
    """The task's validation; feeds the plateau schedule; keeps best.pt when the score improves.
    Returns the scalar metrics (the epoch record's); best.pt and run.json get all of them."""
    task, p = session.task, state.progress
    pause_point("validation", p.step, state.info.rank)  # test-only; see runtime.pause_point
    metrics = task.validate(state, session)
    score = metrics[task.score_key]
    state.schedule.observe(score)
    p.last_val_step = p.step
    if score > p.best_metric:
        require_finite_weights(state, "best.pt")
        p.best_metric, p.best_epoch, p.best_step = score, p.epoch + 1, p.step
        best = {"epoch": p.epoch + 1, "step": p.step, **metrics}
        if state.info.is_main:
            path = ckpt.save_best(state.run_dir, state.model.state_dict(), state.meta.to_dict(), best)
            session.run_info["best"] = best
            session.run_info["checkpoints"]["best"] = str(path.relative_to(state.run_dir))
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def epoch_line(task: Task, rec: dict, best: float) -> str:
    """The line printed per epoch; the task words its validation part."""
    line = (f"epoch {rec['epoch']}/{task.cfg.train.epochs} step {rec['step']} loss {rec['train_loss']:.4f} "
            f"lr {rec['lr']:.2e}")
    if task.score_key in rec:
        line += " | " + task.epoch_text(rec, best)
    return line + f" | {rec['time_s']:.1f} s"


def save(state: TrainState, session: Session) -> None:
    """Checkpoint (collective: RNG states are gathered from every rank); rank 0 writes."""
    require_finite_weights(state, "the checkpoint")
    state.progress.elapsed_s = session.elapsed()
    payload = checkpoint_payload(state)
    session.saved_step = state.progress.step
    if not state.info.is_main:
        return
    path = ckpt.save_checkpoint(state.run_dir, payload, state.progress.step)
    info = session.run_info
    info["progress"] = {"step": state.progress.step, "epoch": state.progress.epoch,
                        "elapsed_s": round(state.progress.elapsed_s, 2)}
    info["checkpoints"].update(latest=str(path.relative_to(state.run_dir)),
                               previous=f"{ckpt.CKPT_DIR}/{ckpt.PREVIOUS}")
    write_run_info(state.run_dir, info)
    print(f"checkpoint: step {state.progress.step} -> {path}", flush=True)


def stopped(state: TrainState, session: Session, exc: NotFinite) -> None:
    """End a run whose numbers went non-finite: rank 0 prints the one error line (naming the last
    good checkpoint, if any) and records the status in run.json."""
    session.logger.close()
    if not state.info.is_main:
        return
    latest = ckpt.checkpoint_dir(state.run_dir) / ckpt.LATEST
    kept = (f"the last good checkpoint {latest} (step {session.run_info.get('progress', {}).get('step', '?')}) "
            "is kept" if latest.exists() else "no checkpoint was written")
    session.run_info["status"] = f"stopped: {exc}"
    write_run_info(state.run_dir, session.run_info)
    print(f"error: training: {exc}; {kept}; lower optim.lr or check the data, then start a new run",
          file=sys.stderr, flush=True)


def finish(state: TrainState, session: Session, status: str) -> None:
    """Close the logger; rank 0 records the final status in run.json and says how the run ended."""
    session.logger.close()
    if not state.info.is_main:
        return
    session.run_info["status"] = {"finished": "finished", "budget": "finished (time budget)",
                                  "preempted": "interrupted" if session.stop.interrupted else "preempted"}[status]
    write_run_info(state.run_dir, session.run_info)
    if status == "preempted":
        by = "Ctrl-C" if session.stop.interrupted else "SIGTERM"
        print(f"stopped by {by} at step {state.progress.step}; checkpoint saved, exit {session.stop.exit_code}; "
              "continue with the same command plus --resume (or --auto-resume)", flush=True)
    else:
        print(f"training {session.run_info['status']} at step {state.progress.step}", flush=True)
        warn_unspent_budget(state, session, status)


UNSPENT_BUDGET = 0.9  # the planned steps ran out before this share of the time budget was spent


def warn_unspent_budget(state: TrainState, session: Session, status: str) -> None:
    """Say so when the planned steps ended a budgeted run early: where the budget was meant to
    decide, the rest of it went unused (a recipe sized for a slower machine). Names the bound."""
    train = session.cfg.train
    budget, elapsed = train.time_budget_s, state.progress.elapsed_s
    if status != "finished" or budget <= 0 or elapsed >= UNSPENT_BUDGET * budget:
        return
    capped = train.max_steps and session.total < train.epochs * epoch_steps(session.cfg, state.info.world_size)
    bound = "train.max_steps" if capped else "train.epochs"
    print(f"note: the planned {session.total} steps ended training after {elapsed:.0f} s of the {budget:.0f} s "
          f"budget; raise {bound} to spend all of it", flush=True)
