"""Distributed helpers that also work in a single plain process (no process group)."""

from __future__ import annotations

import os
from typing import Tuple

import torch
import torch.distributed as dist


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
            dist.init_process_group("nccl" if want_cuda else "gloo")
        return (torch.device("cuda", local) if want_cuda else torch.device("cpu")), True
    if want_cuda:
        return torch.device(device if device.startswith("cuda") else "cuda"), False
    return torch.device("cpu"), False


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (a no-op outside DDP)."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def describe_hardware(device: torch.device) -> str:
    """The machine a run trains on, for logs and model cards: GPU name, or CPU model, ISA level and threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{world_size()}"
    model, flags = "", []
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
        present = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
        flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in present]
    except OSError:
        pass
    import platform

    name = model or platform.processor() or platform.machine()
    return f"{name} ({' '.join(flags) or torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads x{world_size()}"
