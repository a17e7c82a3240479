"""`dabnet train` from the command line: the run's config made from `--config` and `--set`, its files checked, the
run started or resumed, and the exit status (128 + the signal's number for a run a signal stopped)."""

from __future__ import annotations

from ..config import TrainCommand, TrainConfig, build_config, check_io


def train_command(cmd: TrainCommand) -> int:
    """Train as `cmd` says; 0 when the run ends, 128 + N when signal N stopped it (its last checkpoint is kept)."""
    from .train import train

    cfg = build_config(TrainConfig, cmd.config, cmd.set or [], out=cmd.out)
    check_io(cfg)  # the config's own files (data_root, init_from, distill_cache), as main checked the command's
    summary = train(cfg, resume=cmd.resume, restart=cmd.restart)
    if "interrupted" in summary:
        import signal

        return 128 + int(getattr(signal, summary["interrupted"]))
    return 0
