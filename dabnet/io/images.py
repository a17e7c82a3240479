"""Image and video I/O of the whole package: decoding files and bytes to RGB uint8 the way a viewer shows
them, PNG encoding, video frames in and out.

Below `data/`, `runtimes/`, `segmenter`, `predict` and `serve`, which all read images through it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from ..util.files import OutputError, PathLike, atomic_output, printable, write_failed
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


# FFmpeg's mpeg4 encoder (OpenCV's 'mp4v') takes frames of 2 to 8191 pixels a side: MPEG-4 Part 2 holds width and
# height in 13 bits, and the encoder refuses a side of 1.
MP4_SIDES = (2, 8191)


class ImageReadError(ValueError):
    """An image or video that cannot be decoded."""


class VideoWriteError(OutputError):
    """A video whose output cannot be written (frames of a size the writer refuses): that input fails, not the run."""


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


@contextlib.contextmanager
def _opencv_name(path: PathLike, what: str) -> Iterator[str]:
    """A name for `path` that OpenCV can take, for the block: the path itself, or, where it is not UTF-8 (a Linux
    name is bytes; Python holds the bytes it cannot decode as surrogates, and OpenCV crashes on them), a symbolic
    link with an ASCII name in a temporary folder, removed when the block ends."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield name
        return
    folder = tempfile.mkdtemp(prefix="dabnet-video-")
    try:
        suffix = Path(path).suffix if Path(path).suffix.isascii() else ""
        link = os.path.join(folder, "video" + suffix)  # the suffix kept: OpenCV picks the container by it
        try:
            os.symlink(os.path.abspath(path), link)
        except OSError as e:
            raise ImageReadError(f"cannot {what} {printable(name)}: OpenCV cannot take a name that is not UTF-8, and "
                                 f"no link to it could be made ({e.strerror}); rename the file") from None  # fmt: skip
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def open_video(source) -> Tuple[object, float, int]:
    """(capture, frames per second, frame count or 0 for a stream) of a video file or webcam index."""
    cv2 = _cv2()
    if isinstance(source, int):
        cap = cv2.VideoCapture(source)
    else:
        with _opencv_name(source, "open video") as name:  # the capture holds the file open from here
            cap = cv2.VideoCapture(name)
    if not cap.isOpened():
        raise ImageReadError(f"cannot open video {printable(str(source))}: not a readable video file or camera")
    count = 0 if isinstance(source, int) else int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    return cap, cap.get(cv2.CAP_PROP_FPS) or 25.0, count


def frame_size(cap) -> Tuple[int, int]:
    """(width, height) of an open capture's frames, as its header says (0, 0 where it says nothing)."""
    cv2 = _cv2()
    return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))


def check_video_size(width: int, height: int, shown_as: PathLike) -> None:
    """Refuse, naming the limit, frames the mp4 writer cannot take: before any frame is segmented for nothing."""
    lo, hi = MP4_SIDES
    if not (lo <= width <= hi and lo <= height <= hi):
        raise VideoWriteError(f"cannot write {printable(str(shown_as))}: its frames are {width}x{height}, and the mp4 "
                              f"writer (OpenCV's mp4v, MPEG-4 Part 2) takes {lo} to {hi} pixels a side. Resize or crop "
                              "the video to fit first (ffmpeg -i IN -vf scale=iw/2:-2 OUT halves it)")  # fmt: skip


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
        self.path, self.fps, self.shown_as, self._writer, self.frames = Path(path), fps, Path(shown_as), None, 0

    def write(self, rgb: np.ndarray) -> None:
        cv2 = _cv2()
        if self._writer is None:
            h, w = rgb.shape[:2]
            check_video_size(w, h, self.shown_as)
            with _opencv_name(self.path, "write") as name:  # the writer holds the file open from here
                writer = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not writer.isOpened():  # the size fits and the folder takes files (the temp file is there): the codec
                raise VideoWriteError(f"cannot write {printable(str(self.shown_as))}: OpenCV's mp4 writer (mp4v) does not "
                                      f"open for {w}x{h} frames at {self.fps:g} fps; an OpenCV built without FFmpeg has "
                                      "none (see cv2.getBuildInformation())")  # fmt: skip
            self._writer = writer
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    @property
    def started(self) -> bool:
        return self._writer is not None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()

    def check(self) -> None:
        """After close: the file holds every frame written, or an OSError naming it (a full disk: OpenCV's writer
        reports no failed write, and leaves an mp4 without its index, which no player opens)."""
        cv2 = _cv2()
        with _opencv_name(self.path, "check") as name:
            cap = cv2.VideoCapture(name)
        try:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
        finally:
            cap.release()
        if count != self.frames:
            raise write_failed(self.shown_as)


__all__ = ["IMAGE_SUFFIXES", "ImageReadError", "MP4_SIDES", "PathLike", "VIDEO_SUFFIXES", "VideoWriteError", "check_video_size",
           "encode_png", "frame_size", "open_video", "pil_to_rgb", "read_image", "save_png", "video_frames", "VideoWriter"]  # fmt: skip
