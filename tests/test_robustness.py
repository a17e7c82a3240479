"""Bad input gets a clear, prompt error; every image is read as a viewer shows it; nothing is left
behind (issue 14: one test per row, plus the siblings found beside them)."""

from __future__ import annotations

import io
import os
import pickle
import socket
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dabnet
from dabnet.cli import main
from dabnet.io.checkpoint import CheckpointError, read_checkpoint
from dabnet.io.images import read_image
from dabnet.io.preprocessing import to_rgb

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- images as a viewer shows them


def test_16_bit_png_is_scaled_not_clipped(tmp_path):  # row 3
    grey = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)  # spans 0..64491
    Image.fromarray(grey).save(tmp_path / "g16.png")
    rgb = read_image(tmp_path / "g16.png")
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert rgb.min() == 0 and 240 < rgb.max() < 255 and np.unique(rgb).size > 200  # not all white
    np.testing.assert_array_equal(to_rgb(grey), rgb)  # Segmenter.predict on the uint16 array sees the same pixels


def test_exif_orientation_is_applied(tmp_path):  # "every image a camera produces"
    im = Image.new("RGB", (60, 40), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "phone.jpg").shape == (60, 40, 3)  # portrait, as a viewer shows it


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "RGBA", "I", "F"])
def test_other_pixel_formats_read_as_rgb(tmp_path, mode):
    im = Image.new("RGB", (32, 24), (30, 120, 200)).convert(mode if mode not in ("I", "F") else "L").convert(mode)
    suffix = "tiff" if mode in ("CMYK", "I", "F") else "png"
    im.save(tmp_path / f"x.{suffix}")
    rgb = read_image(tmp_path / f"x.{suffix}")
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8 and 0 < rgb.mean() < 255


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


# ----------------------------------------------------------------------------- predict


def test_same_names_in_two_folders_keep_both(ckpt, tmp_path):  # row 5
    for folder, value in (("a", 10), ("b", 200)):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((32, 48, 3), value, np.uint8)).save(tmp_path / folder / "x.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a"), str(tmp_path / "b"), "--checkpoint", str(ckpt), "--backend", "fold",
                 "--out", str(out)]) == 0  # fmt: skip
    assert (out / "a" / "x_label.png").is_file() and (out / "b" / "x_label.png").is_file()


def test_cityscapes_format_needs_cityscapes_classes(ckpt, tmp_path, capsys, monkeypatch):  # row 6
    import dabnet.inference.segmenter

    def no_backend(*a, **k):
        raise AssertionError("the backend was prepared (quantized) before the refusal")

    monkeypatch.setattr(dabnet.inference.segmenter, "prepare", no_backend)
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(ckpt), "--format",
                 "cityscapes", "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "predicts 11 classes" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_predict_never_segments_its_own_outputs(ckpt, tmp_path, capsys):  # row 15
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(out / "x.png")
    for _ in range(2):
        assert main(["predict", str(out), "--checkpoint", str(ckpt), "--backend", "fold", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["x.png", "x_color.png", "x_label.png", "x_overlay.png"]


def test_onnxruntime_backend_leaves_no_temporary_files(ckpt, tmp_path, monkeypatch):  # row 10
    pytest.importorskip("onnxruntime")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seg = dabnet.Segmenter.from_checkpoint(ckpt, backend="onnxruntime")
    assert seg.predict(np.zeros((32, 48, 3), np.uint8)).shape == (32, 48)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- export


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


# ----------------------------------------------------------------------------- checkpoints


def _bad_checkpoints(tmp_path: Path, ckpt: Path):
    model = dabnet.load_model(ckpt)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    (tmp_path / "random.pth").write_bytes(os.urandom(4096))
    (tmp_path / "text.pth").write_text("hello, I am not a checkpoint\n")
    torch.save({"model": torch.nn.Conv2d(1, 1, 1)}, tmp_path / "module.pth")  # a pickled module
    with open(tmp_path / "rawpickle.pth", "wb") as f:
        pickle.dump({"model": torch.nn.Conv2d(1, 1, 1)}, f)
    (tmp_path / "folder.pth").mkdir()
    return {"bare.pth": "without the model's name", "random.pth": "cannot read", "text.pth": "cannot read",
            "module.pth": "a pickled torch.nn.modules.conv.Conv2d", "rawpickle.pth": "cannot read", "folder.pth": "is a folder"}  # fmt: skip


def test_bad_checkpoints_say_why_and_never_suggest_unpickling(ckpt, tmp_path, capsys):  # row 11
    for name, why in _bad_checkpoints(tmp_path, ckpt).items():
        with pytest.raises(CheckpointError) as info:
            dabnet.load_model(tmp_path / name)
        text = str(info.value)
        assert text.startswith("not a dabnet checkpoint") and why in text, text
        assert "weights_only=False" not in text and "\x1b" not in text and "model_name=..." not in text
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    assert main(["export", "--checkpoint", str(onnx), "--format", "torchscript", "--out", str(tmp_path / "t.pt")]) == 2
    assert "is an exported onnx model" in capsys.readouterr().err


def test_checkpoints_follow_the_umask(tmp_path, ckpt):  # row 13
    old = os.umask(0o022)
    try:
        path = dabnet.save_checkpoint(read_checkpoint(ckpt), tmp_path / "c.pth")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- data


def test_eval_of_a_bad_mask_is_only_the_message_with_a_camvid_fix(make_camvid, ckpt, tmp_path, capsys):  # row 8
    root = make_camvid(tmp_path / "cv")
    mask_path = sorted((root / "valannot").iterdir())[0]
    mask = np.array(Image.open(mask_path))
    mask[:2, :2], mask[-2:, -2:] = 12, 200
    Image.fromarray(mask).save(mask_path)
    assert main(["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--backend", "eager", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "DataLoader worker" not in err and "Traceback" not in err
    assert "[12, 200]" in err and "CamVid labels are 0-10 and 11" in err and "id_map" not in err


def test_pack_refuses_to_write_into_its_source(make_camvid, tmp_path, capsys):  # row 9
    root = make_camvid(tmp_path / "cv")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for out in (root, root / "packed"):
        assert main(["data", "pack", str(root), str(out)]) == 2
        assert "hold one another" in capsys.readouterr().err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


# ----------------------------------------------------------------------------- serve


def test_serve_413_for_images_over_pillows_own_limit(monkeypatch):  # row 14
    from dabnet.commands.serve import HTTPProblem, decode_image

    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 px is then over twice Pillow's limit
    with pytest.raises(HTTPProblem) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decode_image(buf.getvalue(), max_pixels=10**9)
    assert info.value.status == 413


def test_serve_binds_before_the_banner_and_names_a_busy_port(capsys):  # row 14
    from dabnet.commands.serve import serve
    from dabnet.config import ServeConfig

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(RuntimeError, match="cannot listen on 127.0.0.1"):
            serve(ServeConfig(checkpoint="/nonexistent.pth", port=busy.getsockname()[1]))  # fails before loading
    finally:
        busy.close()
    assert "dabnet serve:" not in capsys.readouterr().out


def test_serve_without_its_extra_names_the_install(monkeypatch):  # row 14
    from dabnet.commands.serve import serve
    from dabnet.config import ServeConfig

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ImportError, match=r"pip install 'dabnet\[serve\]'"):
        serve(ServeConfig())


# ----------------------------------------------------------------------------- the repository


def test_no_generated_files_in_the_repository_root():  # row 16
    debris = [p.name for p in ROOT.iterdir() if p.suffix in (".onnx", ".data", ".xml", ".bin") or p.name.startswith("sym_shape_infer")]
    assert debris == []


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
