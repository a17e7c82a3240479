"""The `int8` runtime: static int8 post-training quantization for CPU inference (PT2E, X86 inductor quantizer).

The network, its BatchNorm folded away, is exported with dynamic batch, height and width, annotated by torchao's
`X86InductorQuantizer` (per-channel symmetric int8 weights, uint8 activations), calibrated on
training frames and compiled by inductor with freezing, which lowers the quantized convolutions to
oneDNN int8 kernels. Operators the quantizer does not annotate (PReLU, bilinear upsampling) stay in
float. Needs `pip install "dabnet[int8]"` (torchao).
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterable, List, Optional, Sequence

import torch
from torch import nn

from ..util.compiler import usable_compile_cache
from ..util.state import shared_setting
from .pytorch import fold_batchnorm
from .registry import Runtime, register_runtime
from .runner import FunctionRunner, Runner


def _torchao():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # torchao logs (at import) that its CUDA-only extensions cannot load on a CPU build
            previous = logging.root.manager.disable
            logging.disable(logging.WARNING)
            try:
                from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
                from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
            finally:
                logging.disable(previous)
    except ImportError as e:
        raise ImportError('the int8 backend needs torchao: pip install "dabnet[int8]" (or pip install torchao)') from e
    return prepare_pt2e, convert_pt2e, xiq


class _ChannelAffine(nn.Module):
    """An eval-mode BatchNorm2d as `x * scale + shift` per channel (same outputs, no batch_norm node in the graph)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        inv_std = torch.rsqrt(bn.running_var + bn.eps)
        scale = bn.weight.detach() * inv_std if bn.affine else inv_std
        shift = (bn.bias.detach() if bn.affine else 0) - bn.running_mean * scale
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)


def without_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval) with BatchNorm folded into the convolutions before it, and every other BatchNorm2d
    (after a concatenation, say) a per-channel affine. Why: torchao's convert_pt2e, when the graph still holds a
    batch_norm node, exports dozens of QAT conv-bn patterns to match against it, which is most of int8's set-up."""
    folded = fold_batchnorm(model)
    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d and child.track_running_stats:
                setattr(parent, name, _ChannelAffine(child))
    return folded


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor], keep_float: Sequence[str] = ()) -> nn.Module:
    """An int8 copy of `model` (eval mode, CPU) calibrated on normalised NCHW tensors.

    The result accepts any batch size and any height and width that are multiples of
    `model.size_multiple`; `keep_float` names submodules (e.g. "classifier") left in float.
    """
    prepare_pt2e, convert_pt2e, xiq = _torchao()
    batches = [c.float().cpu() for c in calibration]
    if not batches:
        raise ValueError("int8 calibration needs at least one image")
    m = int(getattr(model, "size_multiple", 8))
    h0, w0 = (max(2, s // m) for s in batches[0].shape[-2:])
    n = torch.export.Dim("batch", min=1, max=1024)
    h = torch.export.Dim("h", min=1, max=8192 // m)
    w = torch.export.Dim("w", min=1, max=8192 // m)
    example = torch.zeros(2, batches[0].shape[1], h0 * m, w0 * m)
    model = without_batchnorm(model.eval().cpu())
    with torch.no_grad():
        graph = torch.export.export(model, (example,), dynamic_shapes=({0: n, 2: m * h, 3: m * w},)).module()
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        for name in keep_float:
            quantizer.set_module_name_qconfig(name, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # notes on ops it leaves in float (e.g. max-pool after a float PReLU)
            prepared = prepare_pt2e(graph, quantizer)
        for x in batches:
            ph, pw = (-x.shape[-2]) % m, (-x.shape[-1]) % m  # observers only need the value ranges
            prepared(nn.functional.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x)
        return convert_pt2e(prepared)


def first_and_last_convs(model: nn.Module) -> List[str]:
    """Names of the first and last Conv2d: the layers that see raw pixels and emit logits."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return sorted({names[0], names[-1]}) if names else []


def int8_runner(
    model: nn.Module, calibration: Iterable[torch.Tensor], keep_float: Optional[Sequence[str]] = None
) -> Runner:
    """A runner `tensor -> fp32 logits` running the int8 network compiled by inductor, calibrated on
    `calibration` (normalised NCHW batches, as the model expects them: train frames, never test ones).

    By default the first and last convolutions stay in float (quantizing the normalised RGB input
    to 8 bits cost DABNet most of its int8 mIoU loss on CamVid val: docs/reports/SPEED.md). The int8 graph
    takes sizes that are multiples of `model.size_multiple`; other sizes run the BatchNorm-folded
    float network instead (padding or resizing them changed up to 10% of DABNet's labels at small
    sizes), with a warning. The first call at each new input size compiles (tens of seconds on 2 cores).
    """
    usable_compile_cache()  # importing inductor fails where TORCHINDUCTOR_CACHE_DIR cannot be written
    import torch._inductor.config as inductor_config

    if keep_float is None:
        keep_float = first_and_last_convs(model)
    qmodel = quantize_int8(model, calibration, keep_float)
    compiled = torch.compile(qmodel)
    m = int(getattr(model, "size_multiple", 8))
    fallback = fold_batchnorm(model)
    warned = []

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.float().cpu()
        with torch.no_grad():
            if x.shape[-2] % m == 0 and x.shape[-1] % m == 0:
                # freezing: int8 weights become constants (prepacked oneDNN int8 convolutions); read when a call
                # compiles, so set around each call rather than for the process
                with shared_setting(inductor_config, "freezing", True):
                    return compiled(x).float()
            if not warned:
                warnings.warn(f"int8 backend: {tuple(x.shape[-2:])} is not a multiple of {m}; such frames run in fp32", stacklevel=2)
                warned.append(True)
            return fallback(x)

    return FunctionRunner(run)


def _prepare(model: nn.Module, precision: str = "int8", device: str = "cpu", channels_last: Optional[bool] = None,
             calibration: Optional[Sequence[torch.Tensor]] = None) -> Runner:  # fmt: skip
    return int8_runner(model.eval().cpu(), calibration or [])


register_runtime(Runtime("int8", "PyTorch static int8 (torchao PT2E) compiled by inductor; needs torchao", _prepare,
                         precisions=("int8",), calibrated=("int8",)))  # fmt: skip
