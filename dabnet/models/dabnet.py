"""DABNet: Depth-wise Asymmetric Bottleneck for Real-time Semantic Segmentation.

Li & Kim, BMVC 2019 (arXiv:1907.11357). 756,643 parameters with 19 classes (754,571 with 11),
about 10.2 GMACs at 1x3x512x1024.

Also the ablation variants of the paper's Table 2: other dilation schedules for block 2, a
dilated first 3x3 convolution in every DAB module, an ERFNet-style decoder (~1.02 M) and an SPP
head (~3.20 M) in place of the 1x1 classifier.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .fused import bn_prelu
from .layers import BNPReLU, ConvBNPReLU, ERFNetDecoder, init_weights, resize_to
from .registry import PretrainedConfig, register_model, register_pretrained

PAPER_DILATIONS_2 = (4, 4, 8, 8, 16, 16)


class DABModule(nn.Module):
    """Depth-wise asymmetric bottleneck (paper Fig. 1c).

    Pre-activation BN+PReLU, 3x3 conv to C/2, two depth-wise factorised branches (3x1 then 1x3;
    the second dilated by `dilation`), summed, BN+PReLU, 1x1 conv back to C, plus the input.
    """

    def __init__(self, channels: int, dilation: int = 1, conv3x3_dilation: int = 1) -> None:
        super().__init__()
        mid, d = channels // 2, dilation
        self.norm_in = BNPReLU(channels)
        self.conv3x3 = ConvBNPReLU(channels, mid, 3, dilation=conv3x3_dilation)
        self.dw3x1 = ConvBNPReLU(mid, mid, (3, 1), groups=mid)
        self.dw1x3 = ConvBNPReLU(mid, mid, (1, 3), groups=mid)
        self.ddw3x1 = ConvBNPReLU(mid, mid, (3, 1), dilation=(d, 1), groups=mid)
        self.ddw1x3 = ConvBNPReLU(mid, mid, (1, 3), dilation=(1, d), groups=mid)
        self.norm_mid = BNPReLU(mid)
        self.conv1x1 = nn.Conv2d(mid, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3x3(self.norm_in(x))
        out = self.dw1x3(self.dw3x1(out)) + self.ddw1x3(self.ddw3x1(out))
        return self.conv1x1(self.norm_mid(out)) + x


class DownsamplingBlock(nn.Module):
    """ENet-style downsampling: a stride-2 3x3 conv, concatenated with a 2x2 max pool when widening."""

    fused = False  # as BNPReLU

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.use_pool = in_ch < out_ch
        self.conv = nn.Conv2d(in_ch, out_ch - in_ch if self.use_pool else out_ch, 3, 2, 1, bias=False)
        # ceil_mode: at odd sizes the last window is cut short, giving ceil(H/2) like the stride-2 conv
        # (the official code crashes there); at even sizes the pool is the official one. One op, no
        # padding copy (OpenVINO ran a -inf Pad in a reference kernel, 5% of an int8 frame).
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.use_pool:
            out = torch.cat([out, self.pool(x)], 1)
        return bn_prelu(out, self.bn, self.act, self.fused)


class SPPHead(nn.Module):
    """Pyramid pooling head (PSPNet-style bins 1, 2, 3, 6), the "SPP" decoder of Table 2."""

    # Read by the ONNX writer, which refuses such a network up front (OpenVINO converts it from PyTorch directly).
    onnx_blocker = "pyramid pooling (adaptive average pooling to fixed bins), which ONNX cannot express for sizes known only at run time"

    def __init__(self, in_ch: int, num_classes: int, bins: Sequence[int] = (1, 2, 3, 6), mid: int = 512) -> None:
        super().__init__()
        branch = in_ch // len(bins)
        self.bins = list(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNPReLU(in_ch, branch, 1)) for b in bins
        )
        self.fuse = ConvBNPReLU(in_ch + branch * len(bins), mid, 3)
        self.classifier = nn.Conv2d(mid, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        feats = [x] + [resize_to(b(x), size) for b in self.branches]
        return self.classifier(self.fuse(torch.cat(feats, 1)))


class DABNet(nn.Module):
    """DABNet (paper Table 1): stem, two DAB blocks with input injection, 1x1 classifier, x8 bilinear."""

    size_multiple = 8  # any size works; multiples of 8 need no padding and export with dynamic H, W
    fused = False  # training's x8 upsampling as matrix products (models.fused.set_fused)

    def __init__(
        self,
        num_classes: int = 19,
        block_1: int = 3,
        block_2: int = 6,
        dilation_1: int = 2,
        dilations_2: Optional[Sequence[int]] = None,
        conv3x3_dilation: int = 1,
        head: str = "classifier",
    ) -> None:
        super().__init__()
        if dilations_2 is None:
            dilations_2 = default_dilations_2(block_2)
        dilations_2 = [int(d) for d in dilations_2]
        if len(dilations_2) != block_2:
            raise ValueError(f"dilations_2 has {len(dilations_2)} entries but block_2 has {block_2} modules")
        if head not in ("classifier", "erfnet", "spp"):
            raise ValueError(f"head must be 'classifier', 'erfnet' or 'spp', got {head!r}")
        self.stem = nn.Sequential(ConvBNPReLU(3, 32, 3, stride=2), ConvBNPReLU(32, 32, 3), ConvBNPReLU(32, 32, 3))
        # Input injection: the image average-pooled to 1/2, 1/4, 1/8 (one pool reused in a chain).
        self.inject = nn.AvgPool2d(3, stride=2, padding=1)
        self.norm1 = BNPReLU(32 + 3)
        self.down1 = DownsamplingBlock(32 + 3, 64)
        self.block1 = nn.Sequential(*[DABModule(64, dilation_1, conv3x3_dilation) for _ in range(block_1)])
        self.norm2 = BNPReLU(128 + 3)
        self.down2 = DownsamplingBlock(128 + 3, 128)
        self.block2 = nn.Sequential(*[DABModule(128, d, conv3x3_dilation) for d in dilations_2])
        self.norm3 = BNPReLU(256 + 3)
        self.head_type = head
        if head == "classifier":
            self.classifier: nn.Module = nn.Conv2d(256 + 3, num_classes, 1, bias=False)
        elif head == "erfnet":
            self.classifier = ERFNetDecoder(256 + 3, num_classes)
        else:
            self.classifier = SPPHead(256 + 3, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        in1 = self.inject(x)
        in2 = self.inject(in1)
        in3 = self.inject(in2)
        out0 = self.norm1(torch.cat([self.stem(x), in1], 1))
        out1_0 = self.down1(out0)
        out1 = self.norm2(torch.cat([self.block1(out1_0), out1_0, in2], 1))
        out2_0 = self.down2(out1)
        out2 = self.norm3(torch.cat([self.block2(out2_0), out2_0, in3], 1))
        return resize_to(self.classifier(out2), size, self.fused)


def default_dilations_2(block_2: int) -> List[int]:
    """The paper's (4,4,8,8,16,16) for 6 modules; other lengths continue its doubling pairs."""
    return [4 * 2 ** (i // 2) for i in range(block_2)]


@register_model("dabnet", "DABNet as published (Li & Kim 2019)")
def dabnet(num_classes: int = 19, **kwargs) -> DABNet:
    """DABNet as published: block 1 dilation 2, block 2 dilations 4,4,8,8,16,16."""
    return DABNet(num_classes, **kwargs)


@register_model("dabnet_d4", "Table 2 ablation: dilation 4 in every block-2 module")
def dabnet_d4(num_classes: int = 19, block_2: int = 6, **kwargs) -> DABNet:
    return DABNet(num_classes, block_2=block_2, dilations_2=[4] * block_2, **kwargs)


@register_model("dabnet_coprime", "Table 2 ablation: block-2 dilations 3,3,7,7,13,13")
def dabnet_coprime(num_classes: int = 19, **kwargs) -> DABNet:
    return DABNet(num_classes, dilations_2=(3, 3, 7, 7, 13, 13), **kwargs)


@register_model("dabnet_nodilation", "Table 2 ablation: no dilated convolutions at all")
def dabnet_nodilation(num_classes: int = 19, block_2: int = 6, **kwargs) -> DABNet:
    return DABNet(num_classes, block_2=block_2, dilation_1=1, dilations_2=[1] * block_2, **kwargs)


@register_model("dabnet_dilated3x3", "Table 2 ablation: first 3x3 conv of each DAB module dilated (r=2)")
def dabnet_dilated3x3(num_classes: int = 19, **kwargs) -> DABNet:
    return DABNet(num_classes, conv3x3_dilation=2, **kwargs)


@register_model("dabnet_erfdecoder", "Table 2 ablation: ERFNet decoder instead of the 1x1 classifier")
def dabnet_erfdecoder(num_classes: int = 19, **kwargs) -> DABNet:
    return DABNet(num_classes, head="erfnet", **kwargs)


@register_model("dabnet_spp", "Table 2 ablation: pyramid pooling (SPP) head")
def dabnet_spp(num_classes: int = 19, **kwargs) -> DABNet:
    return DABNet(num_classes, head="spp", **kwargs)


# The one place where the official implementation's parameter names meet ours.
_OFFICIAL_KEY_RULES = [
    (r"^init_conv\.(\d+)\.", r"stem.\1."),
    (r"^bn_prelu_(\d)\.", r"norm\1."),
    (r"^downsample_(\d)\.conv3x3\.conv\.", r"down\1.conv."),
    (r"^downsample_(\d)\.bn_prelu\.", r"down\1."),
    (r"^DAB_Block_(\d)\.DAB_Module_\d_(\d+)\.", r"block\1.\2."),
    (r"\.bn_relu_1\.", ".norm_in."),
    (r"\.bn_relu_2\.", ".norm_mid."),
    (r"\.conv1x1\.conv\.", ".conv1x1."),
    (r"\.dconv(3x1|1x3)\.", r".dw\1."),
    (r"\.ddconv(3x1|1x3)\.", r".ddw\1."),
    (r"\.bn_prelu\.bn\.", ".bn."),
    (r"\.bn_prelu\.acti\.", ".act."),
    (r"\.acti\.", ".act."),
    (r"^classifier\.0\.conv\.", "classifier."),
]


def is_official_state_dict(state_dict: Dict[str, torch.Tensor]) -> bool:
    """True when the keys are those of the official DABNet code (after any `module.` prefix)."""
    return any(k.endswith("init_conv.0.conv.weight") for k in state_dict)


def convert_official_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an official DABNet state dict (optionally DataParallel-prefixed) to our names."""
    out = {}
    for key, value in state_dict.items():
        new = key[len("module.") :] if key.startswith("module.") else key
        for pattern, repl in _OFFICIAL_KEY_RULES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def block_sizes_from_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """Infer `block_1`, `block_2` and `num_classes` from a state dict with our names."""
    blocks = {1: set(), 2: set()}
    for key in state_dict:
        m = re.match(r"block([12])\.(\d+)\.", key)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
    info = {"block_1": len(blocks[1]), "block_2": len(blocks[2])}
    if "classifier.weight" in state_dict:
        info["num_classes"] = int(state_dict["classifier.weight"].shape[0])
    return info


register_pretrained(PretrainedConfig("dabnet-camvid", "dabnet", 11, "weights/dabnet-camvid.safetensors", "camvid",
                                     "DABNet trained here on CamVid (docs/reports/MODEL_CARD.md)", version="v3"))  # fmt: skip
