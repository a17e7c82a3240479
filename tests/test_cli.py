"""The command line: `dabnet models`, `dabnet demo`, `python -m dabnet`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from dabnet.cli import main
from dabnet.demo import DemoConfig, run_demo, sample_frames


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
    try:
        main(["models", "--size", "512by1024"])
    except SystemExit as e:
        assert e.code == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err


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


def test_python_dash_m_runs():
    out = subprocess.run([sys.executable, "-m", "dabnet", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("dabnet ")
