"""ESPNet: Efficient Spatial Pyramid of Dilated Convolutions for Semantic Segmentation.

Mehta, Rastegari, Caspi, Shapiro & Hajishirzi, ECCV 2018 (arXiv:1803.06815). The full network
with its light decoder, alpha_2 = 2 and alpha_3 = 8: about 0.36 M parameters (the paper: 0.364 M).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import BNPReLU, ConvBNPReLU, PaddedNet, init_weights
from .registry import register_model


class ESPModule(nn.Module):
    """Reduce, split into five dilated 3x3 branches (1,2,4,8,16), hierarchical sum fusion, concat."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        n = out_ch // 5
        n1 = out_ch - 4 * n
        # Downsampling ESP modules reduce with a strided 3x3 conv, the others with a 1x1.
        k = 3 if stride == 2 else 1
        self.reduce = nn.Conv2d(in_ch, n, k, stride, (k - 1) // 2, bias=False)
        self.d1 = nn.Conv2d(n, n1, 3, 1, 1, bias=False)
        self.d2 = nn.Conv2d(n, n, 3, 1, 2, 2, bias=False)
        self.d4 = nn.Conv2d(n, n, 3, 1, 4, 4, bias=False)
        self.d8 = nn.Conv2d(n, n, 3, 1, 8, 8, bias=False)
        self.d16 = nn.Conv2d(n, n, 3, 1, 16, 16, bias=False)
        self.residual = residual and stride == 1 and in_ch == out_ch
        self.norm = BNPReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)
        a1 = self.d2(r)
        a2 = a1 + self.d4(r)
        a3 = a2 + self.d8(r)
        a4 = a3 + self.d16(r)
        out = torch.cat([self.d1(r), a1, a2, a3, a4], 1)
        if self.residual:
            out = out + x
        return self.norm(out)


class ESPNet(PaddedNet):
    """ESPNet encoder (ESPNet-C) with the paper's decoder of stride-2 transposed convolutions."""

    size_multiple = 8  # inputs are padded to this multiple; exported graphs need it

    def __init__(self, num_classes: int = 19, p: int = 2, q: int = 8) -> None:
        super().__init__()
        c = num_classes
        self.level1 = ConvBNPReLU(3, 16, 3, stride=2)
        self.sample = nn.AvgPool2d(3, stride=2, padding=1)
        self.b1 = BNPReLU(16 + 3)
        self.level2_0 = ESPModule(16 + 3, 64, stride=2)
        self.level2 = nn.Sequential(*[ESPModule(64, 64) for _ in range(p)])
        self.b2 = BNPReLU(128 + 3)
        self.level3_0 = ESPModule(128 + 3, 128, stride=2)
        self.level3 = nn.Sequential(*[ESPModule(128, 128) for _ in range(q)])
        self.b3 = BNPReLU(256)
        self.classifier_l3 = nn.Conv2d(256, c, 1, bias=False)
        self.up_l3 = nn.Sequential(nn.BatchNorm2d(c, eps=1e-3), nn.ConvTranspose2d(c, c, 2, 2, bias=False))
        self.classifier_l2 = nn.Conv2d(128 + 3, c, 1, bias=False)
        self.combine_l23 = nn.Sequential(BNPReLU(2 * c), ESPModule(2 * c, c, residual=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, 2, bias=False), BNPReLU(c))
        self.combine_l1 = ConvBNPReLU(16 + 3 + c, c, 3)
        self.classifier = nn.ConvTranspose2d(c, c, 2, 2, bias=False)
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        # the decoder's stride-2 transposed convs need exact halvings
        in1 = self.sample(x)
        in2 = self.sample(in1)
        out0 = self.b1(torch.cat([self.level1(x), in1], 1))
        out1_0 = self.level2_0(out0)
        out1 = self.b2(torch.cat([self.level2(out1_0), out1_0, in2], 1))
        out2_0 = self.level3_0(out1)
        out2 = self.b3(torch.cat([out2_0, self.level3(out2_0)], 1))
        l3 = self.up_l3(self.classifier_l3(out2))
        l23 = self.up_l2(self.combine_l23(torch.cat([self.classifier_l2(out1), l3], 1)))
        return self.classifier(self.combine_l1(torch.cat([l23, out0], 1)))


@register_model("espnet", "ESPNet (Mehta et al. 2018)")
def espnet(num_classes: int = 19, p: int = 2, q: int = 8) -> ESPNet:
    return ESPNet(num_classes, p, q)
