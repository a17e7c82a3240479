"""Inference backends: one callable `tensor -> logits` per way of running a network.

- `eager`: the network as trained (fp32, or bf16 autocast with precision="bf16").
- `fold`: BatchNorm folded into the convolution before it (eval-mode algebra, same outputs).
- `compile`: `torch.compile` with inductor freezing (weights treated as constants) on the folded net.
- `onnxruntime`: the ONNX export run by ONNX Runtime (CPU).
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import warnings
from pathlib import Path
from typing import Callable, List

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

BACKENDS: List[str] = ["eager", "fold", "compile", "onnxruntime"]
PRECISIONS: List[str] = ["fp32", "bf16"]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in which every Conv2d directly followed by a BatchNorm2d (inside one
    Sequential) absorbs it; the BatchNorm becomes an Identity. Eval-mode outputs are unchanged."""
    folded = copy.deepcopy(model).eval()
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return folded


def cpu_has_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX); without them
    bf16 autocast is emulated and many times slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _precision_context(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    return contextlib.nullcontext()


def prepare(
    model: nn.Module, backend: str = "eager", precision: str = "fp32", device: str = "cpu", check_export: bool = True
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable that runs `model` (eval mode) with `backend` and returns fp32 logits."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    dev = torch.device(device)
    model = model.eval().to(dev)
    if precision == "bf16" and dev.type == "cpu" and not cpu_has_bf16():
        warnings.warn(
            f"bf16 on a CPU without bf16 hardware ({torch.backends.cpu.get_cpu_capability()}) is emulated and far "
            "slower than fp32; use precision='fp32' here", stacklevel=2,
        )
    if backend == "onnxruntime":
        if precision != "fp32":
            raise ValueError("the onnxruntime backend runs fp32 only")
        from .export import OrtModel, export_onnx

        path = Path(tempfile.mkdtemp(prefix="dabnet-ort-")) / "model.onnx"
        export_onnx(model.cpu(), path, check=check_export)
        return OrtModel(path)
    net = model if backend == "eager" else fold_batchnorm(model)
    if backend == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # fold weights as constants: conv+bn/bias fusion, no weight copies
        net = torch.compile(net)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _precision_context(precision, dev):
            return net(x.to(dev)).float()

    return run
