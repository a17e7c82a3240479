"""Every command the README's tour and the guides in docs/ show runs, as written, taken from the markdown: each
```bash line (its words expanded by bash: globs, quotes; `dabnet` lines then run in this process through
`dabnet.cli.main`, the others in a shell), each document's ```python blocks together in one interpreter, in a
scratch folder that
holds the files the guides name (`street.jpg`, `photos/`, `dashcam.mp4`, a COCO export, a small CamVid at
`../shared/data/camvid` and Cityscapes at `data/cityscapes`). Training and `bench` get options appended that
shrink them to seconds (`SHRINK`); a `dabnet serve` line runs in the background until its guide ends."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dabnet.commands.demo import sample_frames

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
GUIDES = ["README.md", "docs/getting-started.md", "docs/your-own-data.md", "docs/deploying.md", "docs/training.md",
          "docs/architecture.md"]  # fmt: skip
SHRINK = {  # appended to these commands: the same code path, on tiny data, for a few steps
    "train": "--set epochs=2 --set batch_size=2 --set crop_size=[32,48] --set workers=0 --set check_data=false "
             "--set fused=false --set val_batch_size=2 --set warmup_iters=1 --set val_every=1 --set log_every=1",
    "bench": "--frames 2 --warmup 0 --sizes 32x64",
}
SHOWS = {  # what each `dabnet` command of the guides prints when it did its work (an exit code of 0 is not enough)
    "demo": r"weights: dabnet-camvid .*\n(.*\n)*\d+ timed predictions of \d+ frames after \d+ warm-up calls: median [\d.]+ ms/frame = [\d.]+ FPS",
    "predict": r"(^|\n)([1-9]\d* image\(s\) segmented, 0 skipped|\S+: [1-9]\d* frame\(s\)), [\d.e+]+ FPS",
    "describe": r"chosen by: the mean of the last \d+ epochs",
    "models": r"(^|\n)dabnet +[\d,]+ +[\d.]+ ",
    "runtimes": r"(^|\n)eager .*\n(.*\n)*openvino ",
    "eval": r"(^|\n)mIoU \d+\.\d\d%   pixel accuracy \d+\.\d\d%",
    "train": r"(^|\n)done: \d+ epochs, best \w+ mIoU \d+\.\d\d% -> ",
    "average": r"(^|\n)averaged [2-9]\d* checkpoints",
    "export": r"(^|\n)exported \S+ \((onnx|openvino|torchscript)\); checked against PyTorch",
    "bench": r"(^|\n)dabnet +\S+ +\S+ .* ms +[\d.]+ FPS ",
    "data": r"(^|\n)(imported [1-9]\d* image\(s\).*\n(.*\n)*)?(dataset is clean|.*: [1-9]\d* images; mean RGB)",
}


def _check_shown(guide: str, line: str, argv: list, text: str, work: Path) -> None:
    """A `dabnet` line printed what its command prints when it worked, no skipped backend, and wrote its --out;
    predict wrote an output named after each image (and video) it was given."""
    command = argv[1]
    assert command in SHOWS, f"{guide}: `{line}`: say in SHOWS what `dabnet {command}` prints when it worked"
    assert re.search(SHOWS[command], text), f"{guide}: `{line}` did not print what {command} prints:\n{text[-2000:]}"
    assert "skipped:" not in text, f"{guide}: `{line}`:\n{text[-2000:]}"
    out = work / argv[argv.index("--out") + 1] if "--out" in argv else None
    if out is not None:
        assert out.is_file() or (out.is_dir() and any(out.iterdir())), f"{guide}: `{line}` wrote nothing to {out}"
    if command == "predict":
        from dabnet.commands.predict import MANIFEST

        written = [p.name for p in (out or work / "predictions").rglob("*") if p.is_file() and p.name != MANIFEST]
        given = [work / w for i, w in enumerate(argv[2:], 2) if not argv[i - 1].startswith("--") and (work / w).exists()]
        stems = [p.stem for g in given for p in ([g] if g.is_file() else sorted(g.iterdir())) if p.is_file()]
        missing = [stem for stem in stems if not any(name.startswith(stem + "_") or name.startswith(stem + ".") for name in written)]
        assert stems and not missing, f"{guide}: `{line}` wrote nothing for {missing or 'its inputs'}: {sorted(written)}"


def _check_answer(line: str, stdout: str, work: Path) -> None:
    """`curl` at the server: the segmentation of street.jpg, as JSON or as the overlay PNG it asked for."""
    size = Image.open(work / "street.jpg").size
    if " -o " in line:
        assert Image.open(work / line.split(" -o ")[1].split()[0]).size == size, line
        return
    answer = json.loads(stdout)
    assert (answer["width"], answer["height"]) == size and abs(sum(answer["class_fractions"].values()) - 1) < 1e-3, answer


def blocks(path: Path, lang: str) -> list:
    """The fenced ```lang blocks of a markdown file, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), re.S | re.M)


def commands(path: Path) -> list:
    """The shell commands of a document's ```bash blocks (continuation lines joined, comments dropped); the
    README's first block (install and test: what CI itself runs) is not the tour."""
    found = blocks(path, "bash")[1 if path.name == "README.md" else 0 :]
    lines = []
    for block in found:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_every_guide_shows_commands_and_says_they_are_tested():
    for name in GUIDES[1:]:
        text = (ROOT / name).read_text()
        assert commands(ROOT / name) or blocks(ROOT / name, "python"), name
        assert "tests/test_guides.py" in text, f"{name} does not say its commands are tested"
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sandbox(work: Path, make_camvid, make_cityscapes) -> None:
    frames = sample_frames()
    Image.open(frames[0]).convert("RGB").save(work / "street.jpg")
    (work / "photos").mkdir()
    for i, frame in enumerate(frames[1:3]):
        Image.open(frame).convert("RGB").resize((240, 180)).save(work / "photos" / f"p{i}.jpg")
    import cv2

    video = cv2.VideoWriter(str(work / "dashcam.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64))
    for i in range(3):
        video.write(np.full((64, 96, 3), 40 * i, np.uint8))
    video.release()
    (work / "images").mkdir()
    annotations = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "road"}, {"id": 2, "name": "car"}]}
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(work / "images" / f"im{i}.png")
        annotations["images"].append({"id": i + 1, "file_name": f"im{i}.png", "height": 48, "width": 64})
        for j, (cat, poly) in enumerate([(1, [0, 24, 64, 24, 64, 48, 0, 48]), (2, [10, 5, 40, 5, 40, 20, 10, 20])]):
            annotations["annotations"].append({"id": 10 * i + j + 1, "image_id": i + 1, "category_id": cat, "segmentation": [poly],
                                               "iscrowd": 0, "area": 1.0, "bbox": [0, 0, 1, 1]})  # fmt: skip
    (work / "annotations.json").write_text(json.dumps(annotations))
    make_camvid(work.parent / "shared" / "data" / "camvid", splits=("train", "val", "test"), n=8,
                sequences={"train": ["0001TP", "0006R0"], "val": ["0016E5"]})  # fmt: skip
    make_cityscapes(work / "data" / "cityscapes")


