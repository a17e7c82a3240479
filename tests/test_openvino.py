"""The openvino runtime (fp32, bf16, int8), its IR cache and export, and the `auto` backend's choices."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cpu_kinds import KINDS, assert_onednn_capped

import dabnet
from dabnet.cli import main
from dabnet.commands.demo import sample_frames
from dabnet.inference.segmenter import Segmenter
from dabnet.io.images import read_image
from dabnet.runtimes import MIN_INT8_AGREEMENT, calibration_batches, choose_auto, cpu_has_bf16, predict_labels, prepare
from dabnet.util.hardware import onednn_bf16
from dabnet.util.metrics import labels_from_logits

pytest.importorskip("openvino")


def quantized_ops(ov_model) -> int:
    """How many ops of `ov_model` are NNCF's quantization: FakeQuantize / FakeConvert nodes, or u8/i8 constants (the
    compressed int8 weights). The float IR has none."""
    return sum(op.get_type_name() in ("FakeQuantize", "FakeConvert")
               or (op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("u8", "i8"))
               for op in ov_model.get_ops())  # fmt: skip


@pytest.fixture(scope="module")
def bundled():
    """The bundled weights, its Segmenter (eager fp32) and the bundled frames, normalised."""
    model = dabnet.load_model("dabnet-camvid")
    seg = Segmenter.for_model(model)
    frames = torch.cat([seg.preprocess([read_image(p)]) for p in sample_frames()])
    return model, seg, frames


# int8 must reach what `auto` requires of it (MIN_INT8_AGREEMENT) on the bundled frames. Each precision is the one
# the runner pins (int8's float layers: the plugin's default, which the runner names).
@pytest.mark.parametrize("precision,min_agreement", [("fp32", 0.9999), ("bf16", 0.995),
                                                     pytest.param("int8", MIN_INT8_AGREEMENT, marks=pytest.mark.slow)])  # NNCF quantizes
@pytest.mark.slow  # it compiled an OpenVINO model
def test_each_precision_agrees_with_eager_fp32(bundled, precision, min_agreement):
    if precision == "bf16" and not cpu_has_bf16():
        with pytest.raises(ValueError, match="native bf16"):
            prepare(bundled[0], "openvino", "bf16")
        return
    pytest.importorskip("nncf") if precision == "int8" else None
    model, seg, x = bundled
    calibration = calibration_batches(seg.mean, seg.std) if precision == "int8" else None
    run = prepare(model, "openvino", precision, calibration=calibration)
    assert (quantized_ops(run.ov_model) > 0) == (precision == "int8"), precision  # int8 really is the quantized IR
    hint = run.compiled().get_property("INFERENCE_PRECISION_HINT").get_type_name()
    assert hint == {"fp32": "f32", "bf16": "bf16"}.get(precision, run.inference_precision), (precision, hint)
    with torch.inference_mode():
        ref = model(x)
    out = run(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > min_agreement
    if precision == "fp32":
        assert (out - ref).abs().max() < 1e-3
    odd = run(x[:, :, :97, :131])  # dynamic height and width, odd sizes included
    assert odd.shape == (len(x), 11, 97, 131)
    # The arg-max inside OpenVINO gives the arg-max of the same run's logits, as uint8.
    run.host_upsample = False
    in_graph = run.labels(x[:, :, :97, :131])
    assert in_graph.dtype == torch.uint8 and torch.equal(in_graph.long(), labels_from_logits(odd))
    # By default the labels come from the low-resolution logits (upsampled_argmax, fp32): the same labels,
    # up to the pixels where the graph's own upsampling (bf16 for bf16 and int8) rounds two classes level.
    run.host_upsample = True
    labels = run.labels(x[:, :, :97, :131])
    agreement = (labels == in_graph).float().mean().item()
    assert labels.dtype == torch.uint8 and (agreement == 1.0 if precision == "fp32" else agreement > 0.998), agreement
    # uint8 frames straight in (conversion and normalisation inside the graph): the labels of the float path.
    images = [read_image(p)[:97, :131] for p in sample_frames()]
    inside = run.image_labels(np.stack(images), seg.normalize)
    assert inside.dtype == torch.uint8 and (inside == run.labels(seg.preprocess(images))).float().mean() > 0.999


@pytest.mark.slow  # it imported a compiled OpenVINO model
def test_segmenter_feeds_openvino_uint8_frames_tiny_ones_padded_as_the_float_path_pads(bundled, monkeypatch):
    model, seg, _ = bundled
    ov_seg = Segmenter.for_model(model, runner=prepare(model, "openvino", "fp32"), backend="openvino")
    calls = []
    monkeypatch.setattr(ov_seg.run, "image_labels", lambda *a, _f=ov_seg.run.image_labels: calls.append(a[0].shape) or _f(*a))
    frame = read_image(sample_frames()[0])
    for crop in (frame[:5, :7], frame[:40, :3], frame[:64, :96]):
        got = ov_seg.predict(crop)
        want = predict_labels(ov_seg.run, seg.preprocess([crop]))[0].numpy()
        assert got.shape == crop.shape[:2] and (got == want).mean() > 0.999
    assert calls == [(1, 16, 16, 3), (1, 40, 16, 3), (1, 64, 96, 3)]  # padded to 16 a side by edge replication


@pytest.mark.slow  # int8: NNCF quantizes
def test_int8_is_quantized_once_then_read_from_the_cache(bundled, monkeypatch, tmp_path):
    pytest.importorskip("nncf")
    import dabnet.runtimes.openvino as ovr

    model, seg, x = bundled
    calibration = calibration_batches(seg.mean, seg.std)
    first = ovr.openvino_runner(model, "int8", calibration, cache_dir=tmp_path)
    (folder,) = [p for p in (tmp_path / "openvino").iterdir() if p.is_dir()]
    assert (folder / "model.xml").is_file() and first.info["agreement"] > 0.98 and quantized_ops(first.ov_model) > 0
    assert json.loads((folder / "entry.json").read_text())["info"]["versions"]["openvino"]

    def no_quantizing(*a, **k):
        raise AssertionError("quantized again despite the cache")

    monkeypatch.setattr(ovr, "quantize", no_quantizing)
    monkeypatch.setattr(ovr, "convert", no_quantizing)
    second = ovr.openvino_runner(model, "int8", calibration, cache_dir=tmp_path)
    assert quantized_ops(second.ov_model) == quantized_ops(first.ov_model)  # the quantized IR, read back
    assert torch.equal(first(x), second(x))
    # Other weights are another cache entry.
    other = dabnet.create_model("dabnet", 11).eval()
    from dabnet.runtimes.cache import cache_key

    assert cache_key(other, "int8", calibration) != cache_key(model, "int8", calibration)
    # So is other code with the same weights (a changed forward in a development install).
    class Doubled(type(model)):
        def forward(self, x):
            return super().forward(x) * 2

    doubled = copy.copy(model)
    doubled.__class__ = Doubled
    assert cache_key(doubled, "float") != cache_key(model, "float")


@pytest.mark.slow  # auto's int8 IR (NNCF)
def test_auto_runs_openvino_and_says_why(tmp_path):
    """What auto picks on this machine, by the policy as written (AVX2 and NNCF: int8, whose float layers run in the
    plugin's default precision, which the name says; native bf16: bf16), read from the CPU's own flags (as
    dabnet reads them: an emulated kind's under --cpu-kind) rather than from choose_auto."""
    import importlib.util

    import openvino

    from dabnet.util.hardware import read_cpuinfo

    flags = set(read_cpuinfo().split())
    default = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    expected = (f"openvino int8 (float layers in {default})" if "avx2" in flags and importlib.util.find_spec("nncf")
                else "openvino bf16" if flags & {"avx512_bf16", "amx_bf16"} else "openvino")  # fmt: skip
    lines = []
    seg = Segmenter.from_checkpoint("dabnet-camvid", log=lines.append)
    _, _, why = choose_auto("cpu")
    assert seg.backend == expected and lines == [f"backend auto -> {seg.backend}: {why}"]
    assert (quantized_ops(seg.run.ov_model) > 0) == ("int8" in expected)  # int8 runs the quantized IR
    label = seg.predict(read_image(sample_frames()[0]))
    eager = Segmenter.from_checkpoint("dabnet-camvid", backend="eager").predict(read_image(sample_frames()[0]))
    assert (label == eager).mean() > 0.98


def test_auto_falls_back_to_fold_without_openvino(monkeypatch):
    for name in [n for n in sys.modules if n.split(".")[0] in ("openvino", "nncf")] + ["openvino"]:
        monkeypatch.setitem(sys.modules, name, None)  # the import now fails, as on a machine without it
    assert choose_auto("cpu")[:2] == ("fold", "fp32")
    lines = []
    seg = Segmenter.from_checkpoint("dabnet-camvid", log=lines.append)
    assert seg.backend == "fold" and "OpenVINO is not installed" in lines[0]


def test_auto_falls_back_to_fold_when_openvino_fails(monkeypatch):
    import dabnet.runtimes.auto as S

    real = S.prepare

    def broken(model, backend, *a, **k):
        if backend == "openvino":
            raise RuntimeError("Exception from src/inference/src/cpp/core.cpp: cannot compile")
        return real(model, backend, *a, **k)

    monkeypatch.setattr(S, "prepare", broken)
    lines = []
    seg = Segmenter.from_checkpoint("dabnet-camvid", log=lines.append)
    assert seg.backend == "fold" and "openvino int8 could not run this model (RuntimeError" in lines[0]


@pytest.mark.slow  # auto's int8 IR (NNCF)
def test_auto_falls_back_when_openvino_fails_only_at_compilation(monkeypatch):
    import dabnet.runtimes.openvino as ovr

    def cannot_compile(self, *args, **kwargs):
        raise RuntimeError("Exception from src/plugins/intel_cpu: unsupported")

    monkeypatch.setattr(ovr.OpenVINORunner, "request", cannot_compile)  # each graph is compiled on first use
    lines = []
    seg = Segmenter.from_checkpoint("dabnet-camvid", log=lines.append)
    assert seg.backend == "fold" and "openvino int8 could not run this model (RuntimeError" in lines[0]


def test_predict_labels_uses_the_runners_own_labels():
    from dabnet.runtimes import Runner as Base

    class Runner(Base):
        def __call__(self, x):
            return torch.zeros(1, 3, 2, 2)

        def labels(self, x):
            return torch.full((1, 2, 2), 7, dtype=torch.uint8)

    x = torch.zeros(1, 3, 2, 2)
    assert predict_labels(Runner(), x).eq(7).all()
    assert predict_labels(Runner().__call__, x).eq(0).all()  # a plain callable: arg-max of its logits


@pytest.mark.slow  # auto's int8 IR (NNCF)
def test_auto_drops_int8_that_disagrees_with_fp32(monkeypatch):
    pytest.importorskip("nncf")
    import dabnet.runtimes.auto as S
    from dabnet.runtimes import get_runtime

    monkeypatch.setattr(S, "MIN_INT8_AGREEMENT", 1.01)  # no quantization can pass this
    monkeypatch.setattr(S, "choose_auto", lambda device: ("openvino", "int8", "test"))
    lines = []
    seg = Segmenter.from_checkpoint("dabnet-camvid", log=lines.append)
    fallback = "bf16" if cpu_has_bf16() else "fp32"
    assert seg.backend == get_runtime("openvino").label_for(fallback) and "int8 agreed with fp32 on only" in lines[0]


@pytest.mark.parametrize("kind", [*KINDS, "old-x86"])
@pytest.mark.parametrize("have_nncf", [True, False])
def test_auto_choice_for_each_kind_of_cpu(monkeypatch, kind, have_nncf):
    """choose_auto on each kind of CPU, from the flags dabnet reads there (read_cpuinfo) and oneDNN's own answer on
    bf16 (yes on any AVX-512 CPU: it emulates it): native bf16 only where the flags have it."""
    import dabnet.runtimes.auto as R
    import dabnet.util.hardware as H

    cpu = KINDS.get(kind)
    flags = set(cpu.flags) if cpu else {"sse4_2"}
    monkeypatch.setattr(H, "read_cpuinfo", cpu.cpuinfo if cpu else lambda: "model name\t: old x86\nflags\t\t: sse4_2\n")
    monkeypatch.setattr(H, "onednn_bf16", lambda: "avx512f" in flags)
    monkeypatch.setattr(R, "_importable", lambda name: name == "openvino" or (name == "nncf" and have_nncf))
    backend, precision, why = choose_auto("cpu")
    assert backend == "openvino" and (cpu.model if cpu else "old x86") in why
    if have_nncf and "avx2" in flags:
        assert precision == "int8" and ("VNNI/AMX" in why if flags & {"avx512_vnni", "amx_int8"} else "AVX2 int8" in why)
    elif flags & {"avx512_bf16", "amx_bf16"}:
        assert precision == "bf16" and H.cpu_has_bf16()
    else:  # an AVX-512 CPU without bf16 instructions included: bf16 there is emulated
        assert precision == "fp32" and not H.cpu_has_bf16()


@pytest.mark.slow  # it converted a model to OpenVINO
def test_ir_export_round_trip(bundled, tmp_path, capsys):
    model, seg, x = bundled
    xml = tmp_path / "m.xml"
    assert main(["export", "--checkpoint", "dabnet-camvid", "--format", "openvino", "--out", str(xml)]) == 0
    out = capsys.readouterr().out
    assert "max abs error" in out and "labels on the checked images agree on 100.00% at fp32" in out and xml.with_suffix(".bin").is_file()
    from_ir = Segmenter.from_checkpoint(xml, precision="fp32")  # pinned: the plugin's own default may be bf16
    assert from_ir.backend == "openvino" and from_ir.run.compiled().get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert from_ir.class_names == seg.class_names and from_ir.mean == seg.mean and from_ir.palette == seg.palette
    image = read_image(sample_frames()[1])
    assert (from_ir.predict(image) == Segmenter.from_checkpoint("dabnet-camvid", backend="eager").predict(image)).mean() > 0.999
    with pytest.raises(ValueError, match="NAME.xml"):
        from dabnet.runtimes.openvino import export_ir

        export_ir(model, tmp_path / "m.ir")


@pytest.mark.slow  # it converted a model to OpenVINO
def test_eval_with_a_backend_and_precision(tmp_path, make_camvid, capsys):
    root = make_camvid(tmp_path / "cv", n=4)
    ckpt = tmp_path / "c.pth"
    torch.manual_seed(0)
    dabnet.save_checkpoint(dabnet.io.checkpoint.make_checkpoint(dabnet.create_model("dabnet", 11)), ckpt)
    results = {}
    for backend, precision in [("eager", "fp32"), ("openvino", "fp32")]:
        js = tmp_path / f"{backend}.json"
        assert main(["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--workers", "0", "--backend", backend,
                     "--precision", precision, "--json", str(js)]) == 0  # fmt: skip
        results[backend] = json.loads(js.read_text())
    assert results["openvino"]["backend"] == "openvino" and results["eager"]["backend"] == "eager"
    assert results["openvino"]["miou"] == pytest.approx(results["eager"]["miou"], abs=2e-3)
    assert "backend openvino," in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--backend", "eager", "--precision", "int8"]) == 2
    assert "the eager backend runs fp32, bf16, fp16, not int8; int8 runs with --backend int8 or openvino" in capsys.readouterr().err


def _tiny_ir(path: Path, classes: int = 11, quantized: bool = False) -> Path:
    """A foreign IR: a 1x1 convolution to `classes` logits, after an int8 FakeQuantize of its input when `quantized`
    (what NNCF leaves in a quantized IR)."""
    import openvino

    ops = openvino.opset13
    x = ops.parameter([-1, 3, -1, -1], np.float32, name="x")
    y = ops.fake_quantize(x, *(ops.constant(np.float32(v)) for v in (-4, 4, -4, 4)), 256) if quantized else x
    w = ops.constant(np.random.default_rng(0).standard_normal((classes, 3, 1, 1)).astype(np.float32))
    openvino.save_model(openvino.Model([ops.convolution(y, w, [1, 1], [0, 0], [0, 0], [1, 1])], [x]), str(path))
    return path


@pytest.mark.slow  # it compiled an OpenVINO model
def test_openvino_runners_name_the_precision_the_plugin_runs(tmp_path, cpu_kind, request):
    """fp32 and bf16 are pinned by their hint; int8 leaves the float layers to the plugin's default on this kind of
    CPU, which its label names; what each compiles to is what it says; auto's choice follows the kind's flags."""
    from dabnet.runtimes import load_exported
    from dabnet.runtimes.openvino import OpenVINORunner

    default = cpu_kind.plugin_precision
    float_ir = _tiny_ir(tmp_path / "f.xml")
    for precision, expected in [("fp32", "f32"), ("bf16", "bf16"), ("int8", default)]:
        if precision == "bf16" and not cpu_has_bf16():
            continue
        runner = OpenVINORunner(float_ir, precision)
        assert runner.inference_precision == expected
        assert runner.compiled().get_property("INFERENCE_PRECISION_HINT").get_type_name() == expected
    assert OpenVINORunner(float_ir, "int8").runs_as == f"float layers in {default}" and not OpenVINORunner(float_ir).runs_as
    quantized = load_exported(_tiny_ir(tmp_path / "q.xml", quantized=True))  # the default fp32 means the file's own int8
    assert quantized.precision == "int8" and quantized.label == f"openvino int8 (float layers in {default})"
    assert load_exported(float_ir).label == "openvino"
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(cpu_kind.flags))
    if request.config.getoption("--cpu-kind"):
        assert_onednn_capped(cpu_kind)  # oneDNN's answers here are the kind's only if its cap took effect
    assert cpu_has_bf16() == (native_bf16 and onednn_bf16())  # oneDNN's own answer: capped by the kind under --cpu-kind
    if importlib.util.find_spec("nncf") is not None:
        kernels = "VNNI/AMX int8 dot products" if "avx512_vnni" in cpu_kind.flags else "AVX2 int8 kernels"
        assert choose_auto("cpu") == ("openvino", "int8", f"{cpu_kind.model} has {kernels}; first and last convolutions stay in float")


@pytest.mark.slow  # it compiled an OpenVINO model
def test_an_exported_ir_runs_only_the_precisions_it_holds(tmp_path, make_camvid, capsys):
    """Issue 50, case 6: `eval --checkpoint m.xml --precision int8` on a float IR ran the plugin's default and
    called it "openvino int8". int8 quantizes the network, which an IR no longer is: refused in one line that says
    what to run instead; a quantized IR runs as the int8 it is and refuses float precisions."""
    root = make_camvid(tmp_path / "cv", n=2)
    xml = _tiny_ir(tmp_path / "m.xml")
    assert main(["eval", "--checkpoint", str(xml), "--data-root", str(root), "--workers", "0", "--precision", "int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "runs as exported in fp32 or bf16, not int8" in err, err
    assert "--checkpoint CHECKPOINT --backend openvino --precision int8" in err and "or give --precision fp32" in err
    assert main(["eval", "--checkpoint", str(xml), "--data-root", str(root), "--workers", "0"]) == 0
    assert "backend openvino," in capsys.readouterr().out  # fp32, pinned
    quantized = _tiny_ir(tmp_path / "q.xml", quantized=True)
    with pytest.raises(ValueError, match="runs as exported in int8, not bf16: it was quantized to int8 when it was written"):
        Segmenter.from_checkpoint(quantized, precision="bf16", log=None)
    assert Segmenter.from_checkpoint(quantized, precision="int8", log=None).backend.startswith("openvino int8 (float layers in ")


class _Upsampled(torch.nn.Module):
    """A 1x1 convolution at 1/4 of the input, then (when `mode`) an upsampling back to the input's size."""

    num_classes, model_name = 5, "upsampled"

    def __init__(self, mode):
        super().__init__()
        self.conv, self.mode = torch.nn.Conv2d(3, 5, 1), mode

    def forward(self, x):
        y = self.conv(F.avg_pool2d(x, 4))
        if self.mode == "bilinear":
            return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
        if self.mode == "corners":  # align_corners=True maps pixels differently: not taken over
            return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=True)
        return F.interpolate(y, size=x.shape[2:], mode="nearest") if self.mode == "nearest" else y


@pytest.mark.slow  # it converted a model to OpenVINO
@pytest.mark.parametrize("mode,host", [("bilinear", True), ("corners", False), ("nearest", False), (None, False)])
def test_labels_come_from_low_resolution_logits_only_after_a_half_pixel_bilinear_upsampling(mode, host):
    from dabnet.runtimes.openvino import OpenVINORunner, convert

    torch.manual_seed(0)
    model = _Upsampled(mode).eval()
    runner = OpenVINORunner(convert(model))
    assert runner.host_upsample is host
    x = torch.randn(2, 3, 64, 52)  # 16 x 13 cells: x4 by blocks; and 61 x 50, no integer factor
    for crop in (x, x[:, :, :61, :50]):
        with torch.inference_mode():
            want = model(crop).argmax(1)
        got = runner.labels(crop)
        assert got.dtype == torch.uint8 and got.shape == want.shape and (got.long() == want).float().mean() > 0.9999
    if host:  # the labels graph stops at the low-resolution logits and the size they go to
        outputs = runner.outputs(runner.request("labels"))
        assert outputs[0].shape == (2, 5, 15, 12) and outputs[1].tolist() == [61, 50]  # the last run: the 61x50 crop


@pytest.mark.slow  # it compiled an OpenVINO model
def test_openvino_stream_keeps_the_order_and_the_labels_of_one_at_a_time(bundled):
    model, _, _ = bundled
    ov_seg = Segmenter.for_model(model, runner=prepare(model, "openvino", "fp32"), backend="openvino")
    ov_seg.max_pixels, ov_seg.tile_margin = 150 * 150, 16  # so that the 200x300 crop is tiled (6 tiles), at its turn
    frame = read_image(sample_frames()[0])
    images = [frame[:64, :96], frame[:5, :7], frame[:80, :48], frame[:200, :300], np.ascontiguousarray(frame[64:0:-1, :96])]
    for _ in range(2):  # the throughput queue is compiled once and reused
        got = list(ov_seg.predict_stream(enumerate(images)))
        assert [k for k, _, _ in got] == list(range(len(images)))
        for (_, image, label), original in zip(got, images):
            assert np.array_equal(image, original) and label.shape == original.shape[:2] and label.dtype == np.uint8
            assert (label == ov_seg.predict(original)).mean() > 0.999
    passed = list(ov_seg.run.image_label_stream([("a", None), ("b", frame[:32, :32]), ("c", None)], ov_seg.normalize))
    assert [k for k, _ in passed] == ["a", "b", "c"] and passed[0][1] is None and passed[1][1].shape == (32, 32)


@pytest.mark.slow  # it imported a compiled OpenVINO model
def test_predict_folder_through_openvino_streams_writes_what_batches_write(bundled, tmp_path):
    from PIL import Image

    from dabnet.commands.predict import predict_images

    model, _, _ = bundled
    ov_seg = Segmenter.for_model(model, runner=prepare(model, "openvino", "fp32"), backend="openvino")
    folder = tmp_path / "frames"
    folder.mkdir()
    frame = read_image(sample_frames()[1])
    for i, (h, w) in enumerate([(64, 96), (64, 96), (48, 80), (64, 96), (10, 12)]):
        Image.fromarray(np.ascontiguousarray(frame[i * 7 : i * 7 + h, i * 5 : i * 5 + w])).save(folder / f"f{i}.png")
    (folder / "bad.png").write_bytes(b"not a png")
    paths = sorted(folder.iterdir())
    written = {}
    for name, batch, workers in (("stream", 1, 2), ("stream0", 1, 0), ("batches", 2, 2)):
        result = predict_images(ov_seg, paths, tmp_path / name, batch_size=batch, log=lambda *a: None, save=["label"], workers=workers)
        assert result["images"] == 5 and result["skipped"] == [str(folder / "bad.png")] and result["fps"] > 0
        written[name] = {p.name: np.asarray(Image.open(p)) for p in sorted((tmp_path / name).iterdir()) if not p.name.startswith(".")}
    assert sorted(written["stream"]) == [f"f{i}_label.png" for i in range(5)]
    for name in ("stream0", "batches"):
        assert written[name].keys() == written["stream"].keys()
        for k, labels in written[name].items():
            assert labels.shape == written["stream"][k].shape and (labels == written["stream"][k]).mean() > 0.999


@pytest.mark.slow  # it imported a compiled OpenVINO model
@pytest.mark.parametrize("threads", [2, 4])
def test_one_openvino_segmenter_is_safe_from_many_threads(threads):
    """Each thread has its own infer requests of the one compiled model: every result equals the single-thread
    one, whatever the interleaving (before: the other thread's labels, or 'Infer Request is busy')."""
    from concurrent.futures import ThreadPoolExecutor

    seg = Segmenter.from_checkpoint("dabnet-camvid", backend="openvino", precision="fp32", log=None)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (72 + 8 * (i % 3), 96, 3), dtype=np.uint8) for i in range(8)]
    expected = [seg.predict(im) for im in images]
    calls = [i % len(images) for i in range(24 * threads)]
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda i: (i, seg.predict(images[i])), calls))
        streamed = list(pool.map(lambda k: [lab for _, _, lab in seg.predict_stream(enumerate(images))], range(threads)))
    assert all(np.array_equal(label, expected[i]) for i, label in results)
    assert all(all(np.array_equal(a, b) for a, b in zip(run, expected)) for run in streamed)


