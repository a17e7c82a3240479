"""commands.export: exports that are checked, never replace a good file with a bad one, and never write over an input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import digest

import dabnet
from dabnet.cli import main
from dabnet.models.layers import MaxUnpool2x, PaddedNet
from dabnet.util.hardware import cpu_has_bf16


@pytest.mark.slow  # it exported to ONNX
def test_export_tolerance_follows_the_logits_and_a_failed_check_keeps_no_file(ckpt, tmp_path, monkeypatch):  # row 2
    pytest.importorskip("onnxruntime")
    import dabnet.commands.export as E

    model = dabnet.load_model(ckpt)
    with torch.no_grad():
        model.classifier.weight.mul_(300.0)  # logits in the hundreds, like a trained network's and beyond
    res = E.export_model(model, "onnx", tmp_path / "big.onnx")
    assert res["max_abs_logit"] > 100 and res["tolerance"] == pytest.approx(1e-4 * res["max_abs_logit"])

    import dataclasses

    from dabnet.runtimes import get_runtime
    from dabnet.runtimes import registry as reg

    ort = get_runtime("onnxruntime")
    wrong = dataclasses.replace(ort, open=lambda path: dataclasses.replace(
        ort.open(path), make=lambda precision, device, r=ort.open(path).make("fp32", "cpu"): (lambda x: r(x) + 1.0)))
    monkeypatch.setitem(reg._RUNTIMES, "onnxruntime", wrong)
    with pytest.raises(E.ExportError, match="nothing was written"):
        E.export_model(dabnet.load_model(ckpt), "onnx", tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.slow  # it exported to ONNX
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_failed_or_interrupted_export_leaves_the_good_file_in_place(ckpt, tmp_path, monkeypatch, fmt):
    """Every export is written and checked in a temporary folder, then renamed: a good file already at --out
    survives an export that fails its check, or is interrupted (Ctrl-C) in the middle."""
    import dabnet.commands.export as E
    from dabnet.runtimes import registry as reg

    target = tmp_path / f"t.{'onnx' if fmt == 'onnx' else 'pt'}"
    E.export_model(dabnet.load_model(ckpt), fmt, target)
    good = target.read_bytes()
    runtime = reg.runtime_for_export(fmt)

    def interrupted(path):
        raise KeyboardInterrupt

    import dataclasses

    monkeypatch.setitem(reg._RUNTIMES, runtime.name, dataclasses.replace(runtime, open=interrupted))
    with pytest.raises(KeyboardInterrupt):
        E.export_model(dabnet.load_model(ckpt), fmt, target)
    assert target.read_bytes() == good
    def off(path, r=runtime):
        file = r.open(path)
        return dataclasses.replace(file, make=lambda precision, device: (lambda x, f=file.make(precision, device): f(x) + 1.0))

    monkeypatch.setitem(reg._RUNTIMES, runtime.name, dataclasses.replace(runtime, open=off))
    with pytest.raises(E.ExportError, match="nothing was written"):
        E.export_model(dabnet.load_model(ckpt), fmt, target)
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary folder left behind


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_never_writes_over_its_checkpoint(ckpt, tmp_path, capsys, fmt):
    victim = tmp_path / "victim.pth"
    victim.write_bytes(ckpt.read_bytes())
    before = digest(victim)
    assert main(["export", "--checkpoint", str(victim), "--format", fmt, "--out", str(victim)]) == 2
    assert "is also read by this command" in capsys.readouterr().err
    assert digest(victim) == before
    assert main(["export", "--checkpoint", str(victim), "--format", fmt, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.slow  # it exported to ONNX
@pytest.mark.parametrize("name", dabnet.list_models())
def test_every_registered_model_exports_to_onnx_and_runs_in_onnxruntime(name, tmp_path, export_parity):
    pytest.importorskip("onnxruntime")
    from dabnet.commands.export import export_model

    torch.manual_seed(0)
    model = dabnet.create_model(name, 5).eval()
    if any(getattr(m, "onnx_blocker", None) for m in model.modules()):  # refused up front, with the reason
        with pytest.raises(ValueError, match=f"{name} cannot be written to ONNX with dynamic sizes: it has pyramid"):
            export_model(model, "onnx", tmp_path / f"{name}.onnx")
        assert not (tmp_path / f"{name}.onnx").exists()
        return
    export_model(model, "onnx", tmp_path / f"{name}.onnx")
    export_parity(model, tmp_path / f"{name}.onnx", "fp32")


@pytest.mark.slow  # it converted a model to OpenVINO
@pytest.mark.parametrize("name", ["enet", "segnet"])
def test_max_unpooling_networks_export_to_openvino(name, tmp_path, export_parity):
    """Compared in fp32, pinned: on CPUs with native bf16 the plugin's default is bf16, whose rounding moves the
    arg-max of max-unpooling's windows (export reports that agreement beside fp32's)."""
    pytest.importorskip("openvino")
    from dabnet.commands.export import export_model

    torch.manual_seed(0)
    model = dabnet.create_model(name, 5).eval()
    result = export_model(model, "openvino", tmp_path / f"{name}.xml")
    assert result["label_agreement_at"]["fp32"] >= 0.99
    export_parity(model, tmp_path / f"{name}.xml", "fp32")


class TinyUnpool(PaddedNet):
    """Two max-poolings undone by max-unpooling, as ENet and SegNet do, in a network that converts in a second: its
    labels follow which element of each window is largest, which bf16's rounding changes."""

    model_name, num_classes, size_multiple = "tiny-unpool", 5, 4

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.enc1, self.enc2 = torch.nn.Conv2d(3, c, 3, padding=1), torch.nn.Conv2d(c, c, 3, padding=1)
        self.mid, self.head = torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.Conv2d(c, 5, 3, padding=1)
        self.unpool = MaxUnpool2x()

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        y, first = F.max_pool2d(torch.relu(self.enc1(x)), 2, 2, return_indices=True)
        y, second = F.max_pool2d(torch.relu(self.enc2(y)), 2, 2, return_indices=True)
        return self.head(self.unpool(self.mid(self.unpool(y, second)), first))


