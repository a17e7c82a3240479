"""inference.segmenter: what `Segmenter` takes and how it bounds memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import dabnet


def test_float_bool_and_nan_arrays(ckpt):  # row 4
    seg = dabnet.Segmenter.from_checkpoint(ckpt, backend="eager")
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"float image in \[0, 1\]: scaled to 0-255"):
        labels = seg.predict(image / 255.0)
    assert (labels == seg.predict(image)).mean() > 0.999
    with pytest.raises(ValueError, match="NaN"):
        seg.predict(np.full((8, 8, 3), np.nan))
    with pytest.raises(ValueError, match="boolean array is a mask"):
        seg.predict(np.zeros((8, 8), dtype=bool))
    with pytest.raises(ValueError, match=r"expected 0..1 or 0..255"):
        seg.predict(np.full((8, 8, 3), 300.0))


def test_large_images_run_as_tiles_no_pass_over_the_budget_and_tiles_match_their_crops(ckpt):
    from dabnet.inference.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(ckpt, backend="eager", log=None)
    seg.max_pixels, seg.tile_margin = 96 * 96, 16
    seen = []
    real = seg.run

    def spy(x):
        seen.append(x.shape[-2] * x.shape[-1] * x.shape[0])
        return real(x)

    seg.run = spy
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (150, 230, 3), dtype=np.uint8)
    labels = seg.predict(image)
    assert labels.shape == (150, 230) and max(seen) <= seg.max_pixels and len(seen) > 4
    core = (96 - 2 * 16) // 8 * 8  # 64: the second tile's centre, seen with its margin
    crop = seg.predict(image[0 : core + 16, core - 16 : 2 * core + 16])  # the pixels the network saw for it
    np.testing.assert_array_equal(labels[0:core, core : 2 * core], crop[0:core, 16 : 16 + core])
    # Batches of same-size images are split to stay within the budget too.
    seen.clear()
    seg.predict_batch([image[:40, :40]] * 9)
    assert max(seen) <= seg.max_pixels and sum(seen) == 9 * 1600


def test_a_thin_image_runs_as_few_strips_that_fill_the_budget_and_match_their_crops(ckpt):
    from dabnet.inference.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(ckpt, backend="eager", log=None)
    seg.max_pixels, seg.tile_margin = 96 * 96, 16
    seen, real = [], seg.run
    seg.run = lambda x: seen.append(x.shape[-2] * x.shape[-1] * x.shape[0]) or real(x)
    image = np.random.default_rng(2).integers(0, 255, (20, 1000, 3), dtype=np.uint8)
    labels = seg.predict(image)
    core = (96 * 96 // 20 - 2 * 16) // 8 * 8  # 424 columns a strip, all 20 rows: 3 passes, where squares took 16
    assert labels.shape == (20, 1000) and len(seen) == 3 and max(seen) <= seg.max_pixels
    crop = seg.predict(image[:, core - 16 : 2 * core + 16])  # the pixels the network saw for the second strip
    np.testing.assert_array_equal(labels[:, core : 2 * core], crop[:, 16 : 16 + core])


@pytest.mark.parametrize("shape", [(1, 96 * 96), (96 * 96, 3), (15, 600)])
def test_no_pass_over_the_budget_counting_the_padding_of_thin_images(ckpt, shape):
    """A strip of exactly max_pixels pixels, or fewer, is padded to 16 rows in its pass: the budget counts the padded
    pass (issue 50 round 5: a 1x4,194,304 PNG ran as one pass of 67 million pixels and took 11 GB)."""
    from dabnet.inference.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(ckpt, backend="eager", log=None)
    seg.max_pixels, seg.tile_margin = 96 * 96, 16
    seen, real = [], seg.run
    seg.run = lambda x: seen.append(x.shape[-2] * x.shape[-1] * x.shape[0]) or real(x)
    image = np.random.default_rng(3).integers(0, 255, (*shape, 3), dtype=np.uint8)
    assert seg.predict(image).shape == shape and max(seen) <= seg.max_pixels
    seen.clear()
    assert [lab.shape for lab in seg.predict_batch([image] * 2)] == [shape] * 2 and max(seen) <= seg.max_pixels


def test_segmenter_takes_pil_paths_tensors_and_refuses_the_rest_in_one_line(ckpt, tmp_path):
    from dabnet.inference.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(ckpt, backend="eager", log=None)
    rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    want = seg.predict(rgb)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for form in [Image.fromarray(rgb), str(tmp_path / "x.png"), tmp_path / "x.png", torch.from_numpy(rgb), chw, chw.float() / 255]:
        with __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            np.testing.assert_array_equal(seg.predict(form), want)
    assert [lab.shape for lab in seg.predict_batch([rgb, Image.fromarray(rgb[:20])])] == [(40, 56), (20, 56)]
    with pytest.raises(TypeError, match="use predict_batch"):
        seg.predict([rgb, rgb])
    with pytest.raises(TypeError, match="use predict for one image"):
        seg.predict_batch(rgb)
    with pytest.raises(TypeError, match="cannot segment a dict"):
        seg.predict({"image": rgb})
    with pytest.raises(ValueError, match=r"the image is empty \(0x0 pixels\)"):
        seg.predict(np.zeros((0, 0, 3), np.uint8))


def test_for_model_takes_a_plain_callable_as_its_runner():
    """A runner need not be a dabnet Runner: any NCHW -> logits callable runs, named by `backend`."""
    model = dabnet.create_model("dabnet", 11).eval()
    calls = []

    def forward(x):
        calls.append(x.shape)
        return model(x)

    seg = dabnet.Segmenter.for_model(model, runner=forward, backend="mine")
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    labels = seg.predict(image)
    assert calls and labels.shape == (32, 48) and seg.backend == "mine" and seg.backend_reason == ""
    np.testing.assert_array_equal(labels, dabnet.Segmenter.for_model(model).predict(image))
