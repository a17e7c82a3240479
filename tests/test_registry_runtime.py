"""One way in: a runtime registered from this file alone runs through predict, eval, bench and export; `describe`
says what a model is before any backend, and the predict path reads a checkpoint once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dabnet
from dabnet.cli import main
from dabnet.data.classes import CAMVID_CLASSES, CITYSCAPES_CLASSES, IMAGENET_MEAN
from dabnet.inference.spec import describe
from dabnet.io import checkpoint as C
from dabnet.runtimes import (
    ExportedFile,
    Runner,
    Runtime,
    backend_names,
    export_formats,
    exported_suffixes,
    register_runtime,
)
from dabnet.runtimes.registry import unregister_runtime

CALLS = {"prepare": 0, "run": 0, "load": 0, "export": 0}


class ToyRunner(Runner):
    """Runs a network as eager PyTorch would, counting calls: what a new runtime's runner must be."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.checkpoint_meta = dict(getattr(model, "checkpoint_meta", {}))
        self.model_name, self.num_classes = f"{model.model_name} (toy)", model.num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        CALLS["run"] += 1
        with torch.inference_mode():
            return self.model(x.float()).float()


def _prepare(model, precision="fp32", device="cpu", channels_last=None, calibration=None):
    CALLS["prepare"] += 1
    return ToyRunner(model)


def _export(model, path: Path) -> Path:
    CALLS["export"] += 1
    return C.save_checkpoint(C.make_checkpoint(model, **getattr(model, "checkpoint_meta", {})), path)


def _open(path: Path) -> ExportedFile:
    CALLS["load"] += 1
    net = C.read_network(path)  # read once: described now, built when run
    return ExportedFile(path, "toy", net.meta | {"num_classes": net.num_classes}, lambda precision, device: ToyRunner(C.build_model(net)))


TOY = Runtime("toy", "a test runtime: eager PyTorch, counted", _prepare, suffixes=(".toy",), open=_open,
              export_format="toyfile", export=_export)  # fmt: skip


@pytest.fixture
def toy():
    register_runtime(TOY)
    for k in CALLS:
        CALLS[k] = 0
    yield TOY
    unregister_runtime("toy")


