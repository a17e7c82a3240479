"""upsampled_argmax: the labels of bilinearly upsampled logits, made from the low-resolution ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dabnet.runtimes import upsample
from dabnet.runtimes.upsample import upsampled_argmax


def reference(logits: np.ndarray, size) -> tuple:
    """(labels, margin between the two best classes) of F.interpolate(align_corners=False) in float64."""
    up = F.interpolate(torch.from_numpy(logits).double()[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    top2 = up.topk(2, dim=0).values
    return up.argmax(0).numpy(), (top2[0] - top2[1]).numpy()


def regions(c: int, h: int, w: int, seed: int) -> np.ndarray:
    """Logits of a few smooth regions (most cells agree with their neighbours), as a network's are."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    centres = rng.uniform(0, 1, (c, 2)) * (h, w)
    dist = np.hypot(yy[None] - centres[:, 0, None, None], xx[None] - centres[:, 1, None, None])
    return (-dist / 3 + rng.normal(0, 0.3, (c, h, w))).astype(np.float32)


@pytest.mark.parametrize("low,size", [
    ((6, 9), (48, 72)),     # DABNet's x8, by blocks
    ((7, 5), (21, 25)),     # odd integer factors (3, 5)
    ((4, 6), (4, 6)),       # factor 1
    ((5, 3), (80, 12)),     # 16 and 4
    ((13, 17), (97, 131)),  # no integer factor: pixel by pixel
    ((5, 8), (61, 30)),     # upsampling one way, downsampling the other
    ((1, 1), (9, 7)),       # one cell
])  # fmt: skip
@pytest.mark.parametrize("kind", ["noise", "regions"])
def test_labels_are_the_argmax_of_the_upsampled_logits(low, size, kind):
    c = 11
    logits = np.random.default_rng(0).normal(size=(c, *low)).astype(np.float32) if kind == "noise" else regions(c, *low, seed=1)
    got = upsampled_argmax(logits, size)
    want, margin = reference(logits, size)
    assert got.shape == tuple(size) and got.dtype == np.uint8
    wrong = got != want
    assert (margin[wrong] < 1e-5).all(), f"{wrong.sum()} pixels differ where the best class leads by {margin[wrong].max()}"
    assert wrong.mean() < 1e-3


def test_blocks_and_pixels_agree_on_integer_factors():
    logits = regions(19, 16, 24, seed=2)
    by_blocks = upsampled_argmax(logits, (128, 192))
    by_pixels = upsample._by_pixels(logits, (128, 192))
    assert (by_blocks == by_pixels).mean() > 0.9999


def test_only_class_borders_are_interpolated(monkeypatch):
    """Where all cells agree nothing is interpolated; where they do, the labels still come out right."""
    seen = []
    real = upsample._argmax0
    monkeypatch.setattr(upsample, "_argmax0", lambda v: seen.append(v.shape) or real(v))
    flat = np.zeros((3, 4, 5), np.float32)
    flat[2] = 1.0
    assert (upsampled_argmax(flat, (32, 40)) == 2).all()
    assert seen == [(3, 20)]  # the low-resolution arg-max only
    seen.clear()
    flat[0, 0, 0] = 5.0  # one cell of class 0 in the corner: only the blocks around it are in doubt
    got = upsampled_argmax(flat, (32, 40))
    want, _ = reference(flat, (32, 40))
    assert np.array_equal(got, want)
    assert seen[1] == (3, 3 * 64)  # the 3 windows that mix the corner cell with others, 8x8 pixels each


def test_ties_take_the_first_class_and_nan_stays_in_range():
    assert (upsampled_argmax(np.ones((5, 3, 3), np.float32), (24, 24)) == 0).all()
    bad = np.zeros((4, 3, 3), np.float32)
    bad[:, 1, 1] = np.nan
    got = upsampled_argmax(bad, (24, 24))
    assert got.max() < 4


def test_many_classes_give_int32_labels():
    logits = regions(300, 4, 4, seed=3)
    got = upsampled_argmax(logits, (32, 32))
    assert got.dtype == np.int32 and np.array_equal(got, reference(logits, (32, 32))[0])


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="C x h x w"):
        upsampled_argmax(np.zeros((1, 3, 4, 4), np.float32), (8, 8))


def test_the_blocks_product_in_slices_is_the_whole_product():
    rng = np.random.default_rng(4)
    corners, weights = rng.normal(size=(3001, 4)).astype(np.float32), upsample._block_weights(8, 8)
    assert upsample._PRODUCT_MACS // weights.size < len(corners)  # several slices, the last one short
    assert np.allclose(upsample._combine(corners, weights), corners @ weights, atol=1e-5)
