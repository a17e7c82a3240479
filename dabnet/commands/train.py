"""`dabnet train`: the command's options made into a TrainConfig, and the run handed to `dabnet.training.run.train`
(also `dabnet.train`, for training from Python)."""

from __future__ import annotations

import signal

from ..config import TrainCommand, TrainConfig, build_config, check_io
from ..training.run import train

__all__ = ["run_train", "train"]


def run_train(cmd: TrainCommand) -> int:
    """Train as the command line says; the exit status (128 + the signal's number after a stop by SIGINT/SIGTERM)."""
    cfg = build_config(TrainConfig, cmd.config, cmd.set or [], out=cmd.out)
    check_io(cfg)  # the config's own files (data_root, init_from, distill_cache), as main checked the command's
    summary = train(cfg, resume=cmd.resume, restart=cmd.restart)
    if "interrupted" in summary:
        return 128 + int(getattr(signal, summary["interrupted"]))
    return 0
