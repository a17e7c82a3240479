"""ENet: A Deep Neural Network Architecture for Real-Time Semantic Segmentation.

Paszke, Chaurasia, Kim & Culurciello, arXiv:1606.02147 (2016). About 0.36 M parameters with
19 classes (the paper: 0.37 M). Written from the paper's Table 1 and Fig. 2.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MaxUnpool2x, PaddedNet, init_weights
from .registry import register_model


def _bn_prelu(ch: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(ch, eps=1e-3), nn.PReLU(ch))


class InitialBlock(nn.Module):
    """A 3x3 stride-2 conv with 13 filters concatenated with a 2x2 max pool of the RGB image."""

    def __init__(self, out_ch: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_ch - 3, 3, 2, 1, bias=False)
        self.pool = nn.MaxPool2d(2, 2)
        self.norm = _bn_prelu(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.cat([self.conv(x), self.pool(x)], 1))


class Bottleneck(nn.Module):
    """Residual bottleneck: 1x1 projection, main conv (regular, dilated or 5x1+1x5), 1x1 expansion."""

    def __init__(self, ch: int, kind: str = "regular", dilation: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        mid = ch // 4
        self.project = nn.Sequential(nn.Conv2d(ch, mid, 1, bias=False), _bn_prelu(mid))
        if kind == "asymmetric":
            main: nn.Module = nn.Sequential(
                nn.Conv2d(mid, mid, (5, 1), padding=(2, 0), bias=False),
                nn.Conv2d(mid, mid, (1, 5), padding=(0, 2), bias=False),
            )
        else:
            main = nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation, bias=False)
        self.main = nn.Sequential(main, _bn_prelu(mid))
        self.expand = nn.Sequential(nn.Conv2d(mid, ch, 1, bias=False), nn.BatchNorm2d(ch, eps=1e-3))
        self.dropout = nn.Dropout2d(dropout)
        self.act = nn.PReLU(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.dropout(self.expand(self.main(self.project(x)))))


class DownBottleneck(nn.Module):
    """Downsampling bottleneck: 2x2 stride-2 projection; main branch max pool (indices kept) + zero channels."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__()
        mid = in_ch // 4
        self.extra = out_ch - in_ch
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.project = nn.Sequential(nn.Conv2d(in_ch, mid, 2, 2, bias=False), _bn_prelu(mid))
        self.main = nn.Sequential(nn.Conv2d(mid, mid, 3, padding=1, bias=False), _bn_prelu(mid))
        self.expand = nn.Sequential(nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch, eps=1e-3))
        self.dropout = nn.Dropout2d(dropout)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        skip, indices = self.pool(x)
        skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra))
        out = self.dropout(self.expand(self.main(self.project(x))))
        return self.act(skip + out), indices


class UpBottleneck(nn.Module):
    """Upsampling bottleneck: main branch 1x1 conv + max unpool; extension with a transposed conv."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__()
        mid = in_ch // 4
        self.skip = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch, eps=1e-3))
        self.unpool = MaxUnpool2x()
        self.project = nn.Sequential(nn.Conv2d(in_ch, mid, 1, bias=False), _bn_prelu(mid))
        self.up = nn.ConvTranspose2d(mid, mid, 3, 2, padding=1, output_padding=1, bias=False)
        self.up_norm = _bn_prelu(mid)
        self.expand = nn.Sequential(nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch, eps=1e-3))
        self.dropout = nn.Dropout2d(dropout)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        skip = self.unpool(self.skip(x), indices)
        out = self.dropout(self.expand(self.up_norm(self.up(self.project(x)))))
        return self.act(skip + out)


def _stage23(ch: int, dropout: float) -> nn.Sequential:
    layout: List[Tuple[str, int]] = [
        ("regular", 1), ("dilated", 2), ("asymmetric", 1), ("dilated", 4),
        ("regular", 1), ("dilated", 8), ("asymmetric", 1), ("dilated", 16),
    ]  # fmt: skip
    return nn.Sequential(*[Bottleneck(ch, kind, d, dropout) for kind, d in layout])


class ENet(PaddedNet):
    """ENet: initial block, five bottleneck stages, transposed-conv classifier."""

    size_multiple = 8  # inputs are padded to this multiple; exported graphs need it

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        self.initial = InitialBlock(16)
        self.down1 = DownBottleneck(16, 64, 0.01)
        self.stage1 = nn.Sequential(*[Bottleneck(64, dropout=0.01) for _ in range(4)])
        self.down2 = DownBottleneck(64, 128, 0.1)
        self.stage2 = _stage23(128, 0.1)
        self.stage3 = _stage23(128, 0.1)
        self.up4 = UpBottleneck(128, 64, 0.1)
        self.stage4 = nn.Sequential(Bottleneck(64), Bottleneck(64))
        self.up5 = UpBottleneck(64, 16, 0.1)
        self.stage5 = Bottleneck(16)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 2, 2, bias=False)
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        # three exact halvings for the unpooling indices
        out = self.initial(x)
        out, idx1 = self.down1(out)
        out = self.stage1(out)
        out, idx2 = self.down2(out)
        out = self.stage3(self.stage2(out))
        out = self.stage4(self.up4(out, idx2))
        out = self.stage5(self.up5(out, idx1))
        return self.fullconv(out)


@register_model("enet", "ENet (Paszke et al. 2016)")
def enet(num_classes: int = 19) -> ENet:
    return ENet(num_classes)
