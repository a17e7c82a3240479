"""Inputs through the API (issue 50, section 5): label maps past 256 classes (14), and the one layout rule for
images handed to `Segmenter` (15)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import dabnet
from dabnet.inference.outputs import write_outputs
from dabnet.inference.segmenter import Segmenter
from dabnet.io.images import encode_png
from dabnet.io.preprocessing import INPUT_RULE, ImageInputError, ImageTypeError


def _halves(h: int = 48, w: int = 64) -> np.ndarray:
    """Black on the left, white on the right."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, w // 2 :] = 255
    return image


@pytest.fixture(scope="module")
def seg300():
    """An untrained 300-class DABNet whose classifier scores only class 43 (what its features look like on black)
    and class 299 (on white): `_halves()` comes back as both, one each side of 256, where uint8 wraps 299 to 43."""
    torch.manual_seed(0)
    model = dabnet.create_model("dabnet", 300).eval()
    seg = Segmenter.for_model(model)
    seen = {}
    hook = model.classifier.register_forward_hook(lambda m, i, o: seen.update(features=i[0][0]))  # None: the output stays
    seg.predict(_halves())
    hook.remove()
    f = seen["features"]
    black, white = f[:, :, : f.shape[-1] // 2 - 1].mean((1, 2)), f[:, :, f.shape[-1] // 2 + 1 :].mean((1, 2))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.weight[43, :, 0, 0] = black / black.norm()
        model.classifier.weight[299, :, 0, 0] = white / white.norm()
    return seg


def _photo(h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_labels_past_256_classes_are_uint16_everywhere_and_never_wrap(seg300):  # case 14
    image = _halves()
    labels = seg300.predict(image)
    assert labels.dtype == np.uint16 and set(np.unique(labels).tolist()) == {43, 299}
    seg300.max_pixels, seg300.tile_margin = 24 * 24, 8  # tiles
    try:
        tiled = seg300.predict(image)
    finally:
        del seg300.max_pixels, seg300.tile_margin
    [(_, _, streamed)] = list(seg300.predict_stream([("k", image)]))
    for other in (tiled, streamed):
        assert other.dtype == np.uint16 and 299 in other
    np.testing.assert_array_equal(streamed, labels)
    scaled = Segmenter(seg300.model, seg300.mean, seg300.std, scale=0.5).predict(image)  # resized back by nearest
    assert scaled.dtype == np.uint16 and scaled.shape == labels.shape and 299 in scaled
    # up to 256 classes nothing changes: uint8
    assert Segmenter.for_model(dabnet.create_model("dabnet", 256).eval()).predict(image).dtype == np.uint8


def test_labels_past_256_classes_are_written_as_16_bit_pngs(seg300, tmp_path):  # case 14
    image = _halves()
    labels = seg300.predict(image)
    write_outputs(image, labels, seg300.palette, tmp_path, "x")
    with Image.open(tmp_path / "x_label.png") as im:
        assert im.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(im), labels)
    colour = np.asarray(Image.open(tmp_path / "x_color.png").convert("RGB"))
    at = tuple(np.argwhere(labels == 299)[0])
    assert tuple(colour[at]) == seg300.palette[299] != seg300.palette[43]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(labels)))), labels)  # serve's format=label


def test_predict_command_writes_16_bit_labels_of_a_300_class_checkpoint(seg300, tmp_path):  # case 14, end to end
    from dabnet.cli import main
    from dabnet.io.checkpoint import make_checkpoint

    ckpt = tmp_path / "m300.pth"
    dabnet.save_checkpoint(make_checkpoint(seg300.model), ckpt)
    Image.fromarray(_halves()).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--backend", "eager", "--out", str(tmp_path / "out")]) == 0
    written = np.asarray(Image.open(tmp_path / "out" / "a_label.png"))
    assert written.dtype == np.uint16 and set(np.unique(written).tolist()) == {43, 299}


