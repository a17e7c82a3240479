"""Paired image+mask transforms on NumPy arrays (HxWx3 uint8 image, HxW uint8 mask).

Every random transform draws from a `numpy.random.Generator` passed in by the dataset, which
seeds it from (seed, epoch, index): augmentation is then reproducible for a given seed whatever
the number of loader workers, and a resumed run replays exactly the same crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

PAPER_SCALES: Tuple[float, ...] = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Resize to (H, W): bilinear for the image, nearest neighbour for the mask (labels never blend)."""
    h, w = size
    img = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    msk = np.array(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    return img, msk


def draw_scale(scales: Sequence[float], rng: np.random.Generator) -> float:
    """A factor drawn from `scales` (one integer draw, the first of TrainTransform's)."""
    return float(scales[rng.integers(len(scales))])


def scaled_size(shape: Tuple[int, int], s: float) -> Tuple[int, int]:
    """(H, W) of an (H, W) image rescaled by `s`, one pixel per side at least."""
    return max(1, int(round(shape[0] * s))), max(1, int(round(shape[1] * s)))


def crop_window(shape: Tuple[int, int], crop: Tuple[int, int], rng: np.random.Generator) -> Tuple[int, int]:
    """Top-left corner of a random `crop` in an (H, W) image padded up to the crop size (two integer draws)."""
    h, w = max(shape[0], crop[0]), max(shape[1], crop[1])
    return int(rng.integers(h - crop[0] + 1)), int(rng.integers(w - crop[1] + 1))


def pad_crop(array: np.ndarray, crop: Tuple[int, int], corner: Tuple[int, int], fill: int) -> np.ndarray:
    """`array` (HxW or HxWxC) padded with `fill` at the bottom and right up to `crop`, then cropped at `corner`."""
    ph, pw = max(crop[0] - array.shape[0], 0), max(crop[1] - array.shape[1], 0)
    if ph or pw:
        array = np.pad(array, ((0, ph), (0, pw)) + ((0, 0),) * (array.ndim - 2), constant_values=fill)
    y, x = corner
    return array[y : y + crop[0], x : x + crop[1]]


def _bilinear_taps(n_in: int, n_out: int, start: int, count: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (two) and weight of the second for output pixels start..start+count-1 of a bilinear resize
    from n_in to n_out pixels (align_corners=False, as torch's and PIL's upsampling); those past n_out are -1."""
    dst = np.arange(start, start + count)
    src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    i0[dst >= n_out] = -1
    return i0, i1, (src - i0).astype(np.float32)


def soft_window(soft: np.ndarray, size: Tuple[int, int], corner: Tuple[int, int], crop: Tuple[int, int]) -> np.ndarray:
    """The `crop` window at `corner` of an HxWxC uint8 probability map resized bilinearly to `size`, zero beyond
    it (padding), computing only the window's pixels. Maps stored below the frame's resolution are enlarged at
    every training scale; one shrunk below its stored size goes through torch's antialiased resize first."""
    if size[0] < soft.shape[0] or size[1] < soft.shape[1]:
        t = torch.from_numpy(np.ascontiguousarray(soft)).permute(2, 0, 1)[None].float()
        t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
        soft = t[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    (r0, r1, wr), (c0, c1, wc) = (_bilinear_taps(soft.shape[d], size[d], corner[d], crop[d]) for d in (0, 1))
    rows, cols = r0 >= 0, c0 >= 0
    a = soft[r0[rows]].astype(np.float32)
    rowmix = a + (soft[r1[rows]].astype(np.float32) - a) * wr[rows, None, None]
    b = rowmix[:, c0[cols]]
    mixed = b + (rowmix[:, c1[cols]] - b) * wc[None, cols, None]
    out = np.zeros((crop[0], crop[1], soft.shape[2]), np.uint8)
    out[: int(rows.sum()), : int(cols.sum())] = np.rint(mixed).clip(0, 255)
    return out


def normalize_to_tensor(image: np.ndarray, mask: np.ndarray, mean: Sequence[float], std: Sequence[float]):
    """HxWx3 uint8 -> 3xHxW float32 (x - mean) / std; mask -> HxW int64."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    img = (img - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return img, torch.from_numpy(np.ascontiguousarray(mask)).long()


@dataclass
class TrainTransform:
    """The paper's augmentation: random scale, pad + random crop, horizontal flip, normalisation."""

    crop_size: Tuple[int, int] = (360, 480)
    scales: Sequence[float] = PAPER_SCALES
    flip: bool = True
    mean: Sequence[float] = (0.0, 0.0, 0.0)
    std: Sequence[float] = (1.0, 1.0, 1.0)
    ignore_index: int = 255
    to_tensor: bool = True

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, soft: Optional[np.ndarray] = None):
        """(image, mask), or (image, mask, soft) with `soft` (hxwxC uint8 class probabilities of the image, a
        teacher's, at any resolution) scaled, cropped and flipped with the same draws; padding gives it zeros."""
        s = draw_scale(self.scales, rng)
        size = scaled_size(mask.shape, s)
        if s != 1.0:
            image, mask = resize_pair(image, mask, size)
        corner = crop_window(size, tuple(self.crop_size), rng)
        image, mask = pad_crop(image, self.crop_size, corner, 0), pad_crop(mask, self.crop_size, corner, self.ignore_index)
        if soft is not None:
            soft = soft_window(soft, size, corner, tuple(self.crop_size))
        if self.flip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
            soft = None if soft is None else soft[:, ::-1]
        out = (image, mask) if soft is None else (image, mask, soft)
        if not self.to_tensor:
            return tuple(np.ascontiguousarray(a) for a in out)
        tensors = normalize_to_tensor(image, mask, self.mean, self.std)
        return tensors if soft is None else (*tensors, torch.from_numpy(np.ascontiguousarray(soft)).permute(2, 0, 1).contiguous())


@dataclass
class EvalTransform:
    """Evaluation: whole images as they are, HxWx3 RGB uint8, and their masks (HxW int64). No resize and no
    normalisation here: the evaluation normalises as predict does (`runtimes.predict_image_labels`)."""

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(mask)).long()
