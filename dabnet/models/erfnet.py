"""ERFNet: Efficient Residual Factorized ConvNet for Real-Time Semantic Segmentation.

Romera, Alvarez, Bergasa & Arroyo, IEEE T-ITS 2018. About 2.06 M parameters with 19 classes
(the paper: 2.1 M). Written from the paper's Table I.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ERFNetDecoder, NonBottleneck1D, PaddedNet, init_weights
from .registry import register_model


class DownsamplerBlock(nn.Module):
    """A stride-2 3x3 conv concatenated with a 2x2 max pool, then BatchNorm and ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch - in_ch, 3, 2, 1, bias=True)
        self.pool = nn.MaxPool2d(2, 2)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class ERFNet(PaddedNet):
    """ERFNet: 16 encoder layers of factorised residual blocks, ERFNet decoder."""

    size_multiple = 8  # inputs are padded to this multiple; exported graphs need it

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        layers = [DownsamplerBlock(3, 16), DownsamplerBlock(16, 64)]
        layers += [NonBottleneck1D(64, 0.03, 1) for _ in range(5)]
        layers.append(DownsamplerBlock(64, 128))
        for _ in range(2):
            layers += [NonBottleneck1D(128, 0.3, d) for d in (2, 4, 8, 16)]
        self.encoder = nn.Sequential(*layers)
        self.decoder = ERFNetDecoder(128, num_classes)
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@register_model("erfnet", "ERFNet (Romera et al. 2018)")
def erfnet(num_classes: int = 19) -> ERFNet:
    return ERFNet(num_classes)
