"""Training as a library: `dabnet.train`, the run's outputs (checkpoints, metrics, plots, TensorBoard) as callbacks a
caller replaces, and runs saved by the trainer of before the move (when it lived in `dabnet train`) resuming
bit-exactly."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest
import torch

import dabnet
from dabnet.config import TrainConfig, build_config
from dabnet.training import Callback, list_callbacks
from dabnet.training import outputs

ROOT = Path(dabnet.__file__).resolve().parents[1]
BEFORE_THE_MOVE = "f7d1330"  # main's last commit whose trainer is dabnet/commands/train.py
# fused=false: compiling the fused kernels costs more than these tiny runs; ema and keep_every: a callback's state
# in the checkpoint, and an epoch_NNNN.pth each epoch
SETTINGS = dict(epochs=3, batch_size=2, crop_size=[32, 48], workers=0, warmup_iters=2, val_batch_size=4, check_data=False,
                fused=False, ema=0.9, keep_every=1)  # fmt: skip
quiet = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def tiny_camvid(tmp_path_factory, make_camvid) -> Path:
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", n=8)


def _cfg(root: Path, out: Path, **kw) -> TrainConfig:
    return build_config(TrainConfig, "camvid", data_root=str(root), out=str(out), **{**SETTINGS, **kw})


class Seen(Callback):
    """Records what the run shows it at the end of each epoch, and the run's end."""

    name = "seen"

    def __init__(self) -> None:
        self.epochs, self.ended = [], 0

    def on_epoch_complete(self, run, state, improved) -> None:
        self.epochs.append((state.epoch, state.history[-1]["epoch"], "val_miou" in state.history[-1],
                            (run.out / "metrics.jsonl").exists()))  # fmt: skip

    def on_end(self, run) -> None:
        self.ended += 1


