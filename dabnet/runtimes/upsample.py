"""The label map of a network that ends in a bilinear upsampling of its logits (align_corners=False, as
DABNet's last layer), computed from the low-resolution logits instead of from the upsampled ones.

A pixel's upsampled logits are one convex combination, with the same weights for every class, of the (up
to) four low-resolution logit vectors around it. Where those four share their arg-max, every such
combination has that arg-max too, so the pixel takes the label without being interpolated. Only pixels
between low-resolution cells of different labels (object borders) are interpolated, in fp32, and compared.
The result is arg-max(F.interpolate(logits)) up to float rounding at exact ties, at a fraction of the work:
the upsampled logits (classes x full resolution) are never made."""

from functools import lru_cache
from typing import Tuple

import numpy as np

__all__ = ["upsampled_argmax"]


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 up to 256 classes, else int32."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.int32)


def _argmax0(values: np.ndarray) -> np.ndarray:
    """The first index of the maximum along axis 0 of a (C, N) array, as label_dtype(C). NumPy's own argmax
    along a short leading axis walks the array pixel by pixel; this is three passes over whole rows."""
    c = values.shape[0]
    top = values.max(axis=0)
    rank = np.arange(c, 0, -1, dtype=np.uint8 if c < 256 else np.int32)  # class i -> C - i, so the first max ranks highest
    first = c - ((values == top) * rank[:, None]).max(axis=0).astype(np.int64)
    return np.minimum(first, c - 1).astype(label_dtype(c))  # a NaN row matches nothing: its pixel gets the last class


def _source(out: int, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of `out` output positions: the two input positions it is interpolated from and the weight of
    the second (half-pixel centres, clamped at the borders, as F.interpolate(align_corners=False))."""
    src = np.maximum((np.arange(out, dtype=np.float64) + 0.5) * (n / out) - 0.5, 0.0)
    lo = np.minimum(src.astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, (src - lo).astype(np.float32)


@lru_cache(maxsize=16)
def _block_weights(sy: int, sx: int) -> np.ndarray:
    """(4, sy*sx): the weights of a cell's four corners (top-left, top-right, bottom-left, bottom-right) for
    each pixel of one sy x sx output block, for an integer upsampling factor."""
    fy = (sy // 2 + np.arange(sy) + 0.5) / sy - 0.5  # the block starts where a pixel's source is a cell's centre
    fx = (sx // 2 + np.arange(sx) + 0.5) / sx - 0.5
    corners = [np.outer(1 - fy, 1 - fx), np.outer(1 - fy, fx), np.outer(fy, 1 - fx), np.outer(fy, fx)]
    return np.stack(corners).reshape(4, sy * sx).astype(np.float32)


# Multiply-adds per matrix product: few enough that the BLAS library runs each on the calling thread (OpenBLAS
# goes multi-threaded above 4 x 65536). Its worker threads, once woken, keep spinning after the product returns
# and slow the next inference on the same cores more than the product saves.
_PRODUCT_MACS = 1 << 17


def _combine(corners: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """corners (N, 4) @ weights (4, M), as single-threaded products of at most `_PRODUCT_MACS` each."""
    out = np.empty((corners.shape[0], weights.shape[1]), np.float32)
    rows = max(1, _PRODUCT_MACS // weights.size)
    for start in range(0, len(corners), rows):
        np.matmul(corners[start : start + rows], weights, out=out[start : start + rows])
    return out


def _by_blocks(logits: np.ndarray, sy: int, sx: int) -> np.ndarray:
    """An integer factor: the output is a grid of sy x sx blocks (offset by half a block), each interpolated
    from one 2x2 window of cells with the same weights, so a doubtful block is one matrix product."""
    c, h, w = logits.shape
    flat = logits.reshape(c, h * w)
    lab = _argmax0(flat).reshape(h, w)
    p = np.pad(lab, 1, mode="edge")  # window (k, l): cells k-1, k and l-1, l, clamped at the borders
    first = p[:-1, :-1]
    doubt = (first != p[:-1, 1:]) | (first != p[1:, :-1]) | (first != p[1:, 1:])
    out = np.empty((h + 1, sy, (w + 1) * sx), lab.dtype)
    out[...] = np.repeat(first, sx, axis=1)[:, None, :]
    ks, ls = np.nonzero(doubt)
    if len(ks):
        r0, r1 = np.maximum(ks - 1, 0) * w, np.minimum(ks, h - 1) * w
        c0, c1 = np.maximum(ls - 1, 0), np.minimum(ls, w - 1)
        corners = np.stack([flat[:, r0 + c0], flat[:, r0 + c1], flat[:, r1 + c0], flat[:, r1 + c1]], axis=2)
        values = _combine(corners.reshape(-1, 4), _block_weights(sy, sx)).reshape(c, -1)
        out.reshape(h + 1, sy, w + 1, sx).transpose(0, 2, 1, 3)[ks, ls] = _argmax0(values).reshape(-1, sy, sx)
    oy, ox = sy - sy // 2, sx - sx // 2
    return np.ascontiguousarray(out.reshape((h + 1) * sy, (w + 1) * sx)[oy : oy + h * sy, ox : ox + w * sx])


def _by_pixels(logits: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Any size: each doubtful pixel interpolated from its own four cells."""
    c, h, w = logits.shape
    (y0, y1, fy), (x0, x1, fx) = _source(size[0], h), _source(size[1], w)
    flat = logits.reshape(c, h * w)
    lab = _argmax0(flat).reshape(h, w)
    p = np.pad(lab, ((0, 1), (0, 1)), mode="edge")  # window (i, j): cells i, i+1 and j, j+1, clamped
    same = (lab == p[1:, :-1]) & (lab == p[:-1, 1:]) & (lab == p[1:, 1:])
    out = lab[y0][:, x0]
    ys, xs = np.nonzero(~same[y0][:, x0])
    if len(ys):
        gy, gx = fy[ys], fx[xs]
        r0, r1, c0, c1 = y0[ys] * w, y1[ys] * w, x0[xs], x1[xs]
        cell = lambda i: flat.take(i, axis=1)  # C-ordered, unlike flat[:, i]: the passes below run along rows
        top = (1 - gx) * cell(r0 + c0) + gx * cell(r0 + c1)
        bottom = (1 - gx) * cell(r1 + c0) + gx * cell(r1 + c1)
        out[ys, xs] = _argmax0((1 - gy) * top + gy * bottom)
    return out


def upsampled_argmax(logits: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """The HxW arg-max over classes of `logits` (C x h x w) upsampled bilinearly (align_corners=False) to
    `size` = (H, W), interpolating only where the low-resolution labels disagree."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    if logits.ndim != 3 or 0 in logits.shape:
        raise ValueError(f"upsampled_argmax takes C x h x w logits, got shape {logits.shape}")
    (h, w), (hh, ww) = logits.shape[1:], (int(size[0]), int(size[1]))
    if hh % h == 0 and ww % w == 0 and hh and ww:
        return _by_blocks(logits, hh // h, ww // w)
    return _by_pixels(logits, (hh, ww))
