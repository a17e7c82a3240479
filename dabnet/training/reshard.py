"""A resume with another number of processes than the run's checkpoint had: its schedule recomputed for the new
number, and a position within an epoch carried over where the new number can reach it exactly, refused otherwise."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Optional

import torch

from ..io.checkpoint import CheckpointError, RunState


def saved_world_size(ckpt: Dict[str, Any]) -> Optional[int]:
    """How many processes trained `ckpt`: its `world_size`, or for a checkpoint from before that key the ' xN' of
    its hardware line (describe_hardware); None where neither says."""
    if ckpt.get("world_size") is not None:
        return int(ckpt["world_size"])
    m = re.search(r" x(\d+)(?:,|$)", str(ckpt.get("hardware") or ""))
    return int(m.group(1)) if m else None


def resume_step(saved: int, world: int, iter_in_epoch: int, fixed_shard: bool, path: str, epoch: int) -> int:
    """The step within the epoch at which `world` processes resume what `saved` processes left at `iter_in_epoch`.
    Every process draws its batches from one order of the epoch's images (seed + epoch), each rank taking every
    world-th of them, so after n steps of batch B the first n*B*saved images of that order are trained: `world`
    processes go on from the same image after n*saved/world steps, when that is a whole number. Otherwise, and
    for data_on_device's fixed shares (no common order), a CheckpointError names both sizes."""
    if saved == world or iter_in_epoch == 0:
        return iter_in_epoch
    if fixed_shard or (iter_in_epoch * saved) % world:
        why = ("data_on_device gives each process a fixed share of the images" if fixed_shard else
               f"its {iter_in_epoch} step(s) of {saved} process(es) do not divide among {world}")  # fmt: skip
        raise CheckpointError(f"cannot resume {path} mid-epoch (epoch {epoch + 1}, step {iter_in_epoch}) with {world} "
                              f"process(es): it was trained with {saved}, and {why}; resume with {saved} "
                              f"(torchrun --nproc_per_node={saved}); a run stopped at an epoch's end resumes with any number")  # fmt: skip
    return iter_in_epoch * saved // world


def reshard(state: RunState, ckpt: Dict[str, Any], world: int, iters_per_epoch: int, scheduler: torch.optim.lr_scheduler.LambdaLR,
            data_on_device: bool, path: str, log: Callable[..., None]) -> None:  # fmt: skip
    """Carry a resumed run over to `world` processes (nothing to do where the checkpoint had as many, or does not
    say): the epoch's position mapped (resume_step), and the schedule's position and learning rate set to where
    this run's schedule, over `iters_per_epoch` steps per epoch, stands there."""
    saved = saved_world_size(ckpt)
    if saved is None or saved == world:
        return
    # data_on_device under DDP shards by FixedShard, with no order common to all processes
    fixed_shard = (data_on_device and world > 1) or bool((ckpt.get("config") or {}).get("data_on_device") and saved > 1)
    step = resume_step(saved, world, state.iter_in_epoch, fixed_shard, path, state.epoch)
    old = scheduler.last_epoch
    state.iter_in_epoch = step
    state.iteration = scheduler.last_epoch = state.epoch * iters_per_epoch + step
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]  # what get_last_lr() reports
    log(f"resuming with {world} process(es) a run trained with {saved}: {iters_per_epoch} steps per epoch now; "
        f"epoch {state.epoch + 1} goes on at step {step}, the schedule at step {state.iteration} (was {old})")
