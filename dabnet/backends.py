"""Inference backends: one callable `tensor -> logits` per way of running a network.

- `eager`: the network as trained (fp32, or bf16 autocast with precision="bf16").
- `fold`: BatchNorm folded into the convolution before it (eval-mode algebra, same outputs).
- `compile`: `torch.compile` with inductor freezing (weights treated as constants) on the folded net;
  on CUDA with `mode="reduce-overhead"` (CUDA graphs: one launch per frame).
- `int8`: static int8 quantization (PT2E, X86 inductor quantizer, calibrated on train frames),
  compiled by inductor; PReLU and upsampling stay in float (CPU only, needs torchao).
- `onnxruntime`: the ONNX export run by ONNX Runtime (CPU).

`channels_last` (NHWC tensors; default on CUDA, off on a CPU) applies to eager, fold and compile.
On CUDA these run with `cudnn.benchmark`; `precision` fp16/bf16 is autocast.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

BACKENDS: List[str] = ["eager", "fold", "compile", "int8", "onnxruntime"]
PRECISIONS: List[str] = ["fp32", "bf16", "fp16"]


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
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    return contextlib.nullcontext()


def prepare(
    model: nn.Module,
    backend: str = "eager",
    precision: str = "fp32",
    device: str = "cpu",
    check_export: bool = True,
    channels_last: Optional[bool] = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable that runs `model` (eval mode) with `backend` and returns fp32 logits;
    `channels_last=None` means NHWC on CUDA (tensor cores want it) and NCHW on a CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    dev = torch.device(device)
    model = model.eval().to(dev)
    if precision == "bf16" and dev.type == "cpu" and not cpu_has_bf16():
        warnings.warn(
            f"bf16 on a CPU without bf16 hardware ({torch.backends.cpu.get_cpu_capability()}) is emulated and far "
            "slower than fp32; use precision='fp32' here", stacklevel=2,
        )
    if backend == "int8":
        if precision != "fp32" or dev.type != "cpu":
            raise ValueError("the int8 backend runs on the CPU and takes fp32 input (leave precision at fp32)")
        from .quantize import int8_runner

        return int8_runner(model)
    if backend == "onnxruntime":
        if precision != "fp32":
            raise ValueError("the onnxruntime backend runs fp32 only")
        from .export import OrtModel, export_onnx

        path = Path(tempfile.mkdtemp(prefix="dabnet-ort-")) / "model.onnx"
        export_onnx(model.cpu(), path, check=check_export)
        return OrtModel(path)
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 runs on CUDA only; on a CPU use fp32 (or int8 / bf16, see docs/SPEED.md)")
    net = model if backend == "eager" else fold_batchnorm(model)
    if channels_last is None:
        channels_last = dev.type == "cuda"
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest algorithms
    if channels_last:  # on a copy: the caller's model keeps its layout
        net = (copy.deepcopy(net) if net is model else net).to(memory_format=torch.channels_last)
    if backend == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # fold weights as constants: conv+bn/bias fusion, no weight copies
        net = torch.compile(net, mode="reduce-overhead" if dev.type == "cuda" else None)

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    graphs = backend == "compile" and dev.type == "cuda"

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _precision_context(precision, dev):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
                return net(x.to(dev, memory_format=fmt)).float().clone()  # the graph's output buffer is reused
            return net(x.to(dev, memory_format=fmt)).float()

    return run
