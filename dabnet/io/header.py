"""What an image will cost before it is decoded: its header (size, mode, format, orientation) read without
decoding a pixel, and the bytes decoding it holds at its peak.

A service reads these to refuse or admit an image before allocating it; the decode then goes through the
same `pil_to_rgb` as every other image dabnet reads, whose peak `decode_peak_bytes` counts.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .images import READ_FORMATS, ImageReadError
from .preprocessing import STRIP_PIXELS, exif_orientation, pil_to_rgb


class NotAnImage(ImageReadError):
    """Bytes that are none of the formats dabnet decodes."""


class ImageTooLarge(ImageReadError):
    """An image whose header declares more pixels than allowed."""


@dataclass(frozen=True)
class ImageHeader:
    """An image's header: what decoding it will make, read before any pixel is."""

    width: int
    height: int
    mode: str  # Pillow's mode: how many bytes a decoded pixel holds
    format: str
    rotated: bool  # an EXIF orientation: decoding also makes a turned copy
    image: Any = field(default=None, repr=False, compare=False)  # the lazily opened Pillow image, not yet decoded

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes, max_pixels: int) -> ImageHeader:
    """The header of an encoded image, refused (ImageTooLarge) past `max_pixels` before any decoding; NotAnImage
    for bytes none of READ_FORMATS recognises, ImageReadError for a header that cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageReadError("empty image: no bytes")
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: the pixel limit below is the one that applies
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=READ_FORMATS)
    except Image.DecompressionBombError as e:  # over twice Pillow's own limit: refused before ours is read
        raise ImageTooLarge(f"image is over the pixel limit: {e}") from None
    except UnidentifiedImageError:
        raise NotAnImage("not an image format dabnet reads (PNG, JPEG, BMP, TIFF, WebP)") from None
    except Exception as e:
        raise ImageReadError(f"unreadable image header: {e}") from None
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageReadError(f"zero-sized image ({w}x{h})")
    if w * h > max_pixels:
        raise ImageTooLarge(f"image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels}")
    # A PNG's EXIF may follow its pixels, which Pillow reads only by decoding: read here only where the header has it.
    early = im.format != "PNG" or "exif" in im.info
    return ImageHeader(w, h, im.mode, str(im.format), early and exif_orientation(im) in range(2, 9), im)


def stored_bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow holds per decoded pixel of `mode` (one-band 8-bit modes 1, 16-bit grey 2, the rest 4)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def decode_peak_bytes(header: ImageHeader) -> int:
    """The most bytes `decode` holds at once for `header`'s image: Pillow's decoded image, its turned copy if it has an
    orientation, the RGB result, and the strip being converted; WebP's decoder keeps its own copy besides."""
    stored = stored_bytes_per_pixel(header.mode)
    per_pixel = stored * (2 if header.rotated else 1) + 3 + 1  # + 1: a margin over what was measured
    if header.mode == "F":  # converted as a whole (its scale depends on its range): float copies of it
        per_pixel += 10
    if header.format == "WEBP":
        per_pixel += 9
    strip = 24 if header.mode == "I" else 16  # the strip's crop, its conversions and NumPy copies
    return header.pixels * per_pixel + min(header.pixels, STRIP_PIXELS) * strip


def decode(header: ImageHeader, reserve: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """The HxWx3 uint8 RGB pixels of an image whose header was read, as `read_image` reads a file. An orientation
    found only once decoded (a PNG's trailing EXIF) calls `reserve` with the bytes of the turned copy before it is
    made: a caller counting bytes takes them then, or refuses by raising."""
    from PIL import Image

    im = header.image
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image is over the pixel limit: {e}") from None
    except Exception as e:  # truncated data, corrupt streams, bombs that lie in their header
        raise ImageReadError(f"image data is truncated or corrupt: {e}") from None
    if reserve is not None and not header.rotated and exif_orientation(im) in range(2, 9):
        reserve(header.pixels * stored_bytes_per_pixel(header.mode))
    try:
        return pil_to_rgb(im)
    except Exception as e:
        raise ImageReadError(f"image data is truncated or corrupt: {e}") from None
