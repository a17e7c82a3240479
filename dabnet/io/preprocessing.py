"""Preprocessing: any image array to RGB uint8, and RGB uint8 images to the network's normalised input."""

from __future__ import annotations

import warnings
from typing import Sequence, Union

import numpy as np
import torch


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Bring an HxW, HxWx1, HxWx3 or HxWx4 array (uint8, uint16, or float in [0, 1]) to HxWx3 uint8 RGB."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"the image is empty ({image.shape[1]}x{image.shape[0]} pixels)")
    image = to_uint8(image[:, :, :3])  # values first: on one channel, before it is repeated
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Pixel values as 0-255 uint8, read as a viewer would: 16-bit images scaled down (not clipped to
    white), floats in [0, 1] scaled up with a warning; booleans, NaN/inf and values that fit no such
    range are errors rather than silent clipping."""
    if image.dtype.byteorder not in ("=", "|"):  # big-endian data (FITS, some TIFFs): the same values, native order
        image = image.astype(image.dtype.newbyteorder("="))
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        raise ValueError("a boolean array is a mask, not an image: pass RGB uint8 (0-255)")
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # full 16-bit range -> 0-255
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("the image holds NaN or infinite values")
        low, high = float(image.min(initial=0.0)), float(image.max(initial=0.0))
        if low >= 0.0 and high <= 1.0:
            warnings.warn("float image in [0, 1]: scaled to 0-255 (pass uint8 0-255 to silence this)", stacklevel=3)
            return np.round(image * 255.0).astype(np.uint8)
        if low >= 0.0 and high <= 255.0:
            return np.round(image).astype(np.uint8)
        raise ValueError(f"float image values span {low:g}..{high:g}: expected 0..1 or 0..255")
    if np.issubdtype(image.dtype, np.integer):
        low, high = int(image.min(initial=0)), int(image.max(initial=0))
        if low >= 0 and high <= 255:
            return image.astype(np.uint8)
        raise ValueError(f"{image.dtype} image values span {low}..{high}: expected 0..255 (or a uint16 image)")
    raise ValueError(f"unsupported image dtype {image.dtype}: pass RGB uint8 (0-255)")


# Below this many pixels a side, some runtimes' pooling has no window to run (OpenVINO's MaxPool fails at 2 px).
# Smaller inputs run edge-padded to it and cropped back, on every backend alike, so all of them agree.
MIN_SIDE = 16


def pad_to_min_side(x: torch.Tensor, min_side: int = MIN_SIDE) -> torch.Tensor:
    """NCHW `x`, edge-replicated at the bottom and right up to `min_side` pixels a side (itself when large enough)."""
    h, w = x.shape[-2:]
    if h >= min_side and w >= min_side:
        return x
    return torch.nn.functional.pad(x, (0, max(0, min_side - w), 0, max(0, min_side - h)), mode="replicate")


def edge_pad_images(images: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """HxWxC or NxHxWxC `images`, edge-replicated at the bottom and right up to `min_side` pixels a side, as
    `pad_to_min_side` pads a normalised tensor (the two commute: the normalisation is per channel)."""
    h, w = images.shape[-3:-1]
    if h >= min_side and w >= min_side:
        return images
    pad = [(0, 0)] * images.ndim
    pad[-3], pad[-2] = (0, max(0, min_side - h)), (0, max(0, min_side - w))
    return np.pad(images, pad, mode="edge")


# Images are converted to RGB this many pixels at a time: whole-image copies (Pillow's conversions, its bytes
# export, NumPy's copy of them) would hold several times an image's own size at once.
STRIP_PIXELS = 2**20
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N")


def pil_to_rgb(im) -> np.ndarray:
    """A decoded Pillow image as a viewer shows it, as writable HxWx3 uint8 RGB: EXIF orientation applied
    (phones store portrait photos sideways), 16-bit and 32-bit grey scaled rather than clipped, CMYK,
    palette and alpha images converted (alpha dropped). Converted in strips, so it holds little more than
    the decoded image and the result (`decode_peak_bytes` in io/header.py counts it)."""
    from PIL import ImageOps

    if exif_orientation(im) in range(2, 9):
        im = ImageOps.exif_transpose(im)
    if im.mode == "F":  # how it scales depends on the whole image's range, which to_rgb reads at once
        return to_rgb(np.asarray(im, dtype=np.float32))
    w, h = im.size
    wide = im.mode == "I" and im.getextrema()[1] > 255  # 16-bit PNGs often open as 32-bit grey: scaled if over 8 bits
    out = np.empty((h, w, 3), dtype=np.uint8)
    rows = max(1, STRIP_PIXELS // max(1, w))
    for y in range(0, h, rows):
        out[y : y + rows] = _rgb_strip(im.crop((0, y, w, min(h, y + rows))), wide)
    return out


def _rgb_strip(im, wide: bool) -> np.ndarray:
    if im.mode in _WIDE_GREY:
        return to_rgb(np.asarray(im, dtype=np.uint16))
    if im.mode == "I":
        arr = np.asarray(im, dtype=np.int64)
        return to_rgb(arr.clip(0, 65535).astype(np.uint16) if wide else arr.clip(0, 255).astype(np.uint8))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def exif_orientation(im) -> int:
    """The EXIF orientation of a Pillow image (1, as stored, when it has none or its EXIF is unreadable)."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block: the pixels are still an image, shown as stored
        return 1


def as_rgb_array(image) -> np.ndarray:
    """What users pass as one image, as an HxWx3 uint8 array: a NumPy array (any layout `to_rgb` takes), a PIL
    image, or a torch tensor (uint8 or float, HxWxC or CxHxW); anything else is a TypeError that says what works."""
    if isinstance(image, np.ndarray):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CxHxW, as torchvision keeps images
        return to_rgb(arr)
    if type(image).__module__.startswith("PIL."):
        return pil_to_rgb(image)  # as a file of it reads
    raise TypeError(f"cannot segment a {type(image).__name__}: pass an HxWx3 uint8 NumPy array, a PIL image, a torch "
                    "tensor (HxWx3 or 3xHxW), or a file path")  # fmt: skip


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