@pytest.mark.slow  # it converted a model to OpenVINO
def test_openvino_export_reports_labels_at_fp32_and_at_the_plugins_default_precision(tmp_path, cpu_kind, export_parity):
    """A user who loads the IR with plain OpenVINO gets the plugin's default on their CPU (bf16 where the CPU has it):
    export measures the labels there too and names that precision; fp32 decides whether the file is kept. Compared
    in fp32, pinned, the file agrees on every kind of CPU."""
    pytest.importorskip("openvino")
    from dabnet.commands.export import check_summary, export_model

    torch.manual_seed(0)
    model = TinyUnpool().eval()
    result = export_model(model, "openvino", tmp_path / "m.xml")
    default = {"f32": "fp32", "bf16": "bf16"}[cpu_kind.plugin_precision]
    at = result["label_agreement_at"]
    assert result["default_precision"] == default and list(at) == list(dict.fromkeys(["fp32", default])) and at["fp32"] >= 0.99
    line = check_summary(result)
    assert "; labels on the checked images agree on 100.00% at fp32" in line, line
    if default == "fp32":
        assert "plain load" not in line
    elif cpu_has_bf16():  # the kind has bf16 and oneDNN runs it here (the runner's own test): measured, a number
        assert isinstance(at["bf16"], float) and 0.0 <= at["bf16"] <= 1.0, at
        plain = "(bf16: what a plain load of the file runs in on this CPU; docs/deploying.md shows how to pin fp32)"
        assert f"{100 * at['bf16']:.2f}% at bf16 {plain}" in line, line
    else:  # oneDNN cannot run bf16 here (capped, or an older CPU): not measured, and the line says so
        assert at["bf16"] is None and "(not measured: cannot run here) at bf16 (bf16:" in line, line
    export_parity(model, tmp_path / "m.xml", "fp32")
