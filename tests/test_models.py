"""Every registered network: shapes at odd sizes, gradients, determinism, scripting, sizes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import dabnet
from dabnet.commands.bench import count_macs, count_params, model_complexity
from dabnet.models.dabnet import DABNet

ALL_MODELS = dabnet.list_models()
# The heavy comparison nets are exercised at a smaller size to keep the suite fast.
HEAVY = {"segnet", "icnet"}

# Parameter counts published for each network (millions): DABNet's Tables 2 and 5 and the
# nets' own papers.
PUBLISHED_PARAMS_M = {
    "dabnet_erfdecoder": 1.02,
    "dabnet_spp": 3.22,
    "enet": 0.36,
    "espnet": 0.36,
    "erfnet": 2.1,
    "segnet": 29.5,
    "icnet": 26.5,
}


def _build(name: str, num_classes: int = 5) -> nn.Module:
    return dabnet.create_model(name, num_classes=num_classes)


def test_registry_lists_every_family():
    for name in ["dabnet", "dabnet_d4", "dabnet_coprime", "dabnet_nodilation", "dabnet_dilated3x3",
                 "dabnet_erfdecoder", "dabnet_spp", "enet", "espnet", "erfnet", "segnet", "icnet"]:
        assert name in ALL_MODELS


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(ValueError) as e:
        dabnet.create_model("dabnet_v9", 19)
    assert "dabnet_v9" in str(e.value) and "enet" in str(e.value) and "segnet" in str(e.value)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_is_input_sized_at_odd_sizes(name):
    model = _build(name).eval()
    sizes = [(97, 131), (64, 65)] if name in HEAVY else [(97, 131), (33, 47), (75, 100)]
    with torch.no_grad():
        for h, w in sizes:
            out = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, 5, h, w), (name, h, w, out.shape)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_backward_reaches_every_parameter(name):
    model = _build(name).train()
    x = torch.randn(2, 3, 64, 96)
    target = torch.randint(0, 5, (2, 64, 96))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"{name}: parameters without finite gradients: {no_grad[:5]}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_eval_mode_output_of_an_image_does_not_depend_on_its_batch(name):
    """In eval mode BatchNorm (and dropout) use their fixed statistics: an image's logits are the same alone or
    batched with others, and differ from train mode's, which normalises by the batch."""
    model = _build(name)
    with torch.no_grad():  # BatchNorm statistics of a few batches, so that eval and train modes differ
        model.train()
        for _ in range(2):
            model(torch.randn(2, 3, 64, 96) * 3 + 1)
    model.eval()
    x, others = torch.randn(1, 3, 64, 96), torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        alone, batched = model(x), model(torch.cat([x, others]))[:1]
        scale = float(alone.abs().max())  # float32 rounding of other batch sizes' kernels grows with the logits
        torch.testing.assert_close(alone, batched, rtol=1e-3, atol=1e-5 * max(1.0, scale))
        model.train()
        assert (model(torch.cat([x, others]))[:1] - alone).abs().max() > 1e-3 * max(1.0, scale)


# Max-unpooling (ENet, SegNet) cannot be traced to TorchScript; those go through torch.export.
UNTRACEABLE = {"enet", "segnet"}


@pytest.mark.slow  # it traced to TorchScript
@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n not in UNTRACEABLE])
def test_traced_torchscript_matches_eager_at_another_size(name):
    model = _build(name).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 96))
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # it ran torch.export
@pytest.mark.parametrize("name", ["dabnet", "enet", "segnet"])
def test_torch_export_with_dynamic_size(name):
    model = _build(name).eval()
    m = model.size_multiple
    h = torch.export.Dim("h", min=2, max=4096 // m)
    w = torch.export.Dim("w", min=2, max=4096 // m)
    ep = torch.export.export(model, (torch.randn(1, 3, 2 * m, 3 * m),), dynamic_shapes=({2: m * h, 3: m * w},))
    x = torch.randn(1, 3, 3 * m, 5 * m)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-4, atol=1e-4)


def test_dabnet_parameter_counts_are_the_papers():
    assert count_params(dabnet.create_model("dabnet", 19)) == 756_643
    assert count_params(dabnet.create_model("dabnet", 11)) == 754_571
    for name in ["dabnet_d4", "dabnet_coprime", "dabnet_nodilation", "dabnet_dilated3x3"]:
        assert count_params(dabnet.create_model(name, 19)) == 756_643  # dilation changes no weights


def test_dabnet_gmacs_at_512x1024():
    gmacs = model_complexity("dabnet", 19, (512, 1024))["gmacs"]
    assert abs(gmacs - 10.2) / 10.2 < 0.02, gmacs


def _conv_macs(model: nn.Module, size) -> int:
    """Multiply-adds of every convolution, from the output shapes a forward pass gives them (forward hooks, not the
    flop counter count_macs uses): each output value is in_channels / groups * kh * kw multiply-adds."""
    total = []

    def hook(m, inputs, out):
        assert type(m) is nn.Conv2d, m  # a layer this count does not know would be missed silently
        total.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *size))
    finally:
        for h in handles:
            h.remove()
    assert len(total) == len(layers)
    return sum(total)