def _wait(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    end = time.time() + seconds
    while time.time() < end:
        assert process.poll() is None, process.stdout.read()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer")


def _argv(line: str, work: Path) -> list:
    """The words bash makes of `line` (quotes removed, globs expanded), without running it."""
    res = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], cwd=work, capture_output=True, text=True, check=True)
    return res.stdout.split("\0")[:-1]


@pytest.mark.parametrize("guide", GUIDES)
def test_the_commands_of_each_guide_run_as_written(guide, tmp_path, make_camvid, make_cityscapes, monkeypatch, capsys):
    from dabnet.cli import main

    work = tmp_path / "work"
    work.mkdir()
    _sandbox(work, make_camvid, make_cityscapes)
    monkeypatch.chdir(work)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    port = str(_free_port())
    servers = []
    shown_in_guides = {line for other in GUIDES[1:] for line in commands(ROOT / other)} if guide == "README.md" else set()
    try:
        for line in commands(ROOT / guide):
            if line in shown_in_guides:
                continue  # the README's tour repeats guides' commands: each runs once, in its guide
            line = line.replace("8000", port)
            words = line.split()
            command = words[words.index("dabnet") + 1] if "dabnet" in words else None
            if command in SHRINK:
                line += " " + SHRINK[command] + (" --models dabnet" if command == "bench" and "--models" not in words else "")
            if command == "serve":
                line += "" if "--port" in words else f" --port {port}"
                servers.append(subprocess.Popen(["bash", "-c", line], cwd=work, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True))  # fmt: skip
                _wait(f"http://127.0.0.1:{port}/healthz", servers[-1])
                continue
            if words[0] == "dabnet":
                argv = _argv(line, work)
                code = main(argv[1:])
                out = capsys.readouterr()
                assert code == 0, f"{guide}: `{line}` exited {code}\n{out.out[-2000:]}\n{out.err[-3000:]}"
                _check_shown(guide, line, argv, out.out, work)
                continue
            if words[0] == "curl":  # -f: an HTTP error status is a failed command, as it is not without it
                line = "curl -f " + line[len("curl ") :]
            res = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, f"{guide}: `{line}` exited {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
            if words[0] == "curl":
                _check_answer(line, res.stdout, work)
        script = "\n\n".join(blocks(ROOT / guide, "python"))
        if script:
            (tmp_path / "guide.py").write_text(script)
            res = subprocess.run([sys.executable, str(tmp_path / "guide.py")], cwd=work, env=env, capture_output=True, text=True,
                                 timeout=600)  # fmt: skip
            assert res.returncode == 0, f"{guide}'s Python:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
    shutil.rmtree(work.parent / "shared", ignore_errors=True)
