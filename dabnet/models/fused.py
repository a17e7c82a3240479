"""Training kernels: BatchNorm + PReLU, and a depth-wise line convolution before them, compiled into one.

In eager PyTorch on a CPU these are most of a DABNet training step: PReLU's backward kernel is not
vectorised over its channel weight, BatchNorm and PReLU each read and write the whole activation, and
oneDNN's depth-wise convolution backward is slow (and, in bf16 with channels_last and a dilation, wrong:
docs/reports/TRAIN_SPEED.md). torch.compile turns each (depth-wise conv,) BatchNorm, PReLU group into a pass for
the statistics and one for the output, and its backward into two passes. The parameters and buffers are
the modules' own, so names, checkpoints and exports are unchanged; evaluation and export run the plain
modules. Where no kernel can be compiled (no C++ compiler, say) the first call warns once and every
later one runs the eager layers.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..util.compiler import usable_compile_cache

_compiled: Dict[Callable, Callable] = {}
_broken: Optional[str] = None  # why compiling failed, once it has


def depthwise_line_conv(x: torch.Tensor, weight: torch.Tensor, dim: int, dilation: int) -> torch.Tensor:
    """A stride-1 depth-wise convolution whose kernel is a line (k x 1 when dim=2, 1 x k when dim=3), zero
    "same" padding, as k shifted multiply-adds: elementwise work that a compiler fuses with what follows."""
    k, size = weight.shape[dim], x.shape[dim]
    half = (k - 1) // 2 * dilation
    xp = F.pad(x, (0, 0, half, half) if dim == 2 else (half, half))
    w = weight.view(1, weight.shape[0], k, 1) if dim == 2 else weight.view(1, weight.shape[0], 1, k)
    out = xp.narrow(dim, 0, size) * w.narrow(dim, 0, 1)
    for i in range(1, k):
        out = out + xp.narrow(dim, i * dilation, size) * w.narrow(dim, i, 1)
    return out


def _bn_prelu_train(x, running_mean, running_var, bn_weight, bn_bias, prelu_weight, momentum: float, eps: float):
    return F.prelu(F.batch_norm(x, running_mean, running_var, bn_weight, bn_bias, True, momentum, eps), prelu_weight)


def _line_bn_prelu_train(x, conv_weight, dim: int, dilation: int, running_mean, running_var, bn_weight, bn_bias,
                         prelu_weight, momentum: float, eps: float):  # fmt: skip
    y = depthwise_line_conv(x, conv_weight, dim, dilation)
    return _bn_prelu_train(y, running_mean, running_var, bn_weight, bn_bias, prelu_weight, momentum, eps)


def fusable(bn: nn.Module, act: nn.Module) -> bool:
    """True for a plain BatchNorm2d (affine, running statistics kept, not SyncBatchNorm) and a PReLU."""
    return type(bn) is nn.BatchNorm2d and bn.track_running_stats and bn.affine and isinstance(act, nn.PReLU)


def line_dim(conv: nn.Module) -> Optional[int]:
    """2 or 3 for a bias-free, stride-1, "same"-padded depth-wise conv with a k x 1 or 1 x k kernel (odd k), else None."""
    if type(conv) is not nn.Conv2d or conv.bias is not None or conv.stride != (1, 1) or conv.padding_mode != "zeros":
        return None
    if not conv.groups == conv.in_channels == conv.out_channels:
        return None
    kh, kw = conv.kernel_size
    dim = 2 if kw == 1 and kh > 1 else 3 if kh == 1 and kw > 1 else None
    if dim is None or conv.kernel_size[dim - 2] % 2 == 0 or conv.dilation[3 - dim] != 1:  # the other axis undilated
        return None
    same = (conv.kernel_size[dim - 2] - 1) // 2 * conv.dilation[dim - 2]
    return dim if conv.padding == ((same, 0) if dim == 2 else (0, same)) else None


def _active(fused: bool, bn: nn.Module, act: nn.Module) -> bool:
    return fused and bn.training and torch.is_grad_enabled() and _broken is None and fusable(bn, act)


def run_compiled(fn: Callable, *args) -> Optional[torch.Tensor]:
    """`fn(*args)` on its compiled kernel, or None where kernels cannot be compiled (warned once, then never tried)."""
    global _broken
    if _broken is not None:
        return None
    if fn not in _compiled:
        usable_compile_cache()  # torch.compile fails at its import where TORCHINDUCTOR_CACHE_DIR cannot be written
        _compiled[fn] = torch.compile(fn, dynamic=True)
    try:
        return _compiled[fn](*args)
    except Exception as e:  # dynamo's and inductor's failures share no base class; they raise before running
        _broken = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        warnings.warn(f"the fused training kernels could not be compiled ({_broken}); training runs the eager "
                      "layers (slower, same numbers). Set fused=false to silence this.", stacklevel=3)  # fmt: skip
        return None


def _call(fn: Callable, x: torch.Tensor, bn: nn.Module, act: nn.Module, *args) -> Optional[torch.Tensor]:
    """`fn(x, *args, BatchNorm's buffers and parameters, PReLU's weight, momentum, eps)` compiled, counting the
    BatchNorm step as its own forward would; None where it cannot be compiled."""
    # nn.BatchNorm2d's own factor: its momentum, or a cumulative average when momentum is None.
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked + 1)
    # Parameters go in as views: torch.compile keeps a parameter's shape static, and through it the channel
    # count, which would compile one kernel per layer width instead of one for all.
    params = [p.view(p.shape) for p in (bn.weight, bn.bias, act.weight)]
    out = run_compiled(fn, x, *args, bn.running_mean, bn.running_var, *params, momentum, bn.eps)
    if out is not None:
        bn.num_batches_tracked.add_(1)
    return out


def bn_prelu(x: torch.Tensor, bn: nn.Module, act: nn.Module, fused: bool) -> torch.Tensor:
    """`act(bn(x))`, on the compiled kernel when `fused` and training with gradients."""
    out = _call(_bn_prelu_train, x, bn, act) if _active(fused, bn, act) else None
    return act(bn(x)) if out is None else out


def conv_bn_prelu(x: torch.Tensor, conv: nn.Module, bn: nn.Module, act: nn.Module, fused: bool) -> torch.Tensor:
    """`act(bn(conv(x)))`; when fused, a depth-wise line convolution joins the compiled kernel, any other stays eager."""
    dim = line_dim(conv) if _active(fused, bn, act) else None
    if dim is None:
        return bn_prelu(conv(x), bn, act, fused)
    weight = conv.weight
    if torch.is_autocast_enabled(x.device.type):  # as autocast would run the convolution
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
    out = _call(_line_bn_prelu_train, x, bn, act, weight.view(weight.shape), dim, conv.dilation[dim - 2])
    return bn_prelu(conv(x), bn, act, fused) if out is None else out


@functools.lru_cache(maxsize=32)
def _bilinear_matrix(out_size: int, in_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (out_size, in_size) matrix of 1-D bilinear interpolation with align_corners=False (half-pixel
    centres, clamped at the borders), as F.interpolate computes it."""
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = src - lo
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(device=device, dtype=dtype)


