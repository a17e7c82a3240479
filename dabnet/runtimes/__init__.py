"""Runtimes: one module per way of running a network, each giving a callable `NCHW tensor -> fp32 logits`.

- `eager`, `fold`, `compile` (runtimes.pytorch): PyTorch as trained, with BatchNorm folded, or compiled.
- `int8` (runtimes.int8): static int8 quantization (torchao PT2E), calibrated on batches you pass.
- `onnxruntime` (runtimes.onnx): the ONNX export run by ONNX Runtime.
- `openvino` (runtimes.openvino): OpenVINO's CPU plugin in fp32, bf16 or int8 (NNCF).
- `auto`: the fastest accurate one for the device, chosen by `choose_auto`.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..metrics import labels_from_logits
from ..precision import PRECISIONS, cpu_flags, cpu_has_bf16
from ..preprocessing import pad_to_min_side
from .pytorch import fold_batchnorm, torch_runner

BACKENDS: List[str] = ["auto", "eager", "fold", "compile", "int8", "onnxruntime", "openvino"]


def _importable(name: str) -> bool:
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name] is not None  # None: an import known to fail
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def choose_auto(device: str = "cpu") -> Tuple[str, str, str]:
    """(backend, precision, why) of `auto`: on CUDA BatchNorm folding with fp16 autocast; on a CPU
    OpenVINO in int8 (x86 with AVX2 or better: int8 kernels beat float ones there, and NNCF with the
    first/last convolutions in float cost DABNet 0.14 point of CamVid val mIoU), else in bf16
    where the CPU has it natively, else fp32; PyTorch with BatchNorm folded when OpenVINO is missing."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return "fold", "fp16", f"CUDA device {torch.cuda.get_device_name(dev)}: BatchNorm folded, fp16 autocast, channels_last"
    if not _importable("openvino"):
        return "fold", "fp32", "OpenVINO is not installed (pip install openvino): PyTorch with BatchNorm folded"
    cpu = cpu_flags()
    flags = set(cpu["flags"])
    if _importable("nncf") and "avx2" in flags:
        kernels = "VNNI/AMX int8 dot products" if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} else "AVX2 int8 kernels"
        return "openvino", "int8", f"{cpu['model']} has {kernels}; first and last convolutions stay in float"
    if cpu_has_bf16():
        return "openvino", "bf16", f"{cpu['model']} has native bf16"
    return "openvino", "fp32", f"{cpu['model']}: no int8 path ({'NNCF missing' if 'avx2' in flags else 'no AVX2'}) and no native bf16"


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
    if backend == "auto":
        backend, precision, _ = choose_auto(device)
    if backend == "openvino":
        if torch.device(device).type != "cpu":
            raise ValueError("the openvino backend runs on the CPU (--device cpu)")
        from .openvino import openvino_runner

        return openvino_runner(model.eval(), precision, list(calibration) if calibration is not None else None)
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


def predict_labels(runner: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """NxHxW class indices from a runner: its own `labels` where it has one (OpenVINO computes the
    arg-max inside the graph), else the arg-max of its logits."""
    h, w = x.shape[-2:]
    x = pad_to_min_side(x)  # a 1x1 image runs on every backend, and the same way on each
    own = getattr(runner, "labels", None)
    labels = own(x) if own is not None else labels_from_logits(runner(x))
    return labels[..., :h, :w]


__all__ = ["BACKENDS", "PRECISIONS", "choose_auto", "cpu_has_bf16", "fold_batchnorm", "predict_labels", "prepare"]
