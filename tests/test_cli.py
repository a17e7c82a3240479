"""The command line: `dabnet models`, `dabnet demo`, `python -m dabnet`."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import write_frame
from PIL import Image

from dabnet.cli import main
from dabnet.commands.demo import run_demo, sample_frames
from dabnet.config import DemoConfig


def test_models_table(capsys):
    assert main(["models", "dabnet", "enet", "--size", "256x512"]) == 0
    out = capsys.readouterr().out
    assert "GMACs@256x512" in out and "756,643" in out and "enet" in out


def test_models_json_matches_registry(capsys):
    assert main(["models", "--json", "--num-classes", "11", "dabnet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["params"] == 754_571 and abs(rows[0]["gmacs"] - 10.2) / 10.2 < 0.02


def test_unknown_model_is_a_clean_error(capsys):
    assert main(["models", "nonet"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nonet'" in err and "dabnet" in err


def test_bad_size_is_rejected(capsys):
    with pytest.raises(SystemExit) as e:  # argparse's own refusal, with its exit code
        main(["models", "--size", "512by1024"])
    assert e.value.code == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err


@pytest.mark.slow  # the default backend: NNCF quantizes the bundled weights on a cold cache
def test_demo_writes_pictures_and_reports_fps(tmp_path, monkeypatch):
    from dabnet.commands import demo
    from dabnet.inference.segmenter import Segmenter

    calls = []
    predict = Segmenter.predict
    monkeypatch.setattr(Segmenter, "predict", lambda self, image: calls.append(1) or predict(self, image))
    lines = []
    result = run_demo(DemoConfig(out=str(tmp_path / "demo")), log=lines.append)
    frames = sample_frames()
    timed = result["latencies_ms"]
    # the FPS comes from whole rounds of the frames after the warm-up, never from the pictures' first calls
    assert len(frames) >= 3 and len(timed) >= demo.MIN_TIMED_CALLS and len(timed) % len(frames) == 0
    assert len(calls) == len(frames) + demo.WARMUP_CALLS + len(timed)
    assert f"{len(timed)} timed predictions" in "\n".join(lines)
    for f in frames:
        for kind in ("label", "color", "overlay", "side_by_side"):
            assert (tmp_path / "demo" / f"{f.stem}_{kind}.png").is_file()
        label = np.asarray(Image.open(tmp_path / "demo" / f"{f.stem}_label.png"))
        assert label.shape == (360, 480) and label.max() < 11
        side = np.asarray(Image.open(tmp_path / "demo" / f"{f.stem}_side_by_side.png"))
        assert side.shape[1] > 3 * 480  # image | overlay | ground truth
    text = "\n".join(lines)
    assert "FPS" in text and str((tmp_path / "demo").resolve()) in text
    ms, fps = map(float, re.search(r"median ([\d.]+) ms/frame = ([\d.]+) FPS", text).groups())
    assert ms == pytest.approx(float(np.median(timed)), abs=0.051)
    assert fps == pytest.approx(1000 / float(np.median(timed)), abs=0.051)  # frames per second: 1000 / ms per frame


@pytest.mark.slow
def test_python_dash_m_runs():
    out = subprocess.run([sys.executable, "-m", "dabnet", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("dabnet ")


def _commands():
    from dabnet.cli import COMMANDS, DATA_COMMANDS

    return [([n], cls) for n, (cls, _) in COMMANDS.items()] + [(["data", n], cls) for n, (cls, _) in DATA_COMMANDS.items()]


@pytest.mark.parametrize("words,cls", _commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_option_default_comes_from_its_config_dataclass(words, cls, capsys):
    """One source of truth: the parser's defaults and help are the dataclass's, for every command."""
    import dataclasses

    from dabnet.cli import build_parser

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[words[0]]
    if len(words) == 2:
        sub = sub._subparsers._group_actions[0].choices[words[1]]
    actions = {a.dest: a for a in sub._actions}
    for f in dataclasses.fields(cls):
        if f.metadata.get("hidden"):
            assert f.name not in actions
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        action = actions[f.name]
        help = f.metadata["help"]
        assert action.help == (help() if callable(help) else help) and action.help, f.name
        if not action.required:
            assert action.default == default, f.name
    with pytest.raises(SystemExit):
        main(words + ["--help"])
    assert " ".join(cls.__doc__.split()) in " ".join(capsys.readouterr().out.split())  # help text, wrapped


def test_serve_backend_default_is_the_same_everywhere():
    from dabnet.cli import build_parser
    from dabnet.config import ServeConfig

    args = build_parser().parse_args(["serve"])
    assert args.backend == ServeConfig().backend == "auto" and args.timeout_s == ServeConfig().timeout_s


BAD_OPTIONS = [  # issue 14, row 7: each one line naming the option and what is valid, before any data is read
    (["train", "--config", "camvid", "--set", "batch_size=0"], "batch_size=0 is not valid: an integer in [1, 65536]"),
    (["train", "--config", "camvid", "--set", "crop_size=128"], "crop_size=128 is not valid: [HEIGHT, WIDTH], two integers"),
    (["train", "--config", "camvid", "--set", "epochs=0"], "epochs=0 is not valid"),
    (["train", "--config", "camvid", "--set", "lr=-0.01"], "lr=-0.01 is not valid: a finite number in (0, 10]"),
    (["train", "--config", "camvid", "--set", "workers=-1"], "workers=-1 is not valid: an integer in [0, 1024]"),
    (["train", "--config", "camvid", "--set", "optimizer=foo"], "optimizer='foo' is not valid: one of adam, adamw, sgd"),
    (["train", "--config", "camvid", "--set", "amp=foo"], "precision='foo' is not valid: one of fp32, bf16, fp16"),
    (["train", "--config", "camvid", "--set", "device=cuda"], "device='cuda' is not available"),
    (["eval", "--checkpoint", "x.pth", "--device", "cuda"], "device='cuda' is not available"),
    (["predict", "x.png", "--batch-size", "0"], "batch_size=0 is not valid"),
    (["bench", "--frames", "0"], "frames=0 is not valid: an integer >= 1"),
    (["serve", "--max-mb", "-1"], "max_mb=-1.0 is not valid"),
    (["serve", "--max-queue", "0"], "max_queue=0 is not valid"),
    (["average", "a.pth"], "checkpoints=['a.pth'] is not valid: two or more checkpoint files"),
    (["average", "a.pth", "b.pth", "--out", "."], "out='.' is not valid: a file name such as averaged.pth (this is a folder)"),
]


@pytest.mark.parametrize("argv,message", BAD_OPTIONS, ids=[" ".join(a[2:] if a[0] == "train" else a) for a, _ in BAD_OPTIONS])
def test_bad_options_are_one_line_before_any_data_is_read(argv, message, capsys, tmp_path):
    if "cuda" in " ".join(argv) and __import__("torch").cuda.is_available():
        pytest.skip("this row expects a machine without CUDA")
    # The data root does not exist: an option error must come first, and alone.
    extra = ["--set", f"data_root={tmp_path / 'nowhere'}"] if argv[0] == "train" else []
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "Traceback" not in err, err


def test_predict_out_must_not_be_a_file(tmp_path, capsys):
    out = tmp_path / "taken.txt"
    out.write_text("x")
    assert main(["predict", str(tmp_path), "--out", str(out)]) == 2
    assert "out=" in capsys.readouterr().err


def _victim(tmp_path):
    import dabnet
    from dabnet.io.checkpoint import make_checkpoint

    path = tmp_path / "victim.safetensors"
    from dabnet.io.checkpoint import save_safetensors

    save_safetensors(make_checkpoint(dabnet.create_model("dabnet", 11)), path)
    return path


@pytest.mark.parametrize("argv", [
    ["eval", "--checkpoint", "{v}", "--data-root", "{d}", "--json", "{v}"],
    ["bench", "--models", "dabnet", "--sizes", "64x96", "--frames", "1", "--checkpoint", "{v}", "--json", "{v}"],
    ["bench", "--models", "dabnet", "--sizes", "64x96", "--frames", "1", "--checkpoint", "{v}", "--plot", "{v}"],
    ["average", "{v}", "{w}", "--out", "{w}"],
    ["export", "--checkpoint", "{v}", "--format", "onnx", "--out", "{v}"],
    ["eval", "--checkpoint", "{v}", "--data-root", "{d}", "--json", "{d}/train/a.png"],
    ["data", "import", "coco", "{d}/x.json", "--images", "{d}", "--out", "{d}"],
    ["data", "import", "coco", "{d}/x.json", "--images", "{d}/train", "--out", "{d}"],
    ["data", "pack", "{d}", "{d}/train"],
    ["eval", "--checkpoint", "{v}", "--data-root", "{d}", "--confusion-png", "{v}"],
    ["train", "--config", "camvid", "--set", "data_root={d}", "--set", "distill_from={v}", "--set", "distill_cache={d}/train"],
])  # fmt: skip
def test_no_command_writes_over_what_it_reads(argv, tmp_path, capsys):
    victim = _victim(tmp_path)
    other = tmp_path / "w.safetensors"
    other.write_bytes(victim.read_bytes())
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "a.png").write_bytes(b"an image")
    (data / "x.json").write_text("{}")
    before = {p: p.read_bytes() for p in [victim, other, data / "train" / "a.png", data / "x.json"]}
    args = [a.format(v=victim, w=other, d=data) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "which this command reads" in err or "is also read by this command" in err, err
    assert len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in before} == before


def _option_classes():
    """Every options dataclass a command is made from: each command's, and the TrainConfig that `train` builds."""
    from dabnet.cli import COMMANDS, DATA_COMMANDS
    from dabnet.config import TrainConfig

    return {**{k: v[0] for k, v in COMMANDS.items()}, **{f"data {k}": v[0] for k, v in DATA_COMMANDS.items()}, "train config": TrainConfig}


