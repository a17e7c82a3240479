"""The command line: `dabnet models`, `dabnet demo`, `python -m dabnet`."""

from __future__ import annotations

import json
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


@pytest.mark.slow  # the default backend's int8 IR (NNCF)
def test_demo_writes_pictures_and_reports_fps(tmp_path):
    lines = []
    result = run_demo(DemoConfig(out=str(tmp_path / "demo")), log=lines.append)
    frames = sample_frames()
    assert len(frames) >= 3 and len(result["latencies_ms"]) == len(frames)
    for f in frames:
        for kind in ("label", "color", "overlay", "side_by_side"):
            assert (tmp_path / "demo" / f"{f.stem}_{kind}.png").is_file()
        label = np.asarray(Image.open(tmp_path / "demo" / f"{f.stem}_label.png"))
        assert label.shape == (360, 480) and label.max() < 11
        side = np.asarray(Image.open(tmp_path / "demo" / f"{f.stem}_side_by_side.png"))
        assert side.shape[1] > 3 * 480  # image | overlay | ground truth
    text = "\n".join(lines)
    assert "FPS" in text and str((tmp_path / "demo").resolve()) in text


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
    (["train", "--config", "camvid", "--set", "batch_size=0"], "batch_size=0 is not valid: an integer >= 1"),
    (["train", "--config", "camvid", "--set", "crop_size=128"], "crop_size=128 is not valid: a list of integers"),
    (["train", "--config", "camvid", "--set", "epochs=0"], "epochs=0 is not valid"),
    (["train", "--config", "camvid", "--set", "lr=-0.01"], "lr=-0.01 is not valid: a positive number"),
    (["train", "--config", "camvid", "--set", "workers=-1"], "workers=-1 is not valid: an integer >= 0"),
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


def test_every_output_option_goes_through_the_io_check():
    """A field named like an output (out, json, plot) declares what it is, so check_io sees it."""
    import dataclasses

    from dabnet.cli import COMMANDS, DATA_COMMANDS

    unmarked = []
    for name, (cls, _) in {**COMMANDS, **{f"data {k}": v for k, v in DATA_COMMANDS.items()}}.items():
        for f in dataclasses.fields(cls):
            if f.name in ("out", "json", "plot") and "bool" not in str(f.type) and "io" not in f.metadata:
                unmarked.append(f"{name} {f.name}")
    # predict's and demo's --out are folders of their own outputs: predict keeps every file it did not write
    # (test_predict.py), the demo writes only into its own folder.
    assert sorted(unmarked) == ["demo out", "predict out", "train out"]


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
