"""Paired image+mask transforms on NumPy arrays (HxWx3 uint8 image, HxW uint8 mask).

Every random transform draws from a `numpy.random.Generator` passed in by the dataset, which
seeds it from (seed, epoch, index): augmentation is then reproducible for a given seed whatever
the number of loader workers, and a resumed run replays exactly the same crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

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


def random_scale(image: np.ndarray, mask: np.ndarray, scales: Sequence[float], rng: np.random.Generator):
    """Rescale by a factor drawn from `scales`."""
    s = float(scales[rng.integers(len(scales))])
    if s == 1.0:
        return image, mask
    h, w = mask.shape
    return resize_pair(image, mask, (max(1, int(round(h * s))), max(1, int(round(w * s)))))


def pad_and_random_crop(
    image: np.ndarray, mask: np.ndarray, crop: Tuple[int, int], ignore_index: int, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray]:
    """Pad (image with 0, mask with ignore) up to the crop size, then crop at a random place."""
    ch, cw = crop
    h, w = mask.shape
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=ignore_index)
        h, w = mask.shape
    y = int(rng.integers(h - ch + 1))
    x = int(rng.integers(w - cw + 1))
    return image[y : y + ch, x : x + cw], mask[y : y + ch, x : x + cw]


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

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        image, mask = random_scale(image, mask, self.scales, rng)
        image, mask = pad_and_random_crop(image, mask, tuple(self.crop_size), self.ignore_index, rng)
        if self.flip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if not self.to_tensor:
            return np.ascontiguousarray(image), np.ascontiguousarray(mask)
        return normalize_to_tensor(image, mask, self.mean, self.std)


@dataclass
class EvalTransform:
    """Evaluation: no resize, only normalisation (whole images at full resolution)."""

    mean: Sequence[float] = (0.0, 0.0, 0.0)
    std: Sequence[float] = (1.0, 1.0, 1.0)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        return normalize_to_tensor(image, mask, self.mean, self.std)