def test_every_option_that_can_name_a_file_declares_what_it_does_with_it():
    """Enumerated from the config dataclasses: an option that can hold a string declares its role with files (io), so
    one that writes a file and does not say so fails here, and every declared output goes through check_io."""
    import dataclasses
    import typing

    from dabnet.config import IO_ROLES

    def holds_text(hint):
        return hint is str or any(holds_text(a) for a in typing.get_args(hint))

    undeclared, outputs = [], []
    for name, cls in _option_classes().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            role = f.metadata.get("io")
            if holds_text(hints[f.name]) and role not in IO_ROLES:
                undeclared.append(f"{name} {f.name}")
            if role in ("out", "out_dir", "own_dir"):
                outputs.append(f"{name} {f.name} ({role})")
    assert undeclared == []
    assert sorted(outputs) == sorted([  # a role changed, or an output added, is seen here
        "average out (out)", "bench json (out)", "bench plot (out)", "data import out (out_dir)", "data pack out (out_dir)",
        "demo out (own_dir)", "eval confusion_png (out)", "eval json (out)", "export out (out)", "predict out (own_dir)",
        "train out (own_dir)", "train config distill_cache (out_dir)", "train config out (own_dir)",
    ])  # fmt: skip


@pytest.mark.parametrize("command", ["predict", "demo", "export", "average", "eval-json", "bench-json", "train"])
def test_unwritable_outputs_are_one_line_before_any_work(command, ckpt, tmp_path, unwritable, capsys, make_camvid, monkeypatch):
    import dabnet.inference.segmenter

    target = unwritable / "sub"
    frame = write_frame(tmp_path / "f.png", 0)
    argv = {
        "predict": ["predict", "--checkpoint", str(ckpt), str(frame), "--out", str(target)],
        "demo": ["demo", "--checkpoint", str(ckpt), "--out", str(target)],
        "export": ["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(target / "m.onnx")],
        "average": ["average", str(ckpt), str(ckpt), "--out", str(target / "avg.pth")],
        "eval-json": ["eval", "--checkpoint", str(ckpt), "--data-root", str(make_camvid(tmp_path / "cv", n=2)), "--json", str(target / "r.json")],
        "bench-json": ["bench", "--models", "dabnet", "--sizes", "32x32", "--backends", "eager", "--json", str(target / "b.json")],
        "train": ["train", "--config", "camvid", "--out", str(target), "--set", f"data_root={tmp_path}"],
    }[command]

    def no_model(*a, **k):  # the check comes before any model is built
        raise AssertionError("a model was prepared before the output was checked")

    monkeypatch.setattr(dabnet.inference.segmenter.Segmenter, "from_checkpoint", no_model)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(unwritable) in err, err
    assert "writable" in err or "cannot create" in err
