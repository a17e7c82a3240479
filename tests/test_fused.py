"""The fused training kernels (dabnet.models.fused) against the eager layers they replace."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dabnet
from dabnet.models import fused
from dabnet.models.layers import BNPReLU, ConvBNPReLU
from dabnet.training.losses import CrossEntropy

# Every test here compiles kernels (the fused layers' reason to exist): slow.
pytestmark = pytest.mark.slow

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5)}
# bf16 keeps 8 significant bits: one rounding is off by at most 2^-9 of the value, and the kernels and the eager
# ops round at different points. So in bf16 the fused result is held to the fp32 result (norm-wise, relative to
# the values): within BF16_MAX, and within BF16_VS_EAGER times the error of eager bf16 autocast (plus 2^-10).
BF16_MAX, BF16_VS_EAGER = 2**-5, 1.5


def _grads(module: nn.Module):
    return {k: p.grad.clone() for k, p in module.named_parameters()}


def _close(a: torch.Tensor, b: torch.Tensor, dtype) -> None:
    """Equal within the dtype's tolerance, relative to the larger of the two's magnitudes."""
    scale = max(a.float().abs().max().item(), b.float().abs().max().item(), 1e-6)
    assert (a.float() - b.float()).abs().max().item() <= TOL[dtype]["atol"] * scale + TOL[dtype]["rtol"] * scale


def _bf16_close(fast: torch.Tensor, eager: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """`fast` (fused, bf16 autocast) is as near the fp32 reference `ref` as bf16 allows and eager autocast gets."""
    err = lambda a: float((a.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))  # noqa: E731
    assert err(fast) <= min(BF16_MAX, BF16_VS_EAGER * err(eager) + 2**-10), f"{what}: fused {err(fast):.2e}, eager {err(eager):.2e} off fp32"


def _agree(fast: torch.Tensor, eager: torch.Tensor, ref: torch.Tensor, dtype, what: str) -> None:
    if dtype == torch.bfloat16:
        _bf16_close(fast, eager, ref, what)
    else:
        _close(fast, eager, dtype)


def _compare(layer: nn.Module, x: torch.Tensor, dtype: torch.dtype, steps: int = 2) -> None:
    """Train-mode forward and backward of `layer` fused and eager: outputs, input and parameter
    gradients, running statistics and the step count agree."""
    eager = copy.deepcopy(layer).train()
    fast = copy.deepcopy(layer).train()
    ref = copy.deepcopy(layer).train()  # eager in fp32, without autocast: what bf16 approximates
    assert fused.set_fused(fast, True) >= 1
    with torch.no_grad():  # a PReLU slope per channel, some negative, so that every branch is exercised
        for m in (eager, fast, ref):
            m.act.weight.copy_(torch.linspace(-0.5, 0.75, m.act.weight.numel()))
    for _ in range(steps):
        outs, gins = [], []
        for m in (eager, fast, ref):
            xi = x.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16 and m is not ref):
                y = m(xi)
            y.float().pow(2).mean().backward()
            outs.append(y)
            gins.append(xi.grad)
        assert outs[0].dtype == outs[1].dtype
        _agree(outs[1], outs[0], outs[2], dtype, "output")
        _agree(gins[1], gins[0], gins[2], dtype, "input gradient")
    ge, gf, gr = _grads(eager), _grads(fast), _grads(ref)
    for k in ge:
        _agree(gf[k], ge[k], gr[k], dtype, f"gradient of {k}")
    for k in ("running_mean", "running_var"):
        _close(getattr(fast.bn, k), getattr(eager.bn, k), torch.float32)
    assert int(fast.bn.num_batches_tracked) == int(eager.bn.num_batches_tracked) == steps
    assert fused.fused_status() is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_bn_prelu_equals_batchnorm_then_prelu(dtype, momentum):
    torch.manual_seed(0)
    layer = BNPReLU(6)
    layer.bn.momentum = momentum
    _compare(layer, torch.randn(3, 6, 10, 14) * 2 + 0.5, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kernel,dilation", [((3, 1), (1, 1)), ((1, 3), (1, 1)), ((3, 1), (4, 1)), ((1, 3), (1, 8)), ((5, 1), (2, 1))])
def test_depthwise_line_conv_bn_prelu_equals_eager(dtype, kernel, dilation):
    torch.manual_seed(0)
    layer = ConvBNPReLU(8, 8, kernel, dilation=dilation, groups=8)
    assert fused.line_dim(layer.conv) == (2 if kernel[1] == 1 else 3)
    _compare(layer, torch.randn(2, 8, 11, 13), dtype)  # odd sizes, and a dilation larger than the height


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_dense_conv_stays_eager_and_bn_prelu_fused(dtype):
    torch.manual_seed(0)
    layer = ConvBNPReLU(4, 6, 3, stride=2)
    assert fused.line_dim(layer.conv) is None
    _compare(layer, torch.randn(2, 4, 9, 12), dtype)


def test_line_dim_recognises_only_same_padded_depthwise_lines():
    dw = lambda k, **kw: nn.Conv2d(4, 4, k, groups=4, bias=False, **kw)  # noqa: E731
    assert fused.line_dim(dw((3, 1), padding=(1, 0))) == 2
    assert fused.line_dim(dw((1, 3), padding=(0, 2), dilation=(1, 2))) == 3
    assert fused.line_dim(dw((3, 1), padding=(0, 0))) is None  # not "same"
    assert fused.line_dim(dw((3, 3), padding=1)) is None  # not a line
    assert fused.line_dim(dw((3, 1), padding=(1, 0), stride=2)) is None
    assert fused.line_dim(dw((3, 1), padding=(1, 0), dilation=(1, 2))) is None  # the other axis dilated
    assert fused.line_dim(nn.Conv2d(4, 8, (3, 1), padding=(1, 0), groups=4, bias=False)) is None  # not depth-wise
    assert fused.line_dim(nn.Conv2d(4, 4, (3, 1), padding=(1, 0), groups=4, bias=True)) is None


def test_eval_and_no_grad_run_the_plain_layers(monkeypatch):
    calls = []
    monkeypatch.setattr(fused, "run_compiled", lambda *a: calls.append(a) or None)
    layer = BNPReLU(4)
    fused.set_fused(layer, True)
    x = torch.randn(2, 4, 5, 5)
    layer.eval()
    layer(x)
    layer.train()
    with torch.no_grad():
        layer(x)
    assert not calls


@pytest.mark.parametrize("size,out", [((6, 8), (48, 64)), ((5, 7), (37, 61)), ((20, 30), (7, 9)), ((1, 1), (4, 5))])
def test_resize_bilinear_matches_interpolate(size, out):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    g = torch.randn(2, 3, *out, dtype=torch.float64)
    results = []
    for f in (False, True):
        xi = x.clone().requires_grad_()
        y = fused.resize_bilinear(xi, out, fused=f)
        y.backward(g)
        results.append((y, xi.grad))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


def test_resize_bilinear_under_bf16_autocast():
    torch.manual_seed(0)
    x = torch.randn(2, 11, 6, 8)
    ref = F.interpolate(x, size=(48, 64), mode="bilinear", align_corners=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = F.interpolate(x.bfloat16(), size=(48, 64), mode="bilinear", align_corners=False)
        b = fused.resize_bilinear(x.requires_grad_(), (48, 64), fused=True)
    assert b.dtype == a.dtype == torch.bfloat16
    _bf16_close(b, a, ref, "resized")


@pytest.mark.parametrize("weighted", [False, True])
def test_fused_cross_entropy_equals_eager(weighted):
    torch.manual_seed(0)
    w = torch.rand(5) + 0.5 if weighted else None
    logits = torch.randn(2, 5, 9, 11)
    target = torch.randint(0, 5, (2, 9, 11))
    target[:, :2] = 255
    out = []
    for f in (False, True):
        x = logits.clone().requires_grad_()
        loss = CrossEntropy(w, fused=f)(x, target)
        loss.backward()
        out.append((loss, x.grad))
    torch.testing.assert_close(out[1][0], out[0][0])
    torch.testing.assert_close(out[1][1], out[0][1])


@pytest.mark.parametrize("name", dabnet.list_models())
def test_a_fused_training_step_equals_the_eager_one(name):
    """Loss, every gradient and the BatchNorm statistics of a training step of every registered network,
    fused against eager from the same weights, in float64: the same function, so equal to rounding. (In
    fp32 a deep network at initialisation amplifies any change in the order of summation past a fixed
    tolerance, eager against float64 as much as fused; the layer tests above check fp32 and bf16.)"""
    torch.manual_seed(0)
    base = dabnet.create_model(name, 5).train().double()
    x = torch.randn(2, 3, 48, 64, dtype=torch.float64)
    y = torch.randint(0, 5, (2, 48, 64))

    def step(is_fused: bool):
        m = copy.deepcopy(base)
        fused.set_fused(m, is_fused)
        torch.manual_seed(1)  # the same dropout masks
        loss = CrossEntropy(torch.linspace(0.5, 2, 5, dtype=torch.float64), fused=is_fused)(m(x), y)
        loss.backward()
        out = {"loss": loss.detach()} | {f"grad {k}": v for k, v in _grads(m).items()}
        return out | {k: v for k, v in m.state_dict().items() if v.is_floating_point()}

    eager, fast = step(False), step(True)
    for k, v in eager.items():
        scale = v.abs().max().item() or 1.0
        assert (fast[k] - v).abs().max().item() <= 1e-7 * scale + 1e-12, f"{name} {k}"  # 1e-12: gradients that are 0 but for rounding
    assert fused.fused_status() is None


def test_a_failed_compile_warns_once_and_trains_eagerly(monkeypatch):
    def no_compiler(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler found\nsecond line")
        return run

    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_broken", None)
    monkeypatch.setattr(fused.torch, "compile", no_compiler)
    torch.manual_seed(0)
    layer = BNPReLU(4)
    eager = copy.deepcopy(layer)
    fused.set_fused(layer, True)
    x = torch.randn(2, 4, 5, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1, y2 = layer(x.requires_grad_()), layer(x)
    assert [str(w.message) for w in caught] == [
        "the fused training kernels could not be compiled (RuntimeError: no C++ compiler found); training runs the "
        "eager layers (slower, same numbers). Set fused=false to silence this."
    ]
    e1, e2 = eager(x), eager(x)
    torch.testing.assert_close(y1, e1)
    torch.testing.assert_close(y2, e2)
    assert int(layer.bn.num_batches_tracked) == 2  # the failed call counted once, by the eager layer
    assert fused.fused_status().startswith("RuntimeError")