@pytest.mark.slow  # it imported a compiled OpenVINO model
def test_a_segmenter_pickles_as_what_made_it_and_comes_back_working(tmp_path):
    import copy
    import pickle

    seg = Segmenter.from_checkpoint("dabnet-camvid", backend="openvino", precision="fp32", log=None, scale=1.25)
    image = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    for other in (pickle.loads(pickle.dumps(seg)), copy.deepcopy(seg)):
        assert other.backend == seg.backend and other.scale == 1.25
        assert np.array_equal(other.predict(image), seg.predict(image))
    with pytest.raises(TypeError, match="built around a network in memory"):
        pickle.dumps(Segmenter.for_model(dabnet.create_model("dabnet", 11)))


class _Wide(torch.nn.Module):
    """Two convolutions (150k weights: 600 KB of model.bin), a classifier and a bilinear upsampling: an IR that
    converts in a second, large enough to zero 200 KB in the middle of."""

    num_classes, model_name, model_kwargs, size_multiple = 5, "wide", {}, 8

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Conv2d(3, 64, 3, 2, 1), torch.nn.Conv2d(64, 256, 3, 2, 1), torch.nn.Conv2d(256, 5, 1)

    def forward(self, x):
        y = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)


def _zero_middle(path: Path, size: int = 200_000) -> None:
    """Zero `size` bytes in the middle of `path`, keeping its size (what a bad sector or a torn write leaves)."""
    data = bytearray(path.read_bytes())
    assert len(data) > 2 * size, len(data)
    mid = len(data) // 2 - size // 2
    data[mid : mid + size] = bytes(size)
    path.write_bytes(bytes(data))