def test_count_macs_on_a_real_model_agrees_with_meta():
    # By hand: a 3x3 conv 3 -> 8 and a depth-wise 3x3 on 16x20 (padded), then a 1x1 8 -> 5; bias and BatchNorm add none.
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                          nn.Conv2d(8, 5, 1))  # fmt: skip
    assert count_macs(small, (16, 20)) == 16 * 20 * (8 * 3 * 9 + 8 * 9 + 5 * 8) == 104_960
    model = dabnet.create_model("dabnet", 19)
    macs = count_macs(model, (64, 128))
    assert macs == _conv_macs(model, (64, 128)), (macs, _conv_macs(model, (64, 128)))
    assert model_complexity("dabnet", 19, (64, 128))["gmacs"] == pytest.approx(macs * 1e-9)  # meta device: the same count


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_parameter_counts_within_10_percent_of_published(name):
    with torch.device("meta"):
        params = count_params(dabnet.create_model(name, 19))
    published = PUBLISHED_PARAMS_M[name] * 1e6
    assert abs(params - published) / published < 0.10, (name, params)


def test_dabnet_dilations_of_the_variants():
    def dilations(name):
        m = dabnet.create_model(name, 19)
        return [blk.ddw3x1.conv.dilation[0] for blk in m.block2], m.block1[0].ddw3x1.conv.dilation[0]

    assert dilations("dabnet") == ([4, 4, 8, 8, 16, 16], 2)
    assert dilations("dabnet_d4") == ([4] * 6, 2)
    assert dilations("dabnet_coprime") == ([3, 3, 7, 7, 13, 13], 2)
    assert dilations("dabnet_nodilation") == ([1] * 6, 1)
    m = dabnet.create_model("dabnet_dilated3x3", 19)
    assert all(b.conv3x3.conv.dilation == (2, 2) for b in list(m.block1) + list(m.block2))
    assert dabnet.create_model("dabnet", 19).block1[0].conv3x3.conv.dilation == (1, 1)


def test_block_sizes_are_parameters():
    m = dabnet.create_model("dabnet", 11, block_1=2, block_2=4)
    assert len(m.block1) == 2 and len(m.block2) == 4
    assert [b.ddw3x1.conv.dilation[0] for b in m.block2] == [4, 4, 8, 8]
    m = dabnet.create_model("dabnet", 11, block_2=2, dilations_2=[2, 3])
    assert [b.ddw3x1.conv.dilation[0] for b in m.block2] == [2, 3]
    with pytest.raises(ValueError, match="dilations_2"):
        dabnet.create_model("dabnet", 11, block_2=3, dilations_2=[2, 3])
    assert m(torch.randn(1, 3, 40, 40)).shape == (1, 11, 40, 40)


def test_dab_module_structure():
    """Fig. 1c: 3x3 to C/2, depth-wise 3x1/1x3 pairs (one dilated), 1x1 back to C, residual."""
    m = DABNet(19).block2[2]
    assert m.conv3x3.conv.out_channels == 64 and m.conv3x3.conv.in_channels == 128
    for branch in (m.dw3x1, m.dw1x3, m.ddw3x1, m.ddw1x3):
        assert branch.conv.groups == 64
    assert m.dw3x1.conv.kernel_size == (3, 1) and m.dw1x3.conv.kernel_size == (1, 3)
    assert m.ddw3x1.conv.dilation == (8, 1) and m.ddw1x3.conv.dilation == (1, 8)
    assert m.conv1x1.out_channels == 128 and m.conv1x1.kernel_size == (1, 1)
    # Residual: with the 1x1 weights zeroed the module is the identity.
    nn.init.zeros_(m.conv1x1.weight)
    x = torch.randn(1, 128, 8, 8)
    assert torch.equal(m.eval()(x), x)


@pytest.mark.parametrize("size", [(8, 10), (7, 9), (5, 6)])
def test_downsampling_pool_at_odd_sizes_is_a_minus_inf_padded_pool(size):
    """The max pool beside the stride-2 conv gives ceil(H/2) x ceil(W/2), as a pool over the input
    padded with -inf at the bottom/right would; at even sizes it is the official 2x2 pool."""
    import torch.nn.functional as F

    down = DABNet(11).down1.eval()
    x = torch.randn(2, 35, *size)
    padded = F.pad(x, (0, size[1] % 2, 0, size[0] % 2), value=float("-inf"))
    assert torch.equal(down.pool(x), F.max_pool2d(padded, 2, 2))
    assert down(x).shape == (2, 64, (size[0] + 1) // 2, (size[1] + 1) // 2)
