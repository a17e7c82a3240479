"""What a run leaves in its folder, as callbacks: the checkpoints (`checkpoints`: last.pth, best.pth and
epoch_NNNN.pth every `keep_every` epochs), the metrics (`metrics`: metrics.jsonl and metrics.csv), the curves
(`plots`: loss.png and miou.png) and TensorBoard's scalars (`tensorboard`: OUT/tb, where TensorBoard is installed).
Each writes on the main process only (the trainer calls these hooks there alone), at the end of an epoch after validation (and `checkpoints` when a signal
stops the run); leave one out of `train(cfg, callbacks=...)` and the run writes none of its files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..io.checkpoint import save_checkpoint
from .callbacks import Callback, register_callback

# metrics.csv's columns, in order; a record's other keys (per-class IoU) are in metrics.jsonl only.
CSV_KEYS = ("epoch", "iteration", "lr", "train_loss", "images_per_s", "val_miou", "val_pixel_acc", "holdout_miou",
            "holdout_pixel_acc", "seconds", "val_trained_miou", "holdout_trained_miou", "distill_kl")  # fmt: skip
# (record keys, file, y label) of each curve; the TensorBoard scalars.
CURVES = ((("train_loss",), "loss.png", "train loss"),
          (("val_miou", "holdout_miou", "val_trained_miou", "holdout_trained_miou"), "miou.png", "mIoU"))  # fmt: skip
SCALARS = ("train_loss", "lr", "images_per_s", "val_miou", "val_pixel_acc", "holdout_miou")


class Checkpoints(Callback):
    """last.pth after every epoch and at a stop, best.pth when the selection set's mIoU improved, and
    epoch_NNNN.pth every `keep_every` epochs (0: never); each the run's whole state (`Run.checkpoint`)."""

    name = "checkpoints"

    def __init__(self, keep_every: int = 0) -> None:
        self.keep_every = int(keep_every)

    def on_epoch_complete(self, run: Any, state: Any, improved: bool) -> None:
        epoch = state.epoch
        ckpt = run.checkpoint(state, finished=epoch >= run.cfg.epochs)
        save_checkpoint(ckpt, run.out / "last.pth")
        if improved:
            save_checkpoint(ckpt, run.out / "best.pth")
        if self.keep_every and epoch % self.keep_every == 0:
            save_checkpoint(ckpt, run.out / f"epoch_{epoch:04d}.pth")

    def on_stop(self, run: Any, state: Any, saved: bool) -> None:
        if not saved:  # mid-epoch: where it stands, for the resume to go on from that step
            save_checkpoint(run.checkpoint(state), run.out / "last.pth")


def write_metrics(out: Path, history: List[Dict[str, Any]]) -> None:
    """metrics.jsonl (every record) and metrics.csv (CSV_KEYS), rewritten from the whole history."""
    (out / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    rows = [",".join(CSV_KEYS)] + [",".join("" if h.get(k) is None else str(h.get(k)) for k in CSV_KEYS) for h in history]
    (out / "metrics.csv").write_text("\n".join(rows) + "\n")


def write_plots(out: Path, history: List[Dict[str, Any]]) -> None:
    """loss.png and miou.png from the whole history; nothing where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for keys, name, ylabel in CURVES:
        curves = {k: [(h["epoch"], h[k]) for h in history if h.get(k) is not None] for k in keys}
        curves = {k: pts for k, pts in curves.items() if pts}
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for k, pts in curves.items():
            ax.plot(*zip(*pts), marker="." if len(pts) < 50 else None, label=k.replace("_miou", ""))
        if len(curves) > 1:
            ax.legend()
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)


class Metrics(Callback):
    """metrics.jsonl and metrics.csv, rewritten each epoch from the run's history (which the checkpoint holds)."""

    name = "metrics"

    def on_epoch_complete(self, run: Any, state: Any, improved: bool) -> None:
        write_metrics(run.out, state.history)


class Plots(Callback):
    """The loss and mIoU curves, redrawn each epoch."""

    name = "plots"

    def on_epoch_complete(self, run: Any, state: Any, improved: bool) -> None:
        write_plots(run.out, state.history)


class TensorBoard(Callback):
    """SCALARS of each epoch in OUT/tb (a new event file per run or resume); nothing where TensorBoard is missing."""

    name = "tensorboard"

    def __init__(self) -> None:
        self.writer: Optional[Any] = None
        self.tried = False

    def _open(self, out: Path) -> Optional[Any]:
        if not self.tried:
            self.tried = True
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard is optional
                return None
            self.writer = SummaryWriter(str(out / "tb"))
        return self.writer

    def on_epoch_complete(self, run: Any, state: Any, improved: bool) -> None:
        writer = self._open(run.out)
        if writer is None:
            return
        record = state.history[-1]
        for k in SCALARS:
            if record.get(k) is not None:
                writer.add_scalar(k, record[k], state.epoch)

    def on_end(self, run: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.tried = False


@register_callback("checkpoints", "last.pth every epoch and at a stop, best.pth on a better selection mIoU, epoch_NNNN.pth every keep_every epochs")
def _checkpoints(cfg: Any, device: torch.device, log) -> Checkpoints:
    return Checkpoints(getattr(cfg, "keep_every", 0))


@register_callback("metrics", "metrics.jsonl and metrics.csv, rewritten at each epoch's end")
def _metrics(cfg: Any, device: torch.device, log) -> Metrics:
    return Metrics()


@register_callback("plots", "loss.png and miou.png, the run's curves")
def _plots(cfg: Any, device: torch.device, log) -> Plots:
    return Plots()


@register_callback("tensorboard", "TensorBoard scalars in OUT/tb, where TensorBoard is installed")
def _tensorboard(cfg: Any, device: torch.device, log) -> TensorBoard:
    return TensorBoard()
