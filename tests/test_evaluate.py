"""eval scores the labels predict writes: both take `runtimes.predict_image_labels` (the Segmenter's runner and
normalisation, the same padding and arg-max), so the confusion matrix `dabnet eval` sums equals the one counted from
the label files `dabnet predict --save label` writes, on real CamVid frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dabnet.commands.evaluate as ev
from dabnet.commands.predict import run_predict
from dabnet.config import EvalConfig, PredictConfig
from dabnet.data.datasets import CamVid

FRAMES = 3  # of the shared val split: enough frames for every class to be predicted somewhere, few enough to be quick


@pytest.fixture(scope="module")
def few_val_frames(camvid_root: Path, tmp_path_factory) -> Path:
    """A CamVid root whose val split is the first FRAMES frames of the shared one (links, no copies)."""
    root = tmp_path_factory.mktemp("camvid-few")
    names = sorted(p.name for p in (camvid_root / "val").glob("*.png"))[:FRAMES]
    for split in ("val", "valannot"):
        (root / split).mkdir()
        for name in names:
            (root / split / name).symlink_to(camvid_root / split / name)
    return root


def _eval_matrix(root: Path, backend: str, monkeypatch) -> np.ndarray:
    """The confusion matrix `run_evaluation` computes (rows: truth, columns: prediction), as it sums it."""
    seen = []
    real = ev.evaluate

    def spy(*args, **kwargs):
        cm = real(*args, **kwargs)
        seen.append(cm.mat.cpu().numpy().copy())
        return cm

    monkeypatch.setattr(ev, "evaluate", spy)
    ev.run_evaluation(EvalConfig(checkpoint="dabnet-camvid", data_root=str(root), workers=0, device="cpu", backend=backend),
                      log=lambda *a: None)  # fmt: skip
    assert len(seen) == 1
    return seen[0]


def _predict_matrix(root: Path, out: Path, backend: str, batch_size: int) -> np.ndarray:
    """The confusion matrix of the label files `dabnet predict --save label` writes, against the val masks."""
    cfg = PredictConfig(inputs=[str(root / "val")], checkpoint="dabnet-camvid", out=str(out), backend=backend, device="cpu",
                        save=["label"], workers=0, batch_size=batch_size)  # fmt: skip
    assert run_predict(cfg, log=lambda *a: None) == 0
    ds = CamVid(root, "val")
    conf = np.zeros((len(ds.classes),) * 2, np.int64)
    for i, (image_path, _) in enumerate(ds.pairs):
        _, mask = ds[i]  # ignored pixels are 255, as eval sees them
        labels = np.asarray(Image.open(out / f"{image_path.stem}_label.png"))
        assert labels.shape == mask.shape
        keep = mask != ds.ignore_index
        np.add.at(conf, (mask[keep].astype(np.int64), labels[keep].astype(np.int64)), 1)
    return conf


@pytest.mark.parametrize("batch_size", [1, 2])  # predict's stream (one frame at a time) and its batches
def test_eval_scores_the_labels_predict_writes_eager(few_val_frames, tmp_path, monkeypatch, batch_size):
    want = _predict_matrix(few_val_frames, tmp_path / "out", "eager", batch_size)
    got = _eval_matrix(few_val_frames, "eager", monkeypatch)
    assert want.sum() > 0 and (np.diag(want) > 0).sum() >= 5  # real predictions of several classes
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow  # the default CPU backend (auto) quantizes with OpenVINO (NNCF) on a cold cache
def test_eval_scores_the_labels_predict_writes_default_backend(few_val_frames, tmp_path, monkeypatch):
    want = _predict_matrix(few_val_frames, tmp_path / "out", "auto", 1)
    got = _eval_matrix(few_val_frames, "auto", monkeypatch)
    assert want.sum() > 0 and (np.diag(want) > 0).sum() >= 5
    np.testing.assert_array_equal(got, want)
