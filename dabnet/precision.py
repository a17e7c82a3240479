"""Numeric precision of a forward pass: fp32, or bf16/fp16 autocast; one helper for training and inference."""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any, Dict, List, Union

import torch

PRECISIONS: List[str] = ["fp32", "bf16", "fp16", "int8"]  # int8: the openvino backend (the int8 backend implies it)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: Union[str, torch.device]) -> None:
    """A clear error for an unknown precision, or fp16 where only CUDA has it."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "int8":
        raise ValueError("int8 is not an autocast precision: use --backend openvino --precision int8 (or --backend int8)")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("fp16 runs on CUDA only; on a CPU use fp32 or bf16 (see docs/SPEED.md)")


def autocast(device: Union[str, torch.device], precision: str = "fp32"):
    """bf16/fp16 autocast on `device`, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    check_precision(precision, device)
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision])


def cpu_has_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX); without them
    bf16 autocast is emulated and many times slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def isa_caps() -> Dict[str, str]:
    """The instruction-set caps set on oneDNN and ATen through their environment variables (how a smaller CPU is
    emulated): with them, the CPU's flags overstate what runs."""
    return {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)}


def cpu_flags() -> Dict[str, Any]:
    """The CPU's model and the instruction sets that decide the fastest path (x86 flags from /proc/cpuinfo)."""
    model, present = "", []
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
        present = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"model": model or platform.processor() or platform.machine(), "flags": [f for f in wanted if f in present],
            "capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip
