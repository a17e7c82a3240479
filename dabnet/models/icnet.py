"""ICNet: ICNet for Real-Time Semantic Segmentation on High-Resolution Images.

Zhao, Qi, Shen, Shi & Jia, ECCV 2018 (arXiv:1704.08545). Three input resolutions: the 1/4 image
through a dilated ResNet-50 (PSPNet's deep stem) with pyramid pooling, the 1/2 image through the
first stages of the same weights, the full image through three strided convs, joined by cascade
feature fusion. About 24.7 M parameters with 19 classes (the paper: 26.5 M).

The auxiliary classifiers of cascade label guidance are training-only and left out: this network
is here for side-by-side timing, which measures the inference graph.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNReLU, PaddedNet, init_weights, resize_to
from .registry import register_model


class ResBottleneck(nn.Module):
    """ResNet-50 bottleneck (1x1, 3x3, 1x1, expansion 4) with optional dilation."""

    def __init__(self, in_ch: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_ch = planes * 4
        self.conv1 = ConvBNReLU(in_ch, planes, 1)
        self.conv2 = ConvBNReLU(planes, planes, 3, stride, dilation)
        self.conv3 = ConvBNReLU(planes, out_ch, 1, relu=False)
        self.shortcut = (
            ConvBNReLU(in_ch, out_ch, 1, stride, relu=False) if stride != 1 or in_ch != out_ch else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


def _res_layer(in_ch: int, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    layers = [ResBottleneck(in_ch, planes, stride, dilation)]
    layers += [ResBottleneck(planes * 4, planes, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CascadeFeatureFusion(nn.Module):
    """CFF: upsample the low-resolution input x2, dilated 3x3 conv; 1x1 on the high one; sum, ReLU."""

    def __init__(self, low_ch: int, high_ch: int, out_ch: int) -> None:
        super().__init__()
        self.low = ConvBNReLU(low_ch, out_ch, 3, dilation=2, relu=False)
        self.high = ConvBNReLU(high_ch, out_ch, 1, relu=False)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = resize_to(low, (high.shape[2], high.shape[3]))
        return F.relu(self.low(low) + self.high(high))


class ICNet(PaddedNet):
    """ICNet with a ResNet-50 backbone shared by the 1/2 and 1/4 branches."""

    size_multiple = 32  # inputs are padded to this multiple; exported graphs need it
    onnx_blocker = "pyramid pooling (adaptive average pooling to fixed bins), which ONNX cannot express for sizes known only at run time"

    def __init__(self, num_classes: int = 19, bins: Tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.sub1 = nn.Sequential(ConvBNReLU(3, 32, 3, 2), ConvBNReLU(32, 32, 3, 2), ConvBNReLU(32, 64, 3, 2))
        self.stem = nn.Sequential(
            ConvBNReLU(3, 64, 3, 2), ConvBNReLU(64, 64, 3), ConvBNReLU(64, 128, 3), nn.MaxPool2d(3, 2, 1)
        )
        self.layer1 = _res_layer(128, 64, 3)
        self.layer2 = _res_layer(256, 128, 4, stride=2)
        self.layer3 = _res_layer(512, 256, 6, dilation=2)
        self.layer4 = _res_layer(1024, 512, 3, dilation=4)
        self.bins: List[int] = list(bins)
        self.reduce = ConvBNReLU(2048, 256, 1)
        self.cff_24 = CascadeFeatureFusion(256, 512, 128)
        self.cff_12 = CascadeFeatureFusion(128, 64, 128)
        self.classifier = nn.Conv2d(128, num_classes, 1)
        init_weights(self)

    def _pyramid_pool(self, x: torch.Tensor) -> torch.Tensor:
        # ICNet sums the pooled, upsampled maps instead of PSPNet's concatenation.
        size = (x.shape[2], x.shape[3])
        out = x
        for b in self.bins:
            out = out + resize_to(F.adaptive_avg_pool2d(x, b), size)
        return out

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        hp, wp = x.shape[2], x.shape[3]
        f1 = self.sub1(x)  # 1/8
        x2 = resize_to(x, (hp // 2, wp // 2))
        f2 = self.layer2(self.layer1(self.stem(x2)))  # 1/16 of the input
        f4 = resize_to(f2, (f2.shape[2] // 2, f2.shape[3] // 2))
        f4 = self.reduce(self._pyramid_pool(self.layer4(self.layer3(f4))))  # 1/32
        f = self.cff_12(self.cff_24(f4, f2), f1)
        f = resize_to(f, (f.shape[2] * 2, f.shape[3] * 2))
        return resize_to(self.classifier(f), (hp, wp))


@register_model("icnet", "ICNet, ResNet-50 (Zhao et al. 2018)")
def icnet(num_classes: int = 19) -> ICNet:
    return ICNet(num_classes)