IR_DAMAGE = {
    "200 KB zeroed in the middle": _zero_middle,
    "all zero": lambda p: p.write_bytes(bytes(p.stat().st_size)),  # what a power cut leaves of a file never fsynced
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
}


def _told(records, path: Path):
    return [str(w.message) for w in records if str(path) in str(w.message)]


@pytest.fixture(scope="module")
def wide_cache(tmp_path_factory):
    """(model, input, a cache holding its fp32 IR and the blob of its labels graph): each test damages a copy."""
    import dabnet.runtimes.openvino as ovr

    torch.manual_seed(0)
    model, x, folder = _Wide().eval(), torch.randn(2, 3, 64, 96), tmp_path_factory.mktemp("wide-cache")
    ovr.openvino_runner(model, "fp32", cache_dir=folder).labels(x)
    return model, x, folder


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(IR_DAMAGE))
def test_a_damaged_cached_ir_is_found_told_in_one_line_and_rebuilt(wide_cache, tmp_path, damage):
    import shutil

    import dabnet.runtimes.openvino as ovr

    model, x, filled = wide_cache
    with torch.inference_mode():
        want = model(x)
    shutil.copytree(filled, tmp_path, dirs_exist_ok=True)
    (bin_file,) = tmp_path.rglob("model.bin")
    IR_DAMAGE[damage](bin_file)
    with pytest.warns(UserWarning) as records:
        runner = ovr.openvino_runner(model, "fp32", cache_dir=tmp_path)
    (line,) = _told(records, bin_file)
    assert "damaged" in line and "rebuilding" in line and "\n" not in line
    torch.testing.assert_close(runner(x), want, atol=1e-4, rtol=1e-4)  # the rebuilt IR, never the damaged one
    assert (runner.labels(x).long() == want.argmax(1)).float().mean() > 0.9999
    assert bin_file.stat().st_size > 500_000 and not _told(records, bin_file.parent / "entry.json")


