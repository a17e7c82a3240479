"""Preprocessing: any image array to RGB uint8, and RGB uint8 images to the network's normalised input."""

from __future__ import annotations

import warnings
from typing import Sequence, Union

import numpy as np
import torch


# The input rule, the one reading of every image handed to dabnet's API (Segmenter, Normalize), applied by `to_hwc`.
CHANNELS = (1, 3, 4)  # grey (repeated to RGB), RGB, RGBA (alpha dropped, not composited)
INPUT_RULE = ("NumPy arrays and PIL images are HxW or HxWxC, torch tensors CxHxW (HxWxC where only the last axis can be "
              "channels), C = 1, 3 or 4, a leading batch axis of 1 dropped")  # fmt: skip


class ImageInputError(ValueError):
    """An image handed to dabnet that the input rule cannot read: its layout, dtype or values."""


class ImageTypeError(ImageInputError, TypeError):
    """Something that is not an image at all (a dict, a list of images where one is taken): a TypeError, as it
    always was, and an ImageInputError, so one `except` catches every refused input."""


def _shape(shape) -> str:
    return "x".join(str(v) for v in shape) or "scalar"


def to_hwc(image: np.ndarray, channels_first: bool = False, what: str = "a NumPy array") -> np.ndarray:
    """`image` as an HxWxC view by the input rule (INPUT_RULE): HxW and HxWxC for NumPy arrays (`channels_first`
    False), CxHxW first for tensors' arrays (`channels_first` True); 1xHxWxC / 1xCxHxW lose their batch axis.
    Only what fits no reading is refused, with a one-line ImageInputError naming the rule."""
    image = np.asarray(image)  # subclasses (np.matrix cannot grow a third axis) as plain arrays
    shape = image.shape
    if image.ndim == 4 and shape[0] == 1:
        image = image[0]
    elif image.ndim == 4:
        raise ImageInputError(f"{what} of shape {_shape(shape)} holds {shape[0]} images: predict takes one, predict_batch a "
                              "list or a batch of them")  # fmt: skip
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.ndim != 3:
        raise ImageInputError(f"{what} of shape {_shape(shape)} is not an image by the rule: {INPUT_RULE}")
    elif channels_first and image.shape[0] in CHANNELS:
        image = image.transpose(1, 2, 0)
    elif image.shape[2] not in CHANNELS:
        fix = ("; a CxHxW array reads as array.transpose(1, 2, 0)" if not channels_first and image.shape[0] in CHANNELS
               else "")  # fmt: skip
        raise ImageInputError(f"{what} of shape {_shape(shape)} is not an image by the rule: {INPUT_RULE}{fix}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageInputError(f"the image is empty ({image.shape[1]}x{image.shape[0]} pixels)")
    return image


def to_rgb(image: np.ndarray) -> np.ndarray:
    """An image array read by the input rule (HxW, HxWx1, HxWx3 or HxWx4; uint8, uint16, other integers in
    0..255, or float in [0, 1] or [0, 255]) as HxWx3 uint8 RGB."""
    image = to_hwc(image)
    image = to_uint8(image[:, :, :3])  # values first: on one channel, before it is repeated
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Pixel values as 0-255 uint8, read as a viewer would: 16-bit images scaled down (not clipped to
    white), floats in [0, 1] scaled up with a warning, floats in [0, 255] rounded; booleans, NaN/inf and values
    that fit no such range are ImageInputErrors rather than silent clipping."""
    if image.dtype.kind not in "biuf":  # complex, objects, strings, dates: no pixel values
        raise ImageInputError(f"unsupported image dtype {image.dtype}: pass RGB uint8 (0-255)")
    if image.dtype.byteorder not in ("=", "|"):  # big-endian data (FITS, some TIFFs): the same values, native order
        image = image.astype(image.dtype.newbyteorder("="))
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        raise ImageInputError("a boolean array is a mask, not an image: pass RGB uint8 (0-255)")
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # full 16-bit range -> 0-255
    if image.dtype.kind == "f":
        if image.dtype.itemsize < 4:  # float16: scaled in float32, where 255 * x rounds as it should
            image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise ImageInputError("the image holds NaN or infinite values")
        low, high = float(image.min(initial=0.0)), float(image.max(initial=0.0))
        if low >= 0.0 and high <= 1.0:
            warnings.warn("float image in [0, 1]: scaled to 0-255 (pass uint8 0-255 to silence this)", stacklevel=3)
            return np.round(image * 255.0).astype(np.uint8)
        if low >= 0.0 and high <= 255.0:
            return np.round(image).astype(np.uint8)
        raise ImageInputError(f"float image values span {low:g}..{high:g}: expected 0..1 or 0..255")
    low, high = int(image.min(initial=0)), int(image.max(initial=0))
    if low >= 0 and high <= 255:
        return image.astype(np.uint8)
    raise ImageInputError(f"{image.dtype} image values span {low}..{high}: expected 0..255 (or a uint16 image)")


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
    if im.mode == "La":  # grey with premultiplied alpha: Pillow converts it to LA only
        im = im.convert("LA")
    try:
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # copied into the caller's array
    except ValueError as e:  # a mode Pillow has no conversion to RGB for
        raise ImageInputError(f"a PIL image of mode {im.mode} cannot be converted to RGB ({e}); convert it first") from None


def exif_orientation(im) -> int:
    """The EXIF orientation of a Pillow image (1, as stored, when it has none or its EXIF is unreadable)."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block: the pixels are still an image, shown as stored
        return 1


def tensor_values(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array on the CPU, same shape: bfloat16, float16 and float8 (which NumPy cannot
    hold, or holds coarsely) widened to float32, exactly; quantized tensors dequantized; sparse ones made dense."""
    t = tensor.detach()
    if t.device.type == "meta":
        raise ImageInputError("a tensor on the meta device holds no values to segment")
    if t.is_quantized:
        t = t.dequantize()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    try:
        return t.cpu().numpy()
    except (TypeError, RuntimeError) as e:  # dtypes NumPy has no match for (complex32, sub-byte integers)
        raise ImageInputError(f"a {str(t.dtype).replace('torch.', '')} tensor cannot be read as an image ({e}); pass uint8 "
                              "(0-255) or float") from None  # fmt: skip


def as_rgb_array(image) -> np.ndarray:
    """What users pass as one image, as an HxWx3 uint8 array, read by the input rule (INPUT_RULE): a NumPy array
    (HxW or HxWxC), a PIL image, or a torch tensor (CxHxW, or HxWxC when its first axis cannot be channels; any
    dtype, bfloat16 and float16 as float); anything else is an ImageTypeError that says what works."""
    if isinstance(image, np.ndarray):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        return to_rgb(to_hwc(tensor_values(image), channels_first=True, what="a torch tensor"))
    if type(image).__module__.startswith("PIL."):
        return pil_to_rgb(image)  # as a file of it reads
    raise ImageTypeError(f"cannot segment a {type(image).__name__}: pass an HxWx3 uint8 NumPy array, a PIL image, a torch "
                         "tensor (3xHxW), or a file path")  # fmt: skip


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
