"""Runtimes: each way of running a network is one module that registers a `Runtime` (runtimes.registry), giving
a callable `NCHW tensor -> fp32 logits`; `prepare` runs any of them, `auto` picks one per device.

- `eager`, `fold`, `compile` (runtimes.pytorch): PyTorch as trained, with BatchNorm folded, or compiled.
- `torchscript` (runtimes.torchscript): the traced network; exports .pt files.
- `int8` (runtimes.int8): static int8 quantization (torchao PT2E), calibrated on batches you pass.
- `onnxruntime` (runtimes.onnx): the ONNX export run by ONNX Runtime; runs .onnx files.
- `openvino` (runtimes.openvino): OpenVINO's CPU plugin in fp32, bf16 or int8 (NNCF); runs .xml IR.
- `auto`: the fastest accurate one for the device, chosen by `choose_auto`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..util.metrics import labels_from_logits
from ..util.precision import PRECISIONS
from ..util.hardware import cpu_flags, cpu_has_bf16
from ..io.preprocessing import Normalize, edge_pad_images, pad_to_min_side
# One import per runtime module: importing it registers its runtimes, in this order.
from . import pytorch, torchscript, int8, onnx, openvino  # noqa: F401  isort: skip
from .pytorch import fold_batchnorm
from .registry import (
    AUTO,
    Runtime,
    backend_help,
    backend_names,
    export_formats,
    exported_suffixes,
    get_runtime,
    list_runtimes,
    register_runtime,
    runtime_for_export,
    runtime_for_file,
    runtimes_table,
)


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
    first/last convolutions in float keeps the labels of fp32: docs/SPEED.md has the figures), else in
    bf16 where the CPU has it natively, else fp32; PyTorch with BatchNorm folded when OpenVINO is missing."""
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


def resolve_device(device: str, backend: str = AUTO, source: Optional[str] = None) -> str:
    """The one device rule of every command: `auto` is the GPU when there is one and the backend (or the
    runtime an exported `source` file names) runs there, else the CPU; an explicit device is kept as given
    (and a backend that cannot run there says so when it is prepared)."""
    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    if source is not None and runtime_for_file(source) is not None:  # an exported file runs where its runtime runs
        return "cuda" if "cuda" in runtime_for_file(source).devices else "cpu"
    if backend == AUTO:
        return "cuda"
    return "cuda" if "cuda" in get_runtime(backend).devices else "cpu"


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
    if backend == AUTO:
        backend, precision, _ = choose_auto(device)
    runtime = get_runtime(backend)
    precision = runtime.precision_for(precision)
    runtime.check_device(device)
    if precision in runtime.calibrated and not calibration:
        raise ValueError(f"the {backend} backend in {precision} needs calibration batches (normalised training images)")
    return runtime.prepare(model.eval(), precision=precision, device=str(device), channels_last=channels_last,
                           calibration=list(calibration) if calibration is not None else None)  # fmt: skip


def load_exported(path, precision: str = "fp32", device: str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """A runner for an exported file (by its suffix), which carries its own description (`checkpoint_meta`), on
    `device` (a runtime that declares a GPU takes it as a third argument; the others run on the CPU)."""
    runtime = runtime_for_file(path)
    if runtime is None:
        raise ValueError(f"{path} is no exported model this installation runs (those end in {', '.join(exported_suffixes())})")
    runtime.check_device(device)
    precision = runtime.precision_for(precision)
    return runtime.load(Path(path), precision) if torch.device(device).type == "cpu" else runtime.load(Path(path), precision, device)


def predict_labels(runner: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """NxHxW class indices from a runner: its own `labels` where it has one (OpenVINO's, from the logits
    before the last upsampling), else the arg-max of its logits."""
    h, w = x.shape[-2:]
    x = pad_to_min_side(x)  # a 1x1 image runs on every backend, and the same way on each
    own = getattr(runner, "labels", None)
    labels = own(x) if own is not None else labels_from_logits(runner(x))
    return labels[..., :h, :w]


def predict_image_labels(runner: Callable[[torch.Tensor], torch.Tensor], images: Sequence[np.ndarray], normalize: Normalize) -> torch.Tensor:
    """NxHxW class indices of same-size HxWx3 RGB uint8 `images`: the runner's own `image_labels` where it has
    one (OpenVINO converts and normalises inside the graph), else `predict_labels` on `normalize(images)`."""
    own = getattr(runner, "image_labels", None)
    if own is None:
        return predict_labels(runner, normalize(images))
    images = np.stack(images)
    h, w = images.shape[1:3]
    return torch.from_numpy(own(edge_pad_images(images), normalize.mean, normalize.std))[..., :h, :w]


__all__ = ["AUTO", "PRECISIONS", "Runtime", "backend_help", "backend_names", "choose_auto", "cpu_has_bf16", "export_formats", "exported_suffixes",
           "fold_batchnorm", "get_runtime", "list_runtimes", "load_exported", "predict_image_labels", "predict_labels", "prepare", "register_runtime",
           "runtime_for_export", "runtime_for_file", "runtimes_table"]
