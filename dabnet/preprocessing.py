"""Preprocessing: any image array to RGB uint8, and RGB uint8 images to the network's normalised input."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Bring an HxW, HxWx1, HxWx3 or HxWx4 array to HxWx3 uint8 RGB."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


class Normalize:
    """RGB uint8 images (0-255) -> (x - mean) / std as an NCHW float tensor on `device`."""

    def __init__(self, mean: Sequence[float], std: Sequence[float] = (1.0, 1.0, 1.0), device: Union[str, torch.device] = "cpu") -> None:
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.device = torch.device(device)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._inv_std = 1.0 / torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def __call__(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack same-size images (any layout `to_rgb` takes) into one normalised batch."""
        batch = np.stack([to_rgb(im) for im in images])
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        return (x - self._mean) * self._inv_std
