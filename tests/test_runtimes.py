"""runtimes: every backend runs any image size alike and leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest

import dabnet


@pytest.mark.slow  # it exported to ONNX
def test_onnxruntime_backend_leaves_no_temporary_files(ckpt, tmp_path, monkeypatch):  # row 10
    pytest.importorskip("onnxruntime")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seg = dabnet.Segmenter.from_checkpoint(ckpt, backend="onnxruntime")
    assert seg.predict(np.zeros((32, 48, 3), np.uint8)).shape == (32, 48)
    assert list(tmp_path.iterdir()) == []


def _backends():
    slow = pytest.mark.slow  # exported to ONNX, compiled by OpenVINO
    names = ["eager", "fold", pytest.param("onnxruntime", marks=slow)]
    try:
        import openvino  # noqa: F401

        names.append(pytest.param("openvino", marks=slow))
    except ImportError:
        pass
    return names


@pytest.mark.parametrize("backend", _backends())
def test_tiny_images_run_on_every_backend_and_agree(ckpt, backend):
    from dabnet.inference.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(ckpt, backend=backend, log=None)
    ref = Segmenter.from_checkpoint(ckpt, backend="eager", log=None)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(1, 1), (2, 2), (3, 1), (1, 40), (15, 9)]]
    same, total = 0, 0
    for im, lab, want in zip(images, seg.predict_batch(images), ref.predict_batch(images)):
        assert lab.shape == im.shape[:2]
        same, total = same + int((lab == want).sum()), total + lab.size
    assert same / total >= 0.999, backend  # the same padded input, fp32 on each backend: equal but for float ties


def test_eager_backend_labels_are_the_networks_own(ckpt):
    """The reference above, eager, against the network called directly on the same edge-padded input."""
    import torch

    from dabnet.inference.segmenter import Segmenter
    from dabnet.io.preprocessing import edge_pad_images

    seg = Segmenter.from_checkpoint(ckpt, backend="eager", log=None)
    net = dabnet.load_model(ckpt).eval()
    rng = np.random.default_rng(0)
    for h, w in [(2, 2), (15, 9), (40, 56)]:
        im = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        with torch.no_grad():
            want = net(seg.normalize(edge_pad_images(im[None]))).argmax(1)[0, :h, :w].numpy()
        assert (seg.predict(im) == want).mean() >= 0.999, (h, w)
