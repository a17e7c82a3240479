"""Image and video I/O of the whole package: decoding files and bytes to RGB uint8 the way a viewer shows
them, PNG encoding, video frames in and out.

Below `data/`, `runtimes/`, `segmenter`, `predict` and `serve`, which all read images through it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from ..util.files import OutputError, PathLike, atomic_output
from .preprocessing import pil_to_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# The decoders dabnet lets Pillow use, whatever a file's name says (Pillow picks by signature among these): no
# EPS (Ghostscript), no other plugin an image from elsewhere could reach.
READ_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
PNG_LEVEL = 2  # zlib level: the overlay (photo content) encodes several times faster than at Pillow's 6, a few % larger (docs/reports/PREDICT_SPEED.md)
# zlib strategy Z_RLE (matches only against the previous byte): after PNG's row filters that is where most matches
# are, so every picture encodes as fast as with zlib's default and comes out smaller, label maps by about a third
# (docs/reports/PREDICT_SPEED.md); -1: zlib's default
PNG_STRATEGY = 3


class ImageReadError(ValueError):
    """An image or video that cannot be decoded."""


def read_image(path: PathLike) -> np.ndarray:
    """Decode an image fully (truncation shows here, not later) as writable HxWx3 uint8 RGB;
    grayscale and RGBA are converted. A missing file is FileNotFoundError."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path, formats=READ_FORMATS) as im:
            im.load()
            return pil_to_rgb(im)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as e:  # not corrupt: larger than the decoder's guard allows
        raise ImageReadError(f"{path} has more than the {Image.MAX_IMAGE_PIXELS * 2:,} pixels Pillow decodes (its guard "
                             "against decompression bombs), so it was not read; `dabnet predict --max-image-pixels N` "
                             "reads it, in tiles") from e  # fmt: skip
    except Exception as e:
        raise ImageReadError(f"corrupt or truncated image {path}: {str(e).rstrip('.')}. Re-export or remove this file.") from e


def _png(array: np.ndarray, palette: Optional[np.ndarray]):
    from PIL import Image

    image = Image.fromarray(array)
    if palette is not None:  # HxW indices shown through a colour table: one byte a pixel to encode, not three
        image.putpalette(np.asarray(palette, dtype=np.uint8).ravel().tolist())
    return image


def save_png(array: np.ndarray, path: PathLike, level: int = PNG_LEVEL, fsync: bool = False, palette: Optional[np.ndarray] = None,
             strategy: int = PNG_STRATEGY) -> None:  # fmt: skip
    """Write an HxW or HxWx3 uint8 array (or an HxW uint16 label map, as a 16-bit PNG) as PNG atomically: a stopped
    run leaves no truncated file (no fsync by default: predict writes three per image). With `palette` (Nx3
    uint8), HxW uint8 `array` is written as a palette PNG."""
    with atomic_output(path, fsync=fsync) as tmp:
        _png(array, palette).save(tmp, format="PNG", compress_level=level, compress_type=strategy)


def encode_png(array: np.ndarray, level: int = PNG_LEVEL, palette: Optional[np.ndarray] = None, strategy: int = PNG_STRATEGY) -> bytes:
    """An HxW or HxWx3 uint8 array (or an HxW uint16 label map: 16-bit) as PNG bytes (a palette PNG of HxW indices
    with `palette`)."""
    buf = io.BytesIO()
    _png(array, palette).save(buf, format="PNG", compress_level=level, compress_type=strategy)
    return buf.getvalue()


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise RuntimeError("video needs OpenCV: pip install 'dabnet[video]'") from e
    return cv2


def open_video(source) -> Tuple[object, float, int]:
    """(capture, frames per second, frame count or 0 for a stream) of a video file or webcam index."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not cap.isOpened():
        raise ImageReadError(f"cannot open video {source}: not a readable video file or camera")
    count = 0 if isinstance(source, int) else int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    return cap, cap.get(cv2.CAP_PROP_FPS) or 25.0, count


def video_frames(cap, max_frames: int = 0) -> Iterator[np.ndarray]:
    """RGB frames of an open capture, up to `max_frames` (0: all)."""
    cv2 = _cv2()
    count = 0
    while not max_frames or count < max_frames:
        ok, bgr = cap.read()
        if not ok:
            return
        count += 1
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class VideoWriter:
    """An mp4 written frame by frame from RGB arrays; opened at the first frame's size."""

    def __init__(self, path: PathLike, fps: float, shown_as: PathLike) -> None:
        self.path, self.fps, self.shown_as, self._writer = Path(path), fps, Path(shown_as), None

    def write(self, rgb: np.ndarray) -> None:
        cv2 = _cv2()
        if self._writer is None:
            h, w = rgb.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                raise OutputError(f"cannot write {self.shown_as}: OpenCV could not open an mp4 writer there ({w}x{h}); "
                                  f"check that {self.shown_as.parent} is writable")  # fmt: skip
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    @property
    def started(self) -> bool:
        return self._writer is not None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


__all__ = ["IMAGE_SUFFIXES", "ImageReadError", "PathLike", "VIDEO_SUFFIXES", "encode_png", "open_video", "pil_to_rgb",
           "read_image", "save_png", "video_frames", "VideoWriter"]  # fmt: skip
