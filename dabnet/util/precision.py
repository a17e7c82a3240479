"""Numeric precision of a forward pass: fp32, or bf16/fp16 autocast; one helper for training and inference."""

from __future__ import annotations

import contextlib
from typing import List, Union

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
        raise ValueError("fp16 runs on CUDA only; on a CPU use fp32 or bf16 (see docs/reports/SPEED.md)")


def autocast(device: Union[str, torch.device], precision: str = "fp32"):
    """bf16/fp16 autocast on `device`, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    check_precision(precision, device)
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision])
