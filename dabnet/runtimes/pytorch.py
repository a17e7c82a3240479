"""PyTorch runtimes: `eager` (the network as trained), `fold` (BatchNorm folded into the convolution
before it: eval-mode algebra, same outputs, faster) and `compile` (`torch.compile` with inductor
freezing on the folded net; on CUDA with CUDA graphs). channels_last on CUDA; cudnn.benchmark is left to
the callers whose input sizes are fixed (bench, training), since predict and serve take any size."""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from typing import Callable, ContextManager, Optional

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..util.compiler import usable_compile_cache
from ..util.hardware import cpu_has_bf16
from ..util.precision import PRECISIONS, autocast, check_precision
from ..util.state import shared_setting
from .registry import Runtime, register_runtime
from .runner import FunctionRunner, Runner


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


def torch_runner(
    model: nn.Module, backend: str = "eager", precision: str = "fp32", device: str = "cpu", channels_last: Optional[bool] = None
) -> Runner:
    """A runner `NCHW tensor -> fp32 logits` for backend eager, fold or compile;
    `channels_last=None` means NHWC on CUDA (tensor cores want it) and NCHW on a CPU."""
    dev = torch.device(device)
    check_precision(precision, dev)
    if precision == "bf16" and dev.type == "cpu" and not cpu_has_bf16():
        warnings.warn(
            f"bf16 on a CPU without bf16 hardware ({torch.backends.cpu.get_cpu_capability()}) is emulated and far "
            "slower than fp32; use precision='fp32' here", stacklevel=3,
        )  # fmt: skip
    model = model.eval().to(dev)
    net = model if backend == "eager" else fold_batchnorm(model)
    if channels_last is None:
        channels_last = dev.type == "cuda"
    if channels_last:  # on a copy: the caller's model keeps its layout
        net = (copy.deepcopy(net) if net is model else net).to(memory_format=torch.channels_last)
    scope: Callable[[], ContextManager] = contextlib.nullcontext
    if backend == "compile":
        usable_compile_cache()  # importing inductor fails where TORCHINDUCTOR_CACHE_DIR cannot be written
        import torch._inductor.config as inductor_config

        # Freezing folds the weights as constants (conv+bn/bias fusion, no weight copies). Dynamo and inductor read it
        # when a call compiles (the first, and each new size): set around each call, not left set for the process.
        scope = functools.partial(shared_setting, inductor_config, "freezing", True)
        net = torch.compile(net, mode="reduce-overhead" if dev.type == "cuda" else None)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    graphs = backend == "compile" and dev.type == "cuda"

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(dev, precision), scope():
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
                return net(x.to(dev, memory_format=fmt)).float().clone()  # the graph's output buffer is reused
            return net(x.to(dev, memory_format=fmt)).float()

    return FunctionRunner(run)


def _registered(backend: str, summary: str) -> Runtime:
    def prepare(model: nn.Module, precision: str = "fp32", device: str = "cpu", channels_last: Optional[bool] = None,
                calibration=None) -> Runner:  # fmt: skip
        return torch_runner(model, backend, precision, device, channels_last)

    floats = tuple(p for p in PRECISIONS if p != "int8")
    return register_runtime(Runtime(backend, summary, prepare, precisions=floats, devices=("cpu", "cuda"), channels_last=True))


_registered("eager", "PyTorch as trained")
_registered("fold", "PyTorch with BatchNorm folded into the convolutions (same outputs, faster)")
_registered("compile", "torch.compile of the folded network (CUDA graphs on a GPU)")
