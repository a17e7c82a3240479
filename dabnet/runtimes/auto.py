"""The `auto` policy, in one place: which runtime and precision run a network fastest and accurately on a device
(`choose_auto`), which device `auto` means (`resolve_device`), and the runner it makes, with int8 kept only where
it agrees with fp32 and PyTorch with BatchNorm folded when the chosen runtime cannot run (`prepare_auto`).
predict, eval, serve, bench and `Segmenter` all go through it."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..io.preprocessing import Normalize
from ..util.hardware import cpu_flags, cpu_has_bf16
from .prepare import Calibration, prepare
from .registry import AUTO, get_runtime, runtime_for_file
from .runner import Runner, predict_image_labels

MIN_INT8_AGREEMENT = 0.985  # int8 is kept only above this label agreement with fp32 (calibration frames)


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
    first/last convolutions in float keeps the labels of fp32: docs/reports/SPEED.md has the figures), else in
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


def prepare_auto(model: nn.Module, device: str, normalize: Normalize, calibration: Calibration = None) -> Runner:
    """The runner `auto` picks for `model` on `device`: `choose_auto`'s, int8 only where it agrees with fp32 on the
    calibration frames (`MIN_INT8_AGREEMENT`), and PyTorch with BatchNorm folded when the chosen runtime cannot
    run this model. It has run once on a blank frame normalised by `normalize` (what predict compiles), and its
    `reason` says why it was chosen."""
    backend, precision, why = choose_auto(str(device))
    try:
        runner = prepare(model, backend, precision, str(device), calibration=calibration)
        agreement = runner.info.get("agreement")
        if precision == "int8" and agreement is not None and agreement < MIN_INT8_AGREEMENT:
            precision = "bf16" if cpu_has_bf16() else "fp32"
            why = f"int8 agreed with fp32 on only {100 * agreement:.1f}% of the calibration pixels, so {precision}"
            runner = prepare(model, backend, precision, str(device))
        predict_image_labels(runner, [np.zeros((64, 64, 3), np.uint8)], normalize)  # a failure to compile falls back here
    except (ImportError, RuntimeError, ValueError) as e:
        failed = get_runtime(backend).label_for(precision)
        runner = prepare(model, "fold", "fp32", str(device))
        why = f"{failed} could not run this model ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    runner.reason = why
    return runner
