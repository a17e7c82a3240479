"""`dabnet average`: the weights of checkpoints of one network (e.g. a run's last epochs) averaged into one."""

from __future__ import annotations

from ..config import AverageConfig


def average_command(cfg: AverageConfig) -> int:
    """Write the average of `cfg.checkpoints` to `cfg.out` (never over one of them) and say how to measure it."""
    from ..io.checkpoint import average_checkpoints, save_checkpoint
    from ..util.files import check_output_file

    check_output_file(cfg.out, "--out", cfg.checkpoints)
    ckpt = average_checkpoints(cfg.checkpoints)
    epochs = ", ".join(str(c["epoch"]) for c in ckpt["averaged_from"])
    save_checkpoint(ckpt, cfg.out)
    print(f"averaged {len(cfg.checkpoints)} checkpoints (epochs {epochs}) -> {cfg.out}; "
          f"measure it with: dabnet eval --checkpoint {cfg.out}")  # fmt: skip
    return 0
