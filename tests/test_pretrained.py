"""Safetensors weights, names of bundled weights, and the trained model shipped in the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import dabnet
from dabnet.commands.demo import bundled_weights_available, run_demo, sample_frames
from dabnet.config import DemoConfig
from dabnet.inference.segmenter import Segmenter
from dabnet.io.checkpoint import make_checkpoint, resolve_checkpoint, save_safetensors
from dabnet.io.images import read_image

REQUIRED_META = ["model_name", "num_classes", "class_names", "palette", "mean", "std", "config", "data_splits",
                 "val_miou", "val_per_class_iou", "sample_frames_miou", "epoch"]  # fmt: skip


def test_safetensors_round_trip_keeps_weights_and_metadata(tmp_path):
    model = dabnet.create_model("dabnet", 11, block_2=4)
    ckpt = make_checkpoint(model, class_names=["a"] * 11, mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0], val_miou=0.5)
    path = save_safetensors(ckpt, tmp_path / "w.safetensors")
    loaded = dabnet.load_model(path)
    assert len(loaded.block2) == 4 and loaded.checkpoint_meta["val_miou"] == 0.5
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    seg = Segmenter.from_checkpoint(path, backend="eager")
    assert seg.class_names == ["a"] * 11
    torch.testing.assert_close(torch.tensor(seg.mean), torch.tensor([1.0, 2.0, 3.0]))


def test_unknown_name_lists_bundled_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="dabnet-camvid"):
        dabnet.load_model(tmp_path / "dabnet-camvdi")


bundled = pytest.mark.skipif(not bundled_weights_available(), reason="no trained weights in this checkout")


@bundled
def test_bundled_weights_load_by_name_with_complete_metadata():
    path = resolve_checkpoint("dabnet-camvid")
    assert path.stat().st_size <= 4 * 2**20 and str(path).endswith(dabnet.models.pretrained_config("dabnet-camvid").file)
    model = dabnet.load_model("dabnet-camvid")
    meta = model.checkpoint_meta
    missing = [k for k in REQUIRED_META if k not in meta]
    assert not missing, missing
    assert model.model_name == "dabnet" and model.num_classes == 11 and len(meta["class_names"]) == 11
    # Chosen on a split it never trained on: val (v1), held-out drives (v2), or, trained on every frame, by a rule
    # written down before the run ended (v3).
    splits = meta["data_splits"]
    assert (splits["val"] == "val" or splits.get("holdout")) and meta["config"]["dataset"] == "camvid"
    assert 0 < meta["val_miou"] <= 1 and set(meta["val_per_class_iou"]) == set(meta["class_names"])
    if not meta.get("val_trained_on"):
        return  # v1, v2: the epoch that scored best on a split never trained on (above)
    # v3, trained on every frame: the rule, written down before the run ended, is what made these weights. Its
    # words are read back and checked against what `dabnet average` recorded and the run's own config.
    rule = re.fullmatch(r"the mean of the last (\d+) epochs of the (\d+) \(epochs (\d+)-(\d+), kept by keep_every: (\d+)\), "
                        r"made by `dabnet average`; no other candidate is considered", meta["selection_rule"])  # fmt: skip
    assert rule, meta["selection_rule"]
    n, of, first, last, keep_every = map(int, rule.groups())
    averaged = [a["epoch"] for a in meta["averaged_from"]]
    assert averaged == list(range(first, last + 1, keep_every)) and len(averaged) == n, (averaged, meta["selection_rule"])
    assert last == of == meta["epochs_run"] == meta["config"]["epochs"] == meta["epoch"] and keep_every == meta["config"]["keep_every"]
    assert meta["trained_on_every_labelled_frame"] and not splits.get("holdout") and meta.get("holdout_miou") is None


@bundled
def test_bundled_model_keeps_its_accuracy_on_the_sample_frames():
    """Regression guard: loading, preprocessing and the network must reproduce the recorded figure."""
    from dabnet.commands.demo import sample_ground_truth
    from dabnet.util.metrics import ConfusionMatrix

    seg = Segmenter.from_checkpoint("dabnet-camvid", backend="eager")
    cm = ConfusionMatrix(11)
    for frame in sample_frames():
        cm.update(torch.from_numpy(seg.predict(read_image(frame))), torch.from_numpy(sample_ground_truth(frame)))
    recorded = seg.meta["sample_frames_miou"]
    if "sample_frames" in seg.meta:  # weights packaged since the demo frames became swappable name the frames measured
        assert [f.stem for f in sample_frames()] == seg.meta["sample_frames"], "demo frames changed: re-run scripts/package_weights.py"
    assert cm.compute()["miou"] >= recorded - 0.005


@bundled
@pytest.mark.slow  # the default backend's int8 IR (NNCF)
def test_demo_uses_the_bundled_weights(tmp_path):
    lines = []
    run_demo(DemoConfig(out=str(tmp_path / "demo")), log=lines.append)
    text = "\n".join(lines)
    assert "weights: dabnet-camvid" in text and "UNTRAINED" not in text
    assert len(list((tmp_path / "demo").glob("*_overlay.png"))) == len(sample_frames())


def test_describe_prints_the_cards_key_figures_from_the_weights_own_metadata(capsys):
    from dabnet.cli import main
    from dabnet.io.checkpoint import read_network

    meta = read_network("dabnet-camvid").meta
    assert main(["describe", "dabnet-camvid"]) == 0
    out = capsys.readouterr().out
    assert f"chosen by: {meta['selection_rule']}" in out
    assert f"trained: {meta['epochs_run']} epochs, {meta['trained_minutes'] / 60:.1f} hours" in out
    assert f"val {100 * meta['val_miou']:.2f}% (trained on" in out and "CamVid test: not measured here" in out
    assert f"hardware: {meta['hardware']}" in out and "best epoch on its val set" not in out


def test_reports_name_the_weights_they_measured():
    """Each report whose script names its weights (inference.spec.weights_identity) names them as they are now:
    reports measured on other weights (before a re-packaging, say) must be regenerated."""
    from dabnet.inference.spec import weights_identity
    from dabnet.io.checkpoint import read_network

    meta = read_network("dabnet-camvid").meta
    line = weights_identity("dabnet-camvid")
    assert line.startswith("dabnet-camvid (dabnet; ") and f"{meta['epochs_run']} epochs" in line and meta["dataset"] in line
    root = Path(__file__).resolve().parents[1]
    naming = {p.name for p in (root / "benchmarks").glob("*.py") if "weights_identity(args.checkpoint)" in p.read_text()}
    checked = []
    for report in sorted((root / "docs" / "reports").glob("*.md")):
        text = report.read_text()
        script = re.search(r"Generated by `python benchmarks/(\w+\.py)([^`]*)`", text)
        if script is None or script.group(1) not in naming:
            continue
        given = re.search(r"--checkpoint (\S+)", script.group(2))
        weights = given.group(1) if given else "dabnet-camvid"  # the scripts' default
        assert f"Weights: {weights_identity(weights)}." in text, (report.name, re.findall(r"Weights: [^\n]*", text))
        checked.append(report.name)
    assert len(checked) >= 4, checked  # OV_PROFILE, INT8_ROOFLINE, PREDICT_SPEED, AVX2_EMULATED at least
