"""eval scores the labels predict writes: both take `runtimes.predict_image_labels` (the Segmenter's runner and
normalisation, the same padding and arg-max), so the confusion matrix `dabnet eval` sums equals the one counted from
the label files `dabnet predict --save label` writes; training's validation takes the same route."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import dabnet
import dabnet.commands.evaluate as ev
from dabnet.commands.predict import run_predict
from dabnet.config import EvalConfig, PredictConfig
from dabnet.data.datasets import CamVid, collate_eval
from dabnet.data.transforms import EvalTransform
from dabnet.training.engine import evaluate

FRAMES = 3  # of the shared val split: real predictions of most classes, few enough frames to be quick


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


def _eval_matrix(checkpoint: str, root: Path, backend: str, monkeypatch) -> np.ndarray:
    """The confusion matrix `run_evaluation` computes (rows: truth, columns: prediction), as it sums it."""
    seen = []
    real = ev.evaluate

    def spy(*args, **kwargs):
        cm = real(*args, **kwargs)
        seen.append(cm.mat.cpu().numpy().copy())
        return cm

    monkeypatch.setattr(ev, "evaluate", spy)
    ev.run_evaluation(EvalConfig(checkpoint=checkpoint, data_root=str(root), workers=0, device="cpu", backend=backend),
                      log=lambda *a: None)  # fmt: skip
    assert len(seen) == 1
    return seen[0]


def _matrix(ds, labels_of) -> np.ndarray:
    """The confusion matrix of `labels_of(index, image path)` against the dataset's masks (255: ignored, as in eval)."""
    conf = np.zeros((len(ds.classes),) * 2, np.int64)
    for i, (image_path, _) in enumerate(ds.pairs):
        _, mask = ds.load_pair(i)
        labels = labels_of(i, image_path)
        assert labels.shape == mask.shape
        keep = mask != ds.ignore_index
        np.add.at(conf, (mask[keep].astype(np.int64), labels[keep].astype(np.int64)), 1)
    return conf


def _predict_matrix(checkpoint: str, root: Path, out: Path, backend: str, batch_size: int) -> np.ndarray:
    """The confusion matrix of the label files `dabnet predict --save label` writes, against the val masks."""
    cfg = PredictConfig(inputs=[str(root / "val")], checkpoint=checkpoint, out=str(out), backend=backend, device="cpu",
                        save=["label"], workers=0, batch_size=batch_size)  # fmt: skip
    assert run_predict(cfg, log=lambda *a: None) == 0
    return _matrix(CamVid(root, "val"), lambda i, path: np.asarray(Image.open(out / f"{path.stem}_label.png")))


@pytest.mark.integration
def test_eval_scores_the_labels_predict_writes_eager(few_val_frames, tmp_path, monkeypatch):
    got = _eval_matrix("dabnet-camvid", few_val_frames, "eager", monkeypatch)
    for batch_size in (1, 2):  # predict's stream (one frame at a time) and its batches
        want = _predict_matrix("dabnet-camvid", few_val_frames, tmp_path / f"out{batch_size}", "eager", batch_size)
        assert (np.diag(want) > 0).sum() >= 5  # real predictions, of several classes
        np.testing.assert_array_equal(got, want)


@pytest.mark.integration
@pytest.mark.slow  # the default CPU backend (auto) quantizes with OpenVINO (NNCF) on a cold cache
def test_eval_scores_the_labels_predict_writes_default_backend(few_val_frames, tmp_path, monkeypatch):
    want = _predict_matrix("dabnet-camvid", few_val_frames, tmp_path / "out", "auto", 1)
    got = _eval_matrix("dabnet-camvid", few_val_frames, "auto", monkeypatch)
    assert (np.diag(want) > 0).sum() >= 5
    np.testing.assert_array_equal(got, want)


def test_eval_scores_the_labels_predict_writes_on_synthetic_frames(ckpt, make_camvid, tmp_path, monkeypatch):
    """The same, without the shared data: an untrained network on tiny frames, images of two sizes in one split."""
    root = make_camvid(tmp_path / "cv", splits=("val",), n=3)
    small = root / "val" / "f002.png"  # 12x20: edge-padded to the smallest side every runtime takes, and cropped back
    Image.fromarray(np.asarray(Image.open(small))[:12, :20]).save(small)
    Image.fromarray(np.asarray(Image.open(root / "valannot" / "f002.png"))[:12, :20]).save(root / "valannot" / "f002.png")
    want = _predict_matrix(str(ckpt), root, tmp_path / "out", "eager", 1)
    got = _eval_matrix(str(ckpt), root, "eager", monkeypatch)
    assert want.sum() > 0
    np.testing.assert_array_equal(got, want)


def test_validation_in_training_scores_what_the_network_predicts(ckpt, make_camvid, tmp_path):
    """engine.evaluate of the network being trained (a module, run in place) counts the labels its Segmenter gives."""
    root = make_camvid(tmp_path / "cv", splits=("val",), n=4)
    model = dabnet.load_model(ckpt)
    seg = dabnet.Segmenter.for_model(model)
    want = _matrix(CamVid(root, "val"), lambda i, path: seg.predict(path))
    ds = CamVid(root, "val", transform=EvalTransform())
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_eval)
    model.train()  # as training leaves it: validation runs it in eval mode (BatchNorm's running statistics)
    got = evaluate(model, loader, len(ds.classes), torch.device("cpu"), ds.ignore_index, normalize=seg.normalize)
    assert want.sum() > 0
    np.testing.assert_array_equal(got.mat.numpy(), want)
    assert not model.training
