"""A run folder and where a run continues from: the folder's lock (one `train` per folder), --restart's moving aside
of the previous run, the checkpoint a resume starts from, the settings it may not change, and the RNG state an
exact resume restores."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from ..io.checkpoint import CheckpointError, read_checkpoint
from ..util import distributed as D
from ..util.files import check_output_folder
from ..util.options import ConfigError

RUN_FILES = ("last.pth", "best.pth", "epoch_*.pth", "config.yaml", "metrics.jsonl", "metrics.csv", "loss.png", "miou.png")

# Settings a run cannot change midway (its weights, optimiser state or data order depend on them), and settings
# that change nothing a resume restores.
FIXED_ON_RESUME = ("dataset", "train_split", "holdout", "model", "model_kwargs", "batch_size", "optimizer", "seed")
FREE_ON_RESUME = ("data_root", "workers", "check_data", "val_batch_size", "log_every", "out", "device", "init_from", "distill_cache")


def rng_state(device: torch.device) -> Dict[str, Any]:
    """The generators' state a checkpoint keeps (the CPU's, and the GPU's on CUDA)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state()`'s output."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_point(cfg: Any, resume: Optional[str], restart: bool) -> Optional[Dict[str, Any]]:
    """The checkpoint to continue from: --resume, else OUT/last.pth unless --restart."""
    last = Path(cfg.out) / "last.pth"
    path = resume or (last if last.exists() and not restart else None)
    ckpt = read_checkpoint(path) if path else None
    if ckpt is not None and (ckpt.get("format") is None or ckpt.get("optimizer") is None):
        raise CheckpointError(f"{path} is not a dabnet training checkpoint: it holds weights without the optimiser and schedule "
                              f"a resume needs; to start a run from these weights use --set init_from={path}")  # fmt: skip
    return ckpt


def check_resume_config(saved: Dict[str, Any], cfg: Any, path: str, log: Callable[..., None]) -> None:
    """Refuse a resume that changes what the checkpoint is (model, data, batch); name every other change."""
    now = dataclasses.asdict(cfg)
    changed = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k] and k not in FREE_ON_RESUME}
    fixed = [f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items() if k in FIXED_ON_RESUME]
    if fixed:
        raise CheckpointError(f"cannot resume {path} with a different {', '.join(fixed)}. Use --restart to start over "
                              "in this folder (the old run's files are moved aside), another --out, or the run's own "
                              "settings (its config.yaml)")  # fmt: skip
    if changed:
        log("resuming with changed settings, applied from here on: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            + (" (the poly schedule is recomputed over the new epochs: the lr jumps to where it stands there)" if "epochs" in changed else ""))


def claim_out(cfg: Any, restart: bool, log: Callable[..., None]) -> Any:
    """Lock OUT for this run (a second `train` on it stops at once instead of overwriting its files) and, on
    --restart, move the previous run's files into OUT/previous-TIMESTAMP/ so that nothing of it is lost and no
    later `dabnet average OUT/epoch_*.pth` mixes two runs. Returns the open lock file; closing it unlocks."""
    import fcntl

    out = check_output_folder(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ConfigError(f"{out} is in use by another `dabnet train` ({holder}); wait for it to end, or use another --out") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    previous = sorted({p for pattern in RUN_FILES for p in out.glob(pattern)})
    if restart and previous:
        aside = out / time.strftime("previous-%Y%m%d-%H%M%S")
        aside.mkdir()
        for p in previous:
            p.rename(aside / p.name)
        log(f"--restart: moved the previous run's {len(previous)} file(s) to {aside}")
    return lock


def same_resume_point(cfg: Any, ckpt: Optional[Dict[str, Any]], resume: Optional[str]) -> None:
    """Stop every rank with the same one-line error unless all of them resume from the same point: each reads the
    run folder on its own machine, and a rank that starts afresh beside ranks that resume trains other steps."""
    import socket

    point = None if ckpt is None else (ckpt.get("epoch"), ckpt.get("iteration"))
    seen = D.gather_object((point, socket.gethostname(), str(resume or Path(cfg.out) / "last.pth")))
    other = next((r for r, s in enumerate(seen) if s[0] != seen[0][0]), None)
    if other is not None:
        (p0, host0, path0), (p, host, path) = seen[0], seen[other]
        finds = lambda p: "no checkpoint" if p is None else f"one at epoch {p[0]}, iteration {p[1]}"  # noqa: E731
        raise CheckpointError(f"cannot resume: rank 0 (on {host0}) finds {finds(p0)} in {path0}, rank {other} (on {host}) finds "
                              f"{finds(p)}{'' if path == path0 else ' in ' + path}; every machine must see the same run "
                              "folder: put --out on a filesystem they all share")  # fmt: skip