def test_a_label_past_what_the_dtype_holds_is_an_error_not_another_class():
    """A runner of 300 classes behind a Segmenter told of 11 class names: refused, not wrapped to uint8."""
    seg = Segmenter(lambda x: torch.nn.functional.one_hot(torch.full(x.shape[-2:], 299), 300).permute(2, 0, 1)[None].float(),
                    mean=(0, 0, 0), class_names=[f"c{i}" for i in range(11)])  # fmt: skip
    with pytest.raises(ValueError, match="predicted class 299, but this Segmenter has 11 class names"):
        seg.predict(_photo(8, 8))


@pytest.fixture(scope="module")
def seg11(ckpt):
    return Segmenter.from_checkpoint(ckpt, backend="eager", log=None)


@pytest.mark.parametrize("width", [1, 3, 4, 5])
def test_a_chw_tensor_of_any_width_is_read_as_chw(seg11, width):  # case 15: width 4 (or 1, 3) was read as HWC
    rgb = _photo(40, width)
    want = seg11.predict(rgb)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for form in (chw, chw[None], chw.contiguous()):
        np.testing.assert_array_equal(seg11.predict(form), want)
    assert seg11.predict(torch.from_numpy(rgb[:, :, :1]).permute(2, 0, 1)).shape == (40, width)  # 1xHxW: grey


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_float_tensors_of_every_precision_read_as_floats(seg11, dtype):  # case 15: bfloat16 was a TypeError
    rgb = _photo()
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unit = seg11.predict((chw.float() / 255).to(dtype))  # [0, 1]: scaled up, as float arrays always were
    np.testing.assert_array_equal(seg11.predict(chw.to(dtype)), seg11.predict(rgb))  # [0, 255]: as is (exact in bf16)
    assert (unit == seg11.predict(rgb)).mean() > 0.99  # bf16 holds [0, 1] to about 2 of 255 levels


def test_integer_tensors_and_hwc_tensors_keep_working(seg11):
    rgb = _photo()
    want = seg11.predict(rgb)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for form in (chw.int(), chw.long(), chw.to(torch.int16), torch.from_numpy(rgb)):  # HxWx3: torch.from_numpy(array)
        np.testing.assert_array_equal(seg11.predict(form), want)
    np.testing.assert_array_equal(seg11.predict(rgb[None]), want)  # 1xHxWxC array
    batch = seg11.predict_batch(torch.stack([chw, chw.flip(-1)]))
    np.testing.assert_array_equal(batch[0], want)


@pytest.mark.parametrize("image, words", [
    (np.zeros((3, 40, 50), np.uint8), "a NumPy array of shape 3x40x50 is not an image by the rule"),
    (torch.zeros(5, 6, 7), "a torch tensor of shape 5x6x7 is not an image by the rule"),
    (torch.zeros(2, 3, 8, 8), "holds 2 images: predict takes one, predict_batch"),
    (np.zeros(4), "a NumPy array of shape 4 is not an image"),
    (torch.zeros(3, 8, 8, dtype=torch.bool), "a boolean array is a mask"),
    (torch.zeros(3, 8, 8, dtype=torch.complex64), "unsupported image dtype complex64"),
    (np.zeros((0, 5, 3), np.uint8), "the image is empty"),
])  # fmt: skip
def test_what_no_reading_fits_is_one_line_naming_the_rule(seg11, image, words):
    with pytest.raises(ImageInputError, match=words) as e:
        seg11.predict(image)
    assert "\n" not in str(e.value)
    if "by the rule" in words:
        assert INPUT_RULE in str(e.value)
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] == 3:
        assert "array.transpose(1, 2, 0)" in str(e.value)  # the fix for a CxHxW array


def test_not_an_image_is_a_type_error_and_an_input_error(seg11):
    with pytest.raises(ImageTypeError) as e:
        seg11.predict({"image": 1})
    assert isinstance(e.value, TypeError) and isinstance(e.value, ImageInputError) and isinstance(e.value, ValueError)
