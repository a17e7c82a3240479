"""Inference: load a model once, segment RGB arrays, read images robustly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import input_normalisation, load_model
from .data.classes import DATASET_INFO, default_palette

PathLike = Union[str, os.PathLike]


class ImageReadError(ValueError):
    """An image file that cannot be decoded."""


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (grayscale and RGBA converted), naming the file on error."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageReadError(f"cannot read image {path}: {e}. The file is corrupt, truncated or not an image.") from e


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


class Segmenter:
    """Load a model once and segment RGB images: `predict(HxWx3 uint8) -> HxW uint8`."""

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float] = (1.0, 1.0, 1.0),
        class_names: Optional[Sequence[str]] = None,
        palette: Optional[Sequence[Tuple[int, int, int]]] = None,
        device: Union[str, torch.device] = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        n = int(getattr(model, "num_classes", len(class_names or [])))
        self.class_names = list(class_names) if class_names else [f"class {i}" for i in range(n)]
        self.palette = [tuple(c) for c in palette] if palette else default_palette(n)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_checkpoint(cls, path: PathLike, device: Union[str, torch.device] = "cpu") -> "Segmenter":
        """A Segmenter whose normalisation, class names and colours come from the checkpoint."""
        model = load_model(path)
        meta = getattr(model, "checkpoint_meta", {})
        info = DATASET_INFO["camvid" if model.num_classes == 11 else "cityscapes"]
        mean, std = input_normalisation(meta, info["mean"], info["std"])
        return cls(
            model,
            mean=mean,
            std=std,
            class_names=meta.get("class_names", info["classes"]),
            palette=meta.get("palette", info["palette"]),
            device=device,
        )

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack same-size RGB uint8 images into a normalised NCHW float tensor."""
        batch = np.stack([to_rgb(im) for im in images])
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        return (x - self._mean) * self._inv_std

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Label maps for a list of images; images of one size run as one batch."""
        out: List[Optional[np.ndarray]] = [None] * len(images)
        by_size: dict = {}
        for i, im in enumerate(images):
            by_size.setdefault(im.shape[:2], []).append(i)
        for idx in by_size.values():
            logits = self.model(self.preprocess([images[i] for i in idx]))
            labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = labels[j]
        return out  # type: ignore[return-value]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """HxW uint8 label map of one RGB (or grayscale/RGBA) image."""
        return self.predict_batch([image])[0]
