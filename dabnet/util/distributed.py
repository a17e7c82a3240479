"""Distributed helpers that also work in a single plain process (no process group)."""

from __future__ import annotations

import os
from typing import Tuple

import torch
import torch.distributed as dist

_CREATED = False  # whether init_distributed made the process group (and so cleanup ends it)


def is_dist() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """Only rank 0 writes files and prints progress."""
    return rank() == 0


def init_distributed(device: str = "auto") -> Tuple[torch.device, bool]:
    """Join the process group that `torchrun` describes (NCCL on GPU, gloo on CPU), if any."""
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if want_cuda:
            torch.cuda.set_device(local)
        if not is_dist():
            global _CREATED
            dist.init_process_group("nccl" if want_cuda else "gloo")
            _CREATED = True
        return (torch.device("cuda", local) if want_cuda else torch.device("cpu")), True
    if want_cuda:
        return torch.device(device if device.startswith("cuda") else "cuda"), False
    return torch.device("cpu"), False


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (a no-op outside DDP)."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any (outside DDP: `flag`). Ranks that decide alone to stop, or
    to raise, leave the others blocked in the next all-reduce until the backend's timeout."""
    if not is_dist():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    """Tear down the process group init_distributed made (one the caller made is the caller's to end)."""
    global _CREATED
    if _CREATED and is_dist():
        dist.destroy_process_group()
    _CREATED = False
