"""Colour masks, overlays and side-by-side pictures of label maps."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def colour_table(palette: Sequence[Tuple[int, int, int]], ignore_colour: Tuple[int, int, int] = (0, 0, 0), size: int = 256) -> np.ndarray:
    """`size`x3 uint8 colour of each label id (256: every uint8 id): the palette's, then `ignore_colour` for ids
    outside it."""
    lut = np.zeros((size, 3), dtype=np.uint8)
    lut[:] = ignore_colour
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:size]
    return lut


def colorize(label: np.ndarray, palette: Sequence[Tuple[int, int, int]], ignore_colour: Tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """HxW label map (uint8, or uint16 past 256 classes) -> HxWx3 uint8 colour mask; ids outside the palette get
    `ignore_colour`."""
    if label.dtype != np.uint16:
        label = label.astype(np.uint8, copy=False)
    table = colour_table(palette, ignore_colour, 256 if label.dtype == np.uint8 else 65536)
    return np.take(table, label, axis=0)  # take: a row gather, not fancy indexing


def overlay(image: np.ndarray, colour_mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour mask over an RGB image (alpha is the mask's weight)."""
    if image.shape[:2] != colour_mask.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {colour_mask.shape[:2]} differ in size")
    out = np.empty(image.shape, dtype=np.uint8)
    rows = max(1, 2**20 // max(1, image.shape[1]))  # a megapixel at a time: float copies of a whole photo are GBs
    for y in range(0, image.shape[0], rows):
        blended = image[y : y + rows].astype(np.float32) * (1 - alpha) + colour_mask[y : y + rows].astype(np.float32) * alpha
        out[y : y + rows] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def side_by_side(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenate same-height RGB images left to right with a white gap."""
    h = images[0].shape[0]
    parts = []
    for i, im in enumerate(images):
        if im.shape[0] != h:
            raise ValueError("side_by_side needs images of one height")
        if i:
            parts.append(np.full((h, gap, 3), 255, dtype=np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=1)
