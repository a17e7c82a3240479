"""io.images: every image is read as a viewer shows it, and a bad one is named in one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dabnet.io.images import read_image
from dabnet.io.preprocessing import to_rgb


def test_16_bit_png_is_scaled_not_clipped(tmp_path):  # row 3
    grey = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)  # spans 0..64491
    Image.fromarray(grey).save(tmp_path / "g16.png")
    rgb = read_image(tmp_path / "g16.png")
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert rgb.min() == 0 and 240 < rgb.max() < 255 and np.unique(rgb).size > 200  # not all white
    np.testing.assert_array_equal(to_rgb(grey), rgb)  # Segmenter.predict on the uint16 array sees the same pixels


def test_exif_orientation_is_applied(tmp_path):  # "every image a camera produces"
    im = Image.new("RGB", (60, 40), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "phone.jpg").shape == (60, 40, 3)  # portrait, as a viewer shows it


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "RGBA", "I", "F"])
def test_other_pixel_formats_read_as_rgb(tmp_path, mode):
    im = Image.new("RGB", (32, 24), (30, 120, 200)).convert(mode if mode not in ("I", "F") else "L").convert(mode)
    suffix = "tiff" if mode in ("CMYK", "I", "F") else "png"
    im.save(tmp_path / f"x.{suffix}")
    rgb = read_image(tmp_path / f"x.{suffix}")
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8 and 0 < rgb.mean() < 255
    if mode in ("CMYK", "P", "RGBA"):  # colour kept: the pixel reads as Pillow's own conversion of it to RGB
        want = np.asarray(Image.open(tmp_path / f"x.{suffix}").convert("RGB"))
        np.testing.assert_allclose(rgb.astype(int), want.astype(int), atol=1)


def test_bomb_message_reads_cleanly(tmp_path, monkeypatch):
    from dabnet.io.images import ImageReadError, read_image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "big.png")
    assert ".." not in str(e.value) and "corrupt" not in str(e.value) and "--max-image-pixels" in str(e.value)
