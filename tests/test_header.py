"""dabnet.io.header: an image's header read without decoding it, and the bytes decoding it holds; pil_to_rgb's
strip-by-strip conversion gives the pixels a whole-image conversion gave."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from dabnet.io.header import ImageTooLarge, NotAnImage, decode, decode_peak_bytes, read_header
from dabnet.io.images import ImageReadError
from dabnet.io.preprocessing import pil_to_rgb, to_rgb

ROOT = Path(__file__).resolve().parents[1]


def _encoded(im: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def test_the_header_is_read_without_decoding():
    data = _encoded(Image.new("RGB", (16_000_000, 1)))  # 47 KB that decode to 48 MB
    header = read_header(data, max_pixels=20_000_000)
    assert (header.width, header.height, header.mode, header.format, header.rotated) == (16_000_000, 1, "RGB", "PNG", False)
    assert header.image.tile  # nothing decoded yet: Pillow empties the list of undecoded tiles on load
    with pytest.raises(ImageTooLarge, match="16000000x1 = 16000000 pixels is over the limit of 1000000"):
        read_header(data, max_pixels=1_000_000)


@pytest.mark.parametrize("body, error", [(b"", ImageReadError), (b"plain text, no image", NotAnImage),
                                         (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, ImageReadError)])  # fmt: skip
def test_what_is_not_an_image_is_named(body, error):
    with pytest.raises(error):
        read_header(body, max_pixels=10**6)


def test_pillows_bomb_limits_are_ours_to_apply(monkeypatch):
    """Over Pillow's warning limit, our --max-pixels decides (no warning escapes); over its error limit, ImageTooLarge."""
    import warnings

    data = _encoded(Image.new("L", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 px: over the warning limit, under twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_header(data, max_pixels=10**6).pixels == 10_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLarge, match="pixel limit"):
        read_header(data, max_pixels=10**9)


def _old_pil_to_rgb(im):
    """pil_to_rgb as it was, converting the whole image at once: the reference for the strip-wise one."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return to_rgb(np.asarray(im, dtype=np.uint16))
    if im.mode == "I":
        arr = np.asarray(im, dtype=np.int64)
        return to_rgb(arr.clip(0, 65535).astype(np.uint16) if arr.max(initial=0) > 255 else arr.clip(0, 255).astype(np.uint8))
    if im.mode == "F":
        return to_rgb(np.asarray(im, dtype=np.float32))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.array(im.convert("RGB"))


def _images():
    rng = np.random.default_rng(0)
    h, w = 1100, 1000  # over STRIP_PIXELS: two strips, the second partial
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trans = Image.fromarray(rgb).convert("P")
    trans.info["transparency"] = 3
    return {
        "RGB": Image.fromarray(rgb), "L": Image.fromarray(rgb[..., 0]), "1": Image.fromarray(rgb[..., 0]).convert("1"),
        "P": Image.fromarray(rgb).convert("P"), "P+transparency": trans, "RGBA": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
        "LA": Image.fromarray(rgb).convert("LA"), "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "I;16": Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16)),
        "I over 8 bits": Image.fromarray(rng.integers(-5, 70000, (h, w)).astype(np.int32), "I"),
        "I within 8 bits": Image.fromarray(rng.integers(-5, 255, (h, w)).astype(np.int32), "I"),
        "F": Image.fromarray(rng.random((h, w), dtype=np.float32) * 255),
    }  # fmt: skip


@pytest.mark.parametrize("mode", list(_images()))
def test_strip_conversion_gives_the_whole_image_conversion(mode):
    im = _images()[mode]
    out = pil_to_rgb(im)
    assert out.flags.writeable and out.dtype == np.uint8 and np.array_equal(out, _old_pil_to_rgb(im))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_before(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    data = _encoded(Image.fromarray(rgb), "JPEG", exif=exif.tobytes())
    header = read_header(data, 10**6)
    assert header.rotated == (orientation > 1)
    assert np.array_equal(decode(header), _old_pil_to_rgb(Image.open(io.BytesIO(data))))


def _png_with_trailing_exif(orientation: int) -> bytes:
    """A PNG whose eXIf chunk comes after its pixels, which Pillow reads only by decoding them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()[6:]  # without the "Exif\0\0" prefix, as PNG stores it
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    data = _encoded(Image.fromarray(np.arange(24, dtype=np.uint8).reshape(2, 4, 3)))
    return data[:-12] + chunk + data[-12:]  # before IEND


def test_an_orientation_found_only_by_decoding_is_reserved_before_the_turned_copy():
    header = read_header(_png_with_trailing_exif(6), 10**6)
    assert not header.rotated
    reserved = []
    out = decode(header, reserve=reserved.append)
    assert reserved == [8 * 4] and out.shape == (4, 2, 3)  # 8 pixels of 4 bytes; turned a quarter


PEAK_SCRIPT = r"""
import ctypes, io, json, sys
import numpy as np
from PIL import Image
from dabnet.io.header import decode, decode_peak_bytes, read_header

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

rng = np.random.default_rng(0)
side = 2048
out = {}
for mode, fmt in json.loads(sys.argv[1]):
    arr = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    im = {"RGB": lambda: Image.fromarray(arr), "L": lambda: Image.fromarray(arr[..., 0]),
          "P": lambda: Image.fromarray(arr).convert("P"), "RGBA": lambda: Image.fromarray(np.dstack([arr, arr[..., :1]])),
          "I;16": lambda: Image.fromarray((arr[..., 0].astype(np.uint16) * 257)),
          "I": lambda: Image.fromarray(arr[..., 0].astype(np.int32) * 200, "I"),
          "F": lambda: Image.fromarray(arr[..., 0].astype(np.float32))}[mode]()
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    data = buf.getvalue()
    del im, arr, buf
    header = read_header(data, side * side)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what earlier cases freed goes back: it cannot hide what this one takes
    open("/proc/self/clear_refs", "w").write("5")  # the high-water mark starts again from here
    base = status("VmRSS")
    rgb = decode(header)
    out[f"{mode} {fmt}"] = [status("VmHWM") - base, decode_peak_bytes(header)]
    del rgb, header, data
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs /proc/self/clear_refs (Linux)")
def test_decode_peak_bytes_bounds_what_decoding_holds():
    """Measured in a fresh process (the kernel's high-water mark of its resident memory): what decoding a 2048x2048 image
    holds at its peak is at most decode_peak_bytes, and not far under it (a count so loose it refuses what fits is no
    count). The whole-image conversion it replaced held 21 bytes a pixel for RGB."""
    cases = [["RGB", "PNG"], ["RGB", "JPEG"], ["L", "PNG"], ["P", "PNG"], ["RGBA", "PNG"], ["I;16", "PNG"], ["I", "TIFF"],
             ["F", "TIFF"], ["RGB", "WEBP"]]  # fmt: skip
    # A fixed mmap threshold: every large block is mapped afresh and unmapped when freed, as in a fresh process.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "131072"}
    res = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, json.dumps(cases)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    for case, (measured, counted) in json.loads(res.stdout).items():
        assert measured <= counted and counted < 1.6 * measured + 8 * 2**20, (case, measured / 2**20, counted / 2**20)


def test_decode_peak_bytes_counts_the_turned_copy():
    header = read_header(_encoded(Image.new("RGB", (100, 50))), 10**6)
    turned = type(header)(header.width, header.height, header.mode, header.format, True)
    assert decode_peak_bytes(turned) - decode_peak_bytes(header) == 100 * 50 * 4
