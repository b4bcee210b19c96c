"""The 2D epoch loop: the 3D trainer's step, bookkeeping, stop votes, checkpointing and finish
(brats_seg.engine.loop), with mIoU validation in place of sliding-window Dice.

Only end_epoch, which names the validation, is written out again here; train.loop.run_epochs
takes it as a hook. Everything else, the
per-step record, the SIGTERM/time-budget vote, the collective checkpoint save and the final
status, is the 3D code itself, so both tasks checkpoint, resume and stop identically.
"""
from __future__ import annotations

from brats_seg.engine import checkpoint as ckpt
from brats_seg.engine.metrics_log import PNG, MetricsLogger
from brats_seg.engine import loop as train_loop
from brats_seg.engine.loop import _mean_over_ranks, save
from brats_seg.engine.session import Session
from brats_seg.engine.state import TrainState
from brats_seg.seg2d.evaluate import evaluate_dataset


class MetricsLogger2D(MetricsLogger):
    """The 3D logger (JSONL, CSV, TensorBoard) with a 2D curve plot: loss and validation mIoU."""

    def plot(self) -> None:
        if not self.epochs:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from brats_seg.core.atomic import atomic_path

        fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.plot([r["epoch"] for r in self.epochs], [r.get("train_loss") for r in self.epochs])
        ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
        val = [r for r in self.epochs if "val_miou" in r]
        for key, label in (("val_miou", "mIoU"), ("val_pixel_accuracy", "pixel accuracy")):
            ax_iou.plot([r["epoch"] for r in val], [r[key] for r in val], marker="o", label=label)
        ax_iou.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
        ax_iou.legend(loc="lower right")
        fig.tight_layout()
        with atomic_path(self.run_dir / PNG) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)


def run_epochs(state: TrainState, session: Session) -> str:
    """The shared 3D epoch loop, closing each epoch with the 2D end_epoch (mIoU validation)."""
    return train_loop.run_epochs(state, session, end_epoch)


def end_epoch(state: TrainState, session: Session, partial: bool = False) -> None:
    """Epoch record (+ validation when due or final), counters forward, checkpoint (as in 3D)."""
    cfg, p = session.cfg, state.progress
    final = partial or p.step >= session.total or p.epoch + 1 >= cfg.train.epochs
    record = {"kind": "epoch", "epoch": p.epoch + 1, "step": p.step, "partial": partial,
              "train_loss": _mean_over_ranks(p.epoch_loss_sum, p.epoch_loss_count, state.info),
              "lr": state.schedule.lr, "skipped_steps": p.skipped_steps}
    every = cfg.validation.every_epochs
    if session.data.val is not None and every and ((p.epoch + 1) % every == 0 or final):
        record.update(run_validation(state, session))
    record["time_s"] = round(session.elapsed(), 2)
    if not partial:
        p.epoch, p.epoch_step, p.epoch_loss_sum, p.epoch_loss_count = p.epoch + 1, 0, 0.0, 0
    session.logger.log(record)
    if state.info.is_main:
        print(_epoch_line(record, cfg.train.epochs, p.best_metric), flush=True)
    save(state, session)


def run_validation(state: TrainState, session: Session) -> dict:
    """mIoU on the validation split; feeds the plateau schedule; keeps best.pt when mIoU improves."""
    cfg, p, meta = session.cfg, state.progress, state.meta
    result, _ = evaluate_dataset(state.model, session.data.val, meta["num_classes"], meta["ignore_index"],
                                 eval_scale=cfg.data.eval_scale, max_images=cfg.validation.max_images,
                                 autocast=state.autocast, info=state.info)
    metrics = {"val_miou": result["miou"], "val_pixel_accuracy": result["pixel_accuracy"],
               "val_mean_class_accuracy": result["mean_class_accuracy"]}
    state.schedule.observe(metrics["val_miou"])
    p.last_val_step = p.step
    if metrics["val_miou"] > p.best_metric:
        p.best_metric, p.best_epoch, p.best_step = metrics["val_miou"], p.epoch + 1, p.step
        best = {"epoch": p.epoch + 1, "step": p.step, **metrics,
                "val_iou_per_class": dict(zip(meta["class_names"], result["iou_per_class"]))}
        if state.info.is_main:
            path = ckpt.save_best(state.run_dir, state.model.state_dict(), meta, best)
            session.run_info["best"] = best
            session.run_info["checkpoints"]["best"] = str(path.relative_to(state.run_dir))
    return metrics


def _epoch_line(rec: dict, epochs: int, best: float) -> str:
    line = f"epoch {rec['epoch']}/{epochs} step {rec['step']} loss {rec['train_loss']:.4f} lr {rec['lr']:.2e}"
    if "val_miou" in rec:
        line += (f" | val mIoU {rec['val_miou']:.3f} pixel acc {rec['val_pixel_accuracy']:.3f}"
                 f" (best {best:.3f})")
    return line + f" | {rec['time_s']:.1f} s"