@pytest.mark.slow
def test_a_damaged_compiled_blob_is_found_and_rebuilt(wide_cache, tmp_path):
    import shutil

    import dabnet.runtimes.openvino as ovr

    model, x, filled = wide_cache
    with torch.inference_mode():
        want = model(x).argmax(1)
    shutil.copytree(filled, tmp_path, dirs_exist_ok=True)
    (blob,) = tmp_path.rglob("*.blob")  # the labels graph, compiled for this CPU
    _zero_middle(blob)
    runner = ovr.openvino_runner(model, "fp32", cache_dir=tmp_path)
    with pytest.warns(UserWarning) as records:
        labels = runner.labels(x)
    (line,) = _told(records, blob)
    assert "damaged" in line and (labels.long() == want).float().mean() > 0.9999


@pytest.mark.slow  # it imported a compiled OpenVINO model
def test_a_large_image_leaves_no_memory_held_once_the_segmenter_releases_it(bundled):
    """OpenVINO keeps its intermediate buffers sized for the largest input it has run: after one 2048x2048 image
    a server would sit hundreds of MB above its size while idle. `release_memory` gives them back, and the next
    predictions are the same."""

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    model = bundled[0]
    ov_seg = Segmenter.for_model(model, runner=prepare(model, "openvino", "fp32"), backend="openvino")
    small = read_image(sample_frames()[0])
    before = ov_seg.predict(small)
    ov_seg.release_memory()
    base = rss_mb()
    ov_seg.predict(np.zeros((2048, 2048, 3), np.uint8))
    grown = rss_mb() - base
    ov_seg.release_memory()
    kept = rss_mb() - base
    assert grown > 150 and kept < grown / 3, (grown, kept)
    assert (ov_seg.predict(small) == before).all()
