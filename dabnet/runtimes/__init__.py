"""Runtimes: one module per way of running a network, each giving a callable `NCHW tensor -> fp32 logits`.

- `eager`, `fold`, `compile` (runtimes.pytorch): PyTorch as trained, with BatchNorm folded, or compiled.
- `int8` (runtimes.int8): static int8 quantization (torchao PT2E), calibrated on batches you pass.
- `onnxruntime` (runtimes.onnx): the ONNX export run by ONNX Runtime.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional

import torch
from torch import nn

from ..precision import PRECISIONS, cpu_has_bf16  # noqa: F401  (part of this layer's interface)
from .pytorch import fold_batchnorm, torch_runner

BACKENDS: List[str] = ["eager", "fold", "compile", "int8", "onnxruntime"]


def prepare(
    model: nn.Module,
    backend: str = "eager",
    precision: str = "fp32",
    device: str = "cpu",
    channels_last: Optional[bool] = None,
    calibration: Optional[Iterable[torch.Tensor]] = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable that runs `model` (eval mode) with `backend` and returns fp32 logits. `calibration`
    (normalised NCHW train batches) is what the int8 backend quantizes with."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    if backend in ("int8", "onnxruntime"):
        if precision != "fp32" or torch.device(device).type != "cpu":
            raise ValueError(f"the {backend} backend runs on the CPU and takes fp32 input (leave precision at fp32)")
        if backend == "onnxruntime":
            from .onnx import onnx_runner

            return onnx_runner(model.eval())
        if calibration is None:
            raise ValueError("the int8 backend needs calibration batches (normalised training images)")
        from .int8 import int8_runner

        return int8_runner(model.eval().cpu(), calibration)
    return torch_runner(model, backend, precision, device, channels_last)


__all__ = ["BACKENDS", "PRECISIONS", "cpu_has_bf16", "fold_batchnorm", "prepare"]