def test_dabnet_train_runs_the_callbacks_it_is_given_in_their_order(tiny_camvid, tmp_path):
    """Left out, `checkpoints` and `plots` write nothing; a caller's callback runs after the validation, and after the
    `metrics` it follows in the list."""
    seen = Seen()
    kinds = [k for k in list_callbacks() if k not in ("checkpoints", "plots")]
    result = dabnet.train(_cfg(tiny_camvid, tmp_path / "run", epochs=2), log=quiet, callbacks=[*kinds, seen])
    assert result["epoch"] == 2 and result["out"] == str(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "config.yaml", "metrics.csv", "metrics.jsonl"]
    assert seen.epochs == [(1, 1, True, True), (2, 2, True, True)] and seen.ended == 1
    assert [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_callback_name_that_is_not_registered_is_a_one_line_error(tiny_camvid, tmp_path):
    with pytest.raises(ValueError, match=r"^unknown training callback 'tensorbord'; did you mean 'tensorboard'\?"):
        dabnet.train(_cfg(tiny_camvid, tmp_path / "run"), log=quiet, callbacks=["metrics", "tensorbord"])
    with pytest.raises(ValueError, match=r"two training callbacks named 'seen'"):
        dabnet.train(_cfg(tiny_camvid, tmp_path / "run"), log=quiet, callbacks=[Seen(), Seen()])
    assert not (tmp_path / "run" / "last.pth").exists()


def test_tensorboard_gets_each_epochs_scalars_and_is_closed_and_can_be_left_out(tiny_camvid, tmp_path, monkeypatch):
    events = []

    class Writer:  # TensorBoard's SummaryWriter, as the callback uses it (TensorBoard itself is optional)
        def __init__(self, folder):
            events.append(("open", folder))

        def add_scalar(self, tag, value, step):
            events.append((tag, value, step))

        def close(self):
            events.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    dabnet.train(_cfg(tiny_camvid, tmp_path / "run", epochs=2, keep_every=0), log=quiet)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scalars = [(k, h[k], h["epoch"]) for h in history for k in outputs.SCALARS if h.get(k) is not None]
    assert len(scalars) >= 8 and events == [("open", str(tmp_path / "run" / "tb")), *scalars, ("close",)]
    events.clear()
    dabnet.train(_cfg(tiny_camvid, tmp_path / "other", epochs=1), log=quiet, callbacks=[k for k in list_callbacks() if k != "tensorboard"])
    assert events == [] and (tmp_path / "other" / "last.pth").exists()


# ----------------------------------------------------------------------------- runs saved before the move

OLD_RUNS = r"""
import json, os, signal, sys
import dabnet
assert dabnet.__file__.startswith(sys.argv[1]), dabnet.__file__  # the old tree's code, not this checkout's
import torch
torch.set_num_threads(int(sys.argv[5]))  # as the test process: the same sums in the same order
import dabnet.commands.train as T
from dabnet.config import TrainConfig, build_config
settings = json.loads(sys.argv[2])
quiet = lambda *a, **k: None
T.train(build_config(TrainConfig, "camvid", out=sys.argv[3], **settings), log=quiet)
real, calls = T.train_one_epoch, []

def stopped(*args, **kwargs):  # a real SIGTERM to this process after the first step of the second epoch
    calls.append(1)
    if len(calls) == 2:
        should_stop = kwargs["should_stop"]

        def stop_now():
            os.kill(os.getpid(), signal.SIGTERM)
            return should_stop()

        kwargs["should_stop"] = stop_now
    return real(*args, **kwargs)

T.train_one_epoch = stopped
print(json.dumps(T.train(build_config(TrainConfig, "camvid", out=sys.argv[4], **settings), log=quiet)))
"""


def _same(a, b, where: str = "") -> None:
    """`a` and `b` equal bit for bit (tensors), key for key (dicts), item for item (lists)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(map(str, a)), sorted(map(str, b)))
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


TIMING = ("seconds", "images_per_s")


@pytest.mark.slow  # trains with the code of BEFORE_THE_MOVE in a subprocess
def test_a_run_saved_before_the_move_resumes_bit_exactly(tiny_camvid, tmp_path):
    """The trainer of commit BEFORE_THE_MOVE (from this checkout's git history) trains a run straight, and another that
    a SIGTERM stops mid-epoch; this code resumes the second. Both, and this code's straight run, end with the same
    weights, EMA average, optimiser state and validation figures, bit for bit; and this code's run writes the
    same files with the same checkpoint keys and the same metrics but for the times."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("needs git, to read the trainer of before the move")
    tar = subprocess.run([git, "-C", str(ROOT), "archive", "--format=tar", BEFORE_THE_MOVE, "dabnet"], capture_output=True)
    if tar.returncode != 0:
        pytest.skip(f"commit {BEFORE_THE_MOVE} is not in this checkout's history: {tar.stderr.decode().strip()}")
    old = tmp_path / "old"
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(old, filter="data")
    settings = dict(SETTINGS, data_root=str(tiny_camvid))
    res = subprocess.run([sys.executable, "-c", OLD_RUNS, str(old / "dabnet"), json.dumps(settings), str(tmp_path / "old_straight"),
                          str(tmp_path / "resumed"), str(torch.get_num_threads())], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(old)},
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    stopped = json.loads(res.stdout.splitlines()[-1])
    assert stopped["interrupted"] == "SIGTERM" and (stopped["epoch"], stopped["iter_in_epoch"]) == (1, 1), stopped
    saved_then = torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)
    assert saved_then["iter_in_epoch"] == 1 and saved_then["callbacks"]["ema"]["updates"] == 5

    logs = []
    dabnet.train(_cfg(tiny_camvid, tmp_path / "resumed"), log=logs.append)
    assert any(m.startswith(f"resuming {tmp_path / 'resumed'} at epoch 2, iteration 1 of 4") for m in logs), logs
    dabnet.train(_cfg(tiny_camvid, tmp_path / "straight"), log=quiet)
    load = lambda run, name="last.pth": torch.load(tmp_path / run / name, weights_only=True)  # noqa: E731
    straight = load("straight")
    for run in ("old_straight", "resumed"):
        ckpt = load(run)
        for key in ("model", "train_model", "optimizer", "callbacks", "best_miou", "iteration", "epoch", "finished"):
            _same(ckpt[key], straight[key], f"{run}:{key}")
        for mine, theirs in zip(straight["history"], ckpt["history"]):
            assert mine.keys() == theirs.keys()
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-6)  # a resumed epoch sums its loss in two parts
            _same({k: v for k, v in mine.items() if k not in (*TIMING, "train_loss")},
                  {k: v for k, v in theirs.items() if k not in (*TIMING, "train_loss")}, f"{run}:history")  # fmt: skip

    # What the move must not change: the files of a straight run, the checkpoints' keys, the metrics but for times.
    old_straight = load("old_straight")
    files = lambda run: sorted(p.name for p in (tmp_path / run).iterdir())  # noqa: E731
    assert files("straight") == files("old_straight") == [".lock", "best.pth", "config.yaml", "epoch_0001.pth", "epoch_0002.pth",
                                                          "epoch_0003.pth", "last.pth", "loss.png", "metrics.csv",
                                                          "metrics.jsonl", "miou.png"]  # fmt: skip
    for name in ("last.pth", "best.pth", "epoch_0002.pth"):
        mine, theirs = load("straight", name), load("old_straight", name)
        # world_size: recorded since the move (a resume with another number of processes maps its schedule)
        assert mine.keys() - {"world_size"} == theirs.keys() and mine["world_size"] == 1, name
        assert mine["callbacks"].keys() == theirs["callbacks"].keys() == {"ema"}, name
        _same(mine["model"], theirs["model"], name)
        _same(mine["optimizer"], theirs["optimizer"], name)
    assert (tmp_path / "straight" / "config.yaml").read_text() == (tmp_path / "old_straight" / "config.yaml").read_text().replace(
        str(tmp_path / "old_straight"), str(tmp_path / "straight"))  # fmt: skip
    csv = lambda run: [line.split(",") for line in (tmp_path / run / "metrics.csv").read_text().splitlines()]  # noqa: E731
    mine, theirs = csv("straight"), csv("old_straight")
    timing = [mine[0].index(k) for k in TIMING]
    assert mine[0] == theirs[0] and len(mine) == len(theirs) == 4
    assert [[v for i, v in enumerate(row) if i not in timing] for row in mine] == [[v for i, v in enumerate(row) if i not in timing] for row in theirs]
    jsonl = lambda run: [{k: v for k, v in json.loads(line).items() if k not in TIMING}  # noqa: E731
                         for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert jsonl("straight") == jsonl("old_straight") and old_straight["history"][-1]["epoch"] == 3


def test_dabnet_train_takes_a_train_config_only(tmp_path):
    with pytest.raises(TypeError, match=r"^train\(\) takes a dabnet.config.TrainConfig, .* not dict$"):
        dabnet.train({"out": str(tmp_path / "run"), "epochs": 1})
    assert not (tmp_path / "run").exists()