def resize_bilinear(x: torch.Tensor, size: Tuple[int, int], fused: bool = False) -> torch.Tensor:
    """F.interpolate(bilinear, align_corners=False) of NCHW `x` to `size`; when `fused` and training with
    gradients, as two matrix products (columns, then rows): the same sums, and a backward that is two
    matrix products too instead of a scatter over the output."""
    if not (fused and torch.is_grad_enabled()):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if torch.is_autocast_enabled(x.device.type):  # interpolate runs in the input's dtype under autocast too
        x = x.to(torch.get_autocast_dtype(x.device.type)) if x.dtype == torch.float32 else x
    rows = _bilinear_matrix(int(size[0]), x.shape[2], x.dtype, x.device)
    cols = _bilinear_matrix(int(size[1]), x.shape[3], x.dtype, x.device)
    with torch.autocast(x.device.type, enabled=False):  # already in the dtype wanted; no casts back and forth
        return torch.matmul(rows, torch.matmul(x, cols.t()))


def fused_status() -> Optional[str]:
    """None while the fused kernels work (or have not been tried), else why they could not be compiled."""
    return _broken


def set_fused(model: nn.Module, enabled: bool = True) -> int:
    """Turn the fused training kernels on or off in every layer that has them; returns how many layers."""
    count = 0
    for m in model.modules():
        if hasattr(m, "fused"):
            m.fused = enabled
            count += 1
    return count
