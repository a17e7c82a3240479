"""SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation.

Badrinarayanan, Kendall & Cipolla, IEEE TPAMI 2017 (arXiv:1511.00561). VGG16's 13 convolutional
layers as encoder, a mirrored decoder upsampled with the encoder's max-pooling indices: about
29.4 M parameters (the paper: 29.5 M).
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from .layers import ConvBNReLU, MaxUnpool2x, PaddedNet, init_weights
from .registry import register_model

_ENCODER = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


def _stage(channels: List[int], in_ch: int) -> nn.Sequential:
    layers = []
    for out in channels:
        layers.append(ConvBNReLU(in_ch, out, 3))
        in_ch = out
    return nn.Sequential(*layers)


class SegNet(PaddedNet):
    """SegNet with batch normalisation after every convolution."""

    size_multiple = 32  # inputs are padded to this multiple; exported graphs need it

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        self.encoders = nn.ModuleList()
        in_ch = 3
        for chans in _ENCODER:
            self.encoders.append(_stage(chans, in_ch))
            in_ch = chans[-1]
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = MaxUnpool2x()
        # The decoder mirrors the encoder; each stage's last conv narrows to the next stage's width.
        self.decoders = nn.ModuleList()
        for i in reversed(range(len(_ENCODER))):
            chans = list(reversed(_ENCODER[i]))
            out = _ENCODER[i - 1][-1] if i > 0 else 64
            self.decoders.append(_stage(chans[1:] + [out], chans[0]))
        self.classifier = nn.Conv2d(64, num_classes, 3, padding=1)
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        # five exact halvings
        out = x
        indices: List[torch.Tensor] = []
        for enc in self.encoders:
            out, idx = self.pool(enc(out))
            indices.append(idx)
        for i, dec in enumerate(self.decoders):
            out = dec(self.unpool(out, indices[len(indices) - 1 - i]))
        return self.classifier(out)


@register_model("segnet", "SegNet (Badrinarayanan et al. 2017)")
def segnet(num_classes: int = 19) -> SegNet:
    return SegNet(num_classes)
