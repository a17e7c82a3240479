"""commands.export: exports that are checked, never replace a good file with a bad one, and never write over an input."""

from __future__ import annotations

import pytest
import torch
from helpers import digest

import dabnet
from dabnet.cli import main


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
    export_parity(model, tmp_path / f"{name}.onnx")


@pytest.mark.parametrize("name", ["enet", "segnet"])
def test_max_unpooling_networks_export_to_openvino(name, tmp_path, export_parity):
    pytest.importorskip("openvino")
    from dabnet.commands.export import export_model

    torch.manual_seed(0)
    model = dabnet.create_model(name, 5).eval()
    export_model(model, "openvino", tmp_path / f"{name}.xml")
    export_parity(model, tmp_path / f"{name}.xml")