@pytest.fixture(scope="module")
def camvid_ckpt(tmp_path_factory):
    """An 11-class checkpoint that says it is CamVid's."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("toy") / "m.pth"
    meta = {"dataset": "camvid:train", "mean": [100.0, 100.0, 100.0], "std": [60.0, 60.0, 60.0]}
    dabnet.save_checkpoint(C.make_checkpoint(dabnet.create_model("dabnet", 11).eval(), **meta), path)
    return path


def test_a_runtime_registered_here_is_a_backend_an_export_format_and_a_suffix(toy):
    assert "toy" in backend_names() and "toyfile" in export_formats() and ".toy" in exported_suffixes()
    with pytest.raises(ValueError, match="registered already"):
        register_runtime(TOY)
    with pytest.raises(ValueError, match="suffix .toy"):
        register_runtime(Runtime("toy2", "clash", _prepare, suffixes=(".toy",), open=_open))


def test_the_toy_runtime_through_predict_export_eval_and_bench(toy, camvid_ckpt, tmp_path, make_camvid, capsys):
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    # predict with the runtime preparing the network
    assert main(["predict", str(image), "--checkpoint", str(camvid_ckpt), "--backend", "toy", "--out", str(tmp_path / "p1")]) == 0
    assert CALLS["prepare"] == 1 and CALLS["run"] >= 1
    eager = dabnet.Segmenter.from_checkpoint(camvid_ckpt, backend="eager").predict(image)
    assert (np.array(Image.open(tmp_path / "p1" / "a_label.png")) == eager).all()
    # export in its format (checked by loading it back through the runtime), then predict on the file as it is
    out = tmp_path / "model.toy"
    assert main(["export", "--checkpoint", str(camvid_ckpt), "--format", "toyfile", "--out", str(out)]) == 0
    assert CALLS["export"] == 1 and CALLS["load"] == 1 and out.is_file()
    assert main(["predict", str(image), "--checkpoint", str(out), "--out", str(tmp_path / "p2")]) == 0
    assert CALLS["load"] == 2
    assert (np.array(Image.open(tmp_path / "p2" / "a_label.png")) == eager).all()
    spec = describe(out)
    assert spec.runtime == "toy" and spec.class_names == tuple(CAMVID_CLASSES) and spec.mean == (100.0, 100.0, 100.0)
    # eval
    root = make_camvid(tmp_path / "cv", splits=("val",), n=2)
    res = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(camvid_ckpt), "--backend", "toy", "--data-root", str(root), "--workers", "0",
                 "--json", str(res)]) == 0  # fmt: skip
    assert json.loads(res.read_text())["backend"] == "toy" and CALLS["prepare"] == 2
    # bench: a row of its own
    table = tmp_path / "bench.json"
    assert main(["bench", "--models", "dabnet", "--sizes", "32x48", "--backends", "toy", "eager", "--frames", "2", "--warmup", "0",
                 "--no-paper-protocol", "--json", str(table)]) == 0  # fmt: skip
    rows = json.loads(table.read_text())
    assert {r["backend"] for r in rows} >= {"toy", "eager"} and CALLS["prepare"] == 3
    assert "toy: a test runtime" in " ".join(_help("predict", capsys).split())  # as argparse wraps it
    assert main(["runtimes", "--json"]) == 0
    table = {r["backend"]: r for r in json.loads(capsys.readouterr().out)}
    assert table["toy"]["runs_files"] == [".toy"] and table["toy"]["export_format"] == "toyfile"
    assert table["openvino"]["labels_inside"] and table["openvino"]["calibrated"] == ["int8"]


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def test_describe_needs_no_backend_and_says_what_it_assumed(tmp_path, camvid_ckpt):
    spec = describe(camvid_ckpt)
    assert (spec.network, spec.num_classes, spec.source_format, spec.note) == ("dabnet", 11, "dabnet checkpoint", "")
    assert spec.class_names == tuple(CAMVID_CLASSES) and spec.std == (60.0, 60.0, 60.0)
    # an 11-class checkpoint that says nothing about its classes is not CamVid by guess
    bare = tmp_path / "bare.pth"
    dabnet.save_checkpoint(C.make_checkpoint(dabnet.create_model("dabnet", 11)), bare)
    spec = describe(bare)
    assert spec.class_names == tuple(f"class {i}" for i in range(11)) and spec.mean == IMAGENET_MEAN
    assert "no class names" in spec.note and "ImageNet" in spec.note
    assert describe("dabnet-camvid").source_format == "bundled weights dabnet-camvid"


def test_describe_recognises_official_checkpoints_by_their_keys_and_class_count(tmp_path, official_reference):
    official = tmp_path / "official.pth"
    torch.save({"epoch": 1, "model": official_reference[0]}, official)
    spec = describe(official)
    assert spec.source_format == "official DABNet checkpoint" and spec.class_names == tuple(CITYSCAPES_CLASSES)
    assert spec.std == (1.0, 1.0, 1.0) and "official" in spec.note


def test_the_predict_path_reads_the_checkpoint_once(camvid_ckpt, tmp_path, monkeypatch):
    reads = []
    real = C.read_checkpoint
    monkeypatch.setattr(C, "read_checkpoint", lambda path: reads.append(path) or real(path))
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["predict", str(image), "--checkpoint", str(camvid_ckpt), "--backend", "fold", "--out", str(tmp_path / "o")]) == 0
    assert reads == [camvid_ckpt] or [str(r) for r in reads] == [str(camvid_ckpt)]


def test_one_device_rule_for_every_command(monkeypatch, tmp_path):
    """auto: the GPU where there is one and the backend (or an exported file's runtime) runs there, else the CPU."""
    from dabnet.runtimes import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "auto") == "cpu" and resolve_device("auto", "eager") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", "auto") == "cuda" and resolve_device("auto", "eager") == "cuda"
    assert resolve_device("auto", "openvino") == "cpu" and resolve_device("auto", "onnxruntime") == "cpu"
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "m.xml").write_bytes(b"")
    assert resolve_device("auto", "auto", str(tmp_path / "m.onnx")) == "cpu"
    assert resolve_device("auto", "auto", str(tmp_path / "m.xml")) == "cpu"
    assert resolve_device("cpu", "eager") == "cpu" and resolve_device("cuda:1", "eager") == "cuda:1"


@pytest.mark.slow  # it imported a compiled OpenVINO model
def test_eval_with_a_cpu_backend_on_a_gpu_machine_runs_on_the_cpu(monkeypatch, tmp_path, make_camvid):
    """The README's `eval --backend openvino` on a machine with a GPU: auto picks the CPU for that backend
    (it refused before), and predictions meet the confusion matrix on its device."""
    pytest.importorskip("openvino")
    import dabnet
    from dabnet.commands.evaluate import run_evaluation
    from dabnet.config import EvalConfig
    from dabnet.io.checkpoint import make_checkpoint

    root = make_camvid(tmp_path / "cv", splits=("val",), n=2)
    ckpt = tmp_path / "m.pth"
    dabnet.save_checkpoint(make_checkpoint(dabnet.create_model("dabnet", 11)), ckpt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    result = run_evaluation(EvalConfig(checkpoint=str(ckpt), data_root=str(root), backend="openvino", precision="fp32",
                                       workers=0), log=lambda *a: None)  # fmt: skip
    assert result["images"] == 2 and result["backend"].startswith("openvino")
