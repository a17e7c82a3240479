"""Building blocks shared by the networks of the registry."""

from __future__ import annotations

from typing import Dict, List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .fused import bn_prelu, conv_bn_prelu, resize_bilinear

_Size = Union[int, Tuple[int, int]]


def _pair(v: _Size) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_padding(kernel_size: _Size, dilation: _Size = 1) -> Tuple[int, int]:
    """Padding that keeps the spatial size of a stride-1 convolution with odd kernels."""
    k, d = _pair(kernel_size), _pair(dilation)
    return ((k[0] - 1) // 2 * d[0], (k[1] - 1) // 2 * d[1])


class BNPReLU(nn.Sequential):
    """BatchNorm followed by a per-channel PReLU (the pre-activation unit of DABNet and ESPNet)."""

    fused = False  # training on the compiled BatchNorm+PReLU kernel (models.fused.set_fused)

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bn_prelu(x, self.bn, self.act, self.fused)


class ConvBNPReLU(nn.Sequential):
    """Bias-free convolution, BatchNorm, PReLU; "same" padding unless given."""

    fused = False  # as BNPReLU

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: _Size = 3,
        stride: int = 1,
        dilation: _Size = 1,
        groups: int = 1,
        padding: _Size | None = None,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        pad = same_padding(kernel_size, dilation) if padding is None else _pair(padding)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, pad, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=eps)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_prelu(x, self.conv, self.bn, self.act, self.fused)


class ConvBNReLU(nn.Sequential):
    """Convolution, BatchNorm, ReLU: the unit of the VGG/ResNet-style comparison nets."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2 * dilation, dilation, groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_ch)
        if relu:
            self.act = nn.ReLU(inplace=True)


def resize_to(x: torch.Tensor, size: Tuple[int, int], fused: bool = False) -> torch.Tensor:
    """Bilinear resize of logits or features (align_corners=False, as the official DABNet); `fused`: the
    training form of models.fused.resize_bilinear."""
    return resize_bilinear(x, size, fused)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom/right of an NCHW tensor so H and W divide by `multiple`.

    Networks with max-unpooling or several stride-2 stages need exact halving; padding and
    cropping the logits afterwards lets them accept any input size.
    """
    h, w = x.shape[-2], x.shape[-1]
    ph = (multiple - h % multiple) % multiple
    pw = (multiple - w % multiple) % multiple
    return F.pad(x, (0, pw, 0, ph))


class MaxUnpool2x(nn.Module):
    """nn.MaxUnpool2d(2, 2) written as a scatter: the same output, and it exports to ONNX with dynamic sizes
    (PyTorch's own max_unpool2d does not: its output-size check fails to trace)."""

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        out = x.new_zeros(n, c, 4 * h * w)
        return out.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, 2 * h, 2 * w)


class PaddedNet(nn.Module):
    """Base of networks that need H and W divisible by `size_multiple` (max-unpooling, exact
    stride-2 halvings): `forward` pads the input, runs `forward_padded`, and crops the logits back to
    the input's size, so that they accept any H and W."""

    size_multiple = 8  # exported graphs take multiples of this

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # each network defines its own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        return self.forward_padded(pad_to_multiple(x, self.size_multiple))[:, :, :h, :w]


class NonBottleneck1D(nn.Module):
    """ERFNet's residual block: two pairs of 3x1/1x3 convolutions, the second pair dilated."""

    def __init__(self, channels: int, dropout: float = 0.0, dilation: int = 1) -> None:
        super().__init__()
        c, d = channels, dilation
        self.conv3x1_1 = nn.Conv2d(c, c, (3, 1), 1, (1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(c, c, (1, 3), 1, (0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(c, eps=1e-3)
        self.conv3x1_2 = nn.Conv2d(c, c, (3, 1), 1, (d, 0), (d, 1), bias=True)
        self.conv1x3_2 = nn.Conv2d(c, c, (1, 3), 1, (0, d), (1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(c, eps=1e-3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.dropout(self.bn2(self.conv1x3_2(out)))
        return F.relu(out + x)


class UpsamplerBlock(nn.Sequential):
    """ERFNet's decoder upsampling: 3x3 transposed convolution (stride 2), BatchNorm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1, bias=True)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)
        self.act = nn.ReLU(inplace=True)


class ERFNetDecoder(nn.Module):
    """ERFNet's decoder (Romera et al. 2017): x8 upsampling in three learned steps."""

    def __init__(self, in_ch: int, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            UpsamplerBlock(in_ch, 64),
            NonBottleneck1D(64),
            NonBottleneck1D(64),
            UpsamplerBlock(64, 16),
            NonBottleneck1D(16),
            NonBottleneck1D(16),
        )
        self.output_conv = nn.ConvTranspose2d(16, num_classes, 2, stride=2, padding=0, output_padding=0, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_conv(self.layers(x))


def init_weights(module: nn.Module, mode: str = "fan_in") -> None:
    """Kaiming-normal convolutions and unit BatchNorm, as the official DABNet trainer starts."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


BROKEN_LIMIT = 1e8  # no trained weight or BatchNorm statistic comes near this; beyond it a channel carries no signal


def broken_channels(model: nn.Module, limit: float = BROKEN_LIMIT) -> Dict[str, List[int]]:
    """{name: output channels} of every convolution + BatchNorm pair whose weights or statistics for a channel
    are non-finite or beyond `limit`: channels that a corrupted update has left dead (BatchNorm divides them by
    an overflowed variance) and that training cannot bring back (an optimiser step moves a weight by about lr)."""
    found: Dict[str, List[int]] = {}
    for name, m in model.named_modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features):
            continue
        stats = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
        per_channel = [conv.weight.detach().flatten(1)] + [t.detach()[:, None] for t in stats if t is not None]
        bad = torch.cat([(~torch.isfinite(t)) | (t.abs() > limit) for t in per_channel], dim=1).any(dim=1)
        if bool(bad.any()):
            found[name] = bad.nonzero().flatten().tolist()
    return found


@torch.no_grad()
def reinit_channels(model: nn.Module, channels: Dict[str, List[int]]) -> None:
    """Start the given output channels of each convolution + BatchNorm pair afresh, as `init_weights` does."""
    modules = dict(model.named_modules())
    for name, idx in channels.items():
        conv, bn = modules[name].conv, modules[name].bn
        fresh = torch.empty_like(conv.weight)
        nn.init.kaiming_normal_(fresh, mode="fan_in", nonlinearity="relu")
        conv.weight[idx] = fresh[idx]
        if bn.affine:
            bn.weight[idx], bn.bias[idx] = 1.0, 0.0
        if bn.track_running_stats:
            bn.running_mean[idx], bn.running_var[idx] = 0.0, 1.0
