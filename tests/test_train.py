"""Training and evaluation: losses, metrics, schedule, configs, runs, exact resume, DDP, eval."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import digest

import dabnet
import dabnet.training.run as train_mod
from dabnet.commands.evaluate import run_evaluation
from dabnet.config import ConfigError, EvalConfig, TrainConfig, build_config
from dabnet.io.checkpoint import CheckpointError
from dabnet.training.engine import NonFiniteLossError, poly_warmup_lambda
from dabnet.training.losses import CrossEntropy, OHEMCrossEntropy
from dabnet.util.metrics import ConfusionMatrix

# ----------------------------------------------------------------------------- losses


def _logits_target(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, 0, :3] = 255
    return logits, target


def test_uniform_weights_equal_unweighted():
    logits, target = _logits_target()
    plain = CrossEntropy(None)(logits, target)
    torch.testing.assert_close(CrossEntropy(torch.full((4,), 3.0))(logits, target), plain)
    valid = target != 255
    by_hand = -F.log_softmax(logits, 1).gather(1, target.clamp(max=3)[:, None])[:, 0][valid].mean()
    torch.testing.assert_close(plain, by_hand)


def test_ohem_threshold_one_is_cross_entropy():
    logits, target = _logits_target(1)
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    torch.testing.assert_close(OHEMCrossEntropy(w, thresh=1.0, min_kept=0)(logits, target), CrossEntropy(w)(logits, target))


def test_ohem_keeps_only_hard_pixels_and_at_least_min_kept():
    logits, target = _logits_target(2)
    valid = target != 255
    p = F.softmax(logits, 1).gather(1, target.clamp(max=3)[:, None])[:, 0]
    nll = -F.log_softmax(logits, 1).gather(1, target.clamp(max=3)[:, None])[:, 0]
    hard = valid & (p < 0.3)
    torch.testing.assert_close(OHEMCrossEntropy(thresh=0.3, min_kept=0)(logits, target), nll[hard].mean())
    k = int(hard.sum()) + 5  # more than the threshold keeps: the k hardest pixels
    kth = p[valid].sort().values[k - 1]
    keep = valid & (p <= kth)
    torch.testing.assert_close(OHEMCrossEntropy(thresh=0.3, min_kept=k)(logits, target), nll[keep].mean())


# ----------------------------------------------------------------------------- metrics, schedule


def test_confusion_matrix_by_hand():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1, 255, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 0]])
    cm.update(pred, target)
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    res = cm.compute()
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (3 + 2 - 2) = 2/3; class 2: 0 / (1 + 0) = 0.
    np.testing.assert_allclose(res["iou"], [1 / 3, 2 / 3, 0.0])
    assert res["miou"] == pytest.approx(1 / 3) and res["pixel_acc"] == pytest.approx(3 / 5)


def test_miou_counts_only_present_classes():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]))
    res = cm.compute()
    assert res["miou"] == 1.0 and np.isnan(res["iou"][2]) and np.isnan(res["iou"][3])


def test_poly_schedule_with_warmup():
    f = poly_warmup_lambda(100, 0.9, warmup_iters=10, warmup_ratio=1 / 3)
    assert f(0) == pytest.approx(1 / 3)
    assert f(5) == pytest.approx((1 - 0.05) ** 0.9 * (1 / 3 + 2 / 3 * 0.5))
    assert f(10) == pytest.approx(0.9**0.9)
    assert f(100) == 0.0


# ----------------------------------------------------------------------------- configs


def test_shipped_configs_load_with_paper_values():
    cs = build_config(TrainConfig, "cityscapes")
    assert (cs.optimizer, cs.lr, cs.momentum, cs.weight_decay, cs.batch_size) == ("sgd", 4.5e-2, 0.9, 1e-4, 8)
    assert cs.crop_size == [512, 1024] and cs.loss == "ohem" and cs.ohem_thresh == 0.7 and cs.epochs == 1000
    cv = build_config(TrainConfig, "configs/camvid.yaml")
    assert (cv.optimizer, cv.lr, cv.weight_decay, cv.batch_size, cv.class_weights) == ("adam", 1e-3, 2e-4, 16, "enet")
    assert build_config(TrainConfig, "camvid_paper").optimizer == "sgd"
    assert build_config(TrainConfig, "folder_example").dataset == "folder"
    ho = build_config(TrainConfig, "camvid_holdout")
    assert (ho.train_split, ho.holdout, ho.val_split, ho.crop_size, ho.batch_size, ho.enet_c) == ("trainval", ["0006R0"], None, [360, 480], 16, 1.10)


def test_overrides_and_unknown_keys(tmp_path):
    cfg = build_config(TrainConfig, "camvid", ["lr=0.01", "crop_size=[64, 96]", "flip=false", "ohem_min_kept=1000", "mean=none"])
    assert cfg.lr == 0.01 and cfg.crop_size == [64, 96] and cfg.flip is False and cfg.ohem_min_kept == 1000
    with pytest.raises(ConfigError, match=r"unknown option 'learning_rate'.*valid options:.*lr"):
        build_config(TrainConfig, "camvid", ["learning_rate=0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['batchsize'\]"):
        build_config(TrainConfig, str(bad))
    # `amp` was renamed `precision`: old YAMLs and commands keep working
    assert build_config(TrainConfig, "camvid", ["amp=bf16"]).precision == "bf16"
    assert build_config(TrainConfig, "camvid", ["amp=none"]).precision == "fp32"
    old_yaml = tmp_path / "old.yaml"
    old_yaml.write_text("amp: none\nepochs: 3\n")
    assert build_config(TrainConfig, str(old_yaml)).precision == "fp32"
    with pytest.raises(ConfigError, match="is not valid: true or false"):
        build_config(TrainConfig, "camvid", ["flip=maybe"])
    with pytest.raises(ConfigError, match="not found"):
        build_config(TrainConfig, "no_such_config")


# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def tiny_camvid(tmp_path_factory, make_camvid) -> Path:
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", n=8)


def _cfg(root: Path, out: Path, **kw) -> TrainConfig:
    # fused=false: compiling the fused kernels costs more than these tiny runs (tests/test_fused.py covers them,
    # and the dead-channel and finetune tests below train fused)
    base = dict(data_root=str(root), out=str(out), epochs=3, batch_size=2, crop_size=[32, 48], workers=0,
                warmup_iters=2, val_batch_size=4, check_data=False, fused=False)  # fmt: skip
    base.update(kw)
    return build_config(TrainConfig, "camvid", **base)


def test_training_writes_everything_a_person_wants(tiny_camvid, tmp_path):
    out = tmp_path / "run"
    summary = train_mod.train(_cfg(tiny_camvid, out, check_data=True), log=lambda *a: None)
    for name in ["last.pth", "best.pth", "config.yaml", "metrics.jsonl", "metrics.csv", "loss.png", "miou.png"]:
        assert (out / name).is_file(), name
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(0 <= h["val_miou"] <= 1 and h["train_loss"] > 0 for h in history)
    assert summary["best_miou"] == max(h["val_miou"] for h in history)
    model = dabnet.load_model(out / "best.pth")
    meta = model.checkpoint_meta
    assert meta["class_names"][0] == "Sky" and meta["config"]["batch_size"] == 2 and meta["best_miou"] == summary["best_miou"]
    assert (out / "metrics.csv").read_text().startswith("epoch,iteration,lr,train_loss")
    # Re-running a finished run does nothing; a longer schedule continues it.
    assert train_mod.train(_cfg(tiny_camvid, out, check_data=True), log=lambda *a: None)["finished"]
    train_mod.train(_cfg(tiny_camvid, out, epochs=4), log=lambda *a: None)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


def test_kept_epochs_average_into_weights_that_evaluate_but_do_not_resume(tiny_camvid, tmp_path, capsys):
    from dabnet.cli import main

    out = tmp_path / "run"
    train_mod.train(_cfg(tiny_camvid, out, epochs=4, keep_every=2), log=lambda *a: None)
    kept = sorted(p.name for p in out.glob("epoch_*.pth"))
    assert kept == ["epoch_0002.pth", "epoch_0004.pth"]
    assert main(["average", str(out / "epoch_0002.pth"), str(out / "epoch_0004.pth"), "--out", str(tmp_path / "avg.pth")]) == 0
    assert "averaged 2 checkpoints (epochs 2, 4)" in capsys.readouterr().out
    res = run_evaluation(EvalConfig(checkpoint=str(tmp_path / "avg.pth"), data_root=str(tiny_camvid), workers=0, backend="eager"),
                         log=lambda *a: None)  # fmt: skip
    assert 0 <= res["miou"] <= 1
    with pytest.raises(CheckpointError, match="holds weights without the optimiser.*--set init_from="):
        train_mod.train(_cfg(tiny_camvid, tmp_path / "r2", epochs=5), resume=str(tmp_path / "avg.pth"), log=lambda *a: None)
    train_mod.train(_cfg(tiny_camvid, tmp_path / "r3", epochs=1, init_from=str(tmp_path / "avg.pth")), log=lambda *a: None)
    assert (tmp_path / "r3" / "last.pth").is_file()


def test_holdout_drive_is_left_out_of_training_validated_on_and_selects_best(tmp_path, make_camvid):
    root = make_camvid(tmp_path / "cv", n=8, sequences={"train": ["0001TP", "0006R0"], "val": ["0016E5"]})
    out = tmp_path / "run"
    logs = []
    cfg = _cfg(root, out, epochs=2, train_split="trainval", holdout=["0006R0"])
    summary = train_mod.train(cfg, log=logs.append)
    assert any("training dabnet on camvid:trainval-0006R0 (12 images" in m for m in logs)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(h["holdout_miou"] is not None and h["val_miou"] is not None for h in history)
    assert summary["best_miou"] == max(h["holdout_miou"] for h in history)  # chosen on the held-out drive
    assert any("val" in m and "holdout" in m and "warning" in m for m in logs)  # val (0016E5) is trained on
    meta = dabnet.load_model(out / "best.pth").checkpoint_meta
    assert meta["selected_on"] == "holdout" and meta["data_splits"]["holdout"] == ["0006R0"]
    assert "holdout_miou" in (out / "metrics.csv").read_text().splitlines()[0]
    res = run_evaluation(EvalConfig(checkpoint=str(out / "best.pth"), data_root=str(root), split="train",
                                    sequences=["0006R0"], workers=0, backend="eager"), log=lambda *a: None)  # fmt: skip
    assert res["images"] == 4 and res["miou"] == pytest.approx(meta["best_miou"], abs=1e-6)


def test_data_on_device_trains_on_the_batches_the_loader_gives(tiny_camvid, tmp_path):
    """Without rescaling (where PIL and torch resize differently) the device's batches are the loader's, epoch after
    epoch: the same crops, flips and order; and a run on them trains to the end."""
    batches = {}
    for on_device in (False, True):
        cfg = _cfg(tiny_camvid, tmp_path / str(on_device), epochs=2, scales=[1.0], data_on_device=on_device)
        run = train_mod.build_run(cfg, torch.device("cpu"), True, lambda *a: None)
        batches[on_device] = []
        for epoch in range(2):
            run.train_ds.set_epoch(epoch)
            run.sampler.set_epoch(epoch, 0)
            batches[on_device] += list(run.loader)
    assert len(batches[True]) == len(batches[False]) == 8
    for (xa, ya), (xb, yb) in zip(batches[False], batches[True]):
        torch.testing.assert_close(xb, xa, rtol=0, atol=1e-5)
        assert torch.equal(ya, yb)
    summary = train_mod.train(_cfg(tiny_camvid, tmp_path / "run", epochs=2, data_on_device=True), log=lambda *a: None)
    assert summary["epoch"] == 2 and torch.load(tmp_path / "run" / "last.pth", weights_only=True)["iteration"] == 8


def test_resume_after_sigterm_mid_epoch_is_exact(tiny_camvid, tmp_path, monkeypatch, sigterm_at):
    straight = tmp_path / "straight"
    train_mod.train(_cfg(tiny_camvid, straight, epochs=4), log=lambda *a: None)

    real = train_mod.train_one_epoch
    monkeypatch.setattr(train_mod, "train_one_epoch", sigterm_at(real, epoch=3, step=1))
    resumed = tmp_path / "resumed"
    result = train_mod.train(_cfg(tiny_camvid, resumed, epochs=4), log=lambda *a: None)
    assert result["interrupted"] == "SIGTERM" and result["epoch"] == 2 and result["iter_in_epoch"] == 1
    stopped_at = torch.load(resumed / "last.pth", weights_only=True)
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    train_mod.train(_cfg(tiny_camvid, resumed, epochs=4), log=lambda *a: None)
    a = torch.load(straight / "last.pth", weights_only=True)
    b = torch.load(resumed / "last.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])  # the resumed pass of epoch 3 drew nothing more from it
    assert [h["val_miou"] for h in a["history"]] == [h["val_miou"] for h in b["history"]]
    # The interrupted epoch's train_loss is the mean over all of its steps, not only those after the resume,
    # and its seconds and img/s count the steps before the stop too.
    assert [h["train_loss"] for h in a["history"]] == pytest.approx([h["train_loss"] for h in b["history"]], rel=1e-6)
    assert stopped_at["images_sum"] == 2 and stopped_at["seconds_sum"] > 0  # one step of batch 2
    epoch_3 = b["history"][2]
    assert epoch_3["seconds"] > stopped_at["seconds_sum"]
    # img/s x seconds is the epoch's images: all 4 steps (8), not the 3 after the resume (6). Both figures are
    # rounded to 2 decimals, which for an epoch of ~0.2 s moves the product by up to ips * 0.005.
    ips, seconds = epoch_3["images_per_s"], epoch_3["seconds"]
    assert abs(ips * seconds - 8) <= 0.005 * (ips + seconds) + 1e-6 < 1, (ips, seconds)


def test_a_stop_on_an_epochs_last_step_saves_once_and_resumes_at_the_next_epoch(tiny_camvid, tmp_path, monkeypatch, sigterm_at):
    from dabnet.training import outputs

    real, save, saved = train_mod.train_one_epoch, outputs.save_checkpoint, []
    monkeypatch.setattr(train_mod, "train_one_epoch", sigterm_at(real, epoch=2, step=4))  # tiny_camvid: 4 steps an epoch
    monkeypatch.setattr(outputs, "save_checkpoint", lambda ckpt, path: saved.append((ckpt["epoch"], Path(path).name)) or save(ckpt, path))
    result = train_mod.train(_cfg(tiny_camvid, tmp_path / "run", epochs=3), log=lambda *a: None)
    assert result["interrupted"] == "SIGTERM" and result["epoch"] == 2 and result["iter_in_epoch"] == 0
    assert [s for s in saved if s[1] == "last.pth"] == [(1, "last.pth"), (2, "last.pth")]  # not twice for epoch 2
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    assert train_mod.train(_cfg(tiny_camvid, tmp_path / "run", epochs=3), log=lambda *a: None)["epoch"] == 3


def test_checkpoints_written_before_the_redesign_still_resume(tiny_camvid, tmp_path):
    """The layout of a pre-RunState checkpoint (no loss sums, `amp` in its config, no holdout keys)
    resumes: this pins the keys train.RunState reads."""
    out = tmp_path / "old"
    train_mod.train(_cfg(tiny_camvid, out, epochs=1), log=lambda *a: None)
    ckpt = torch.load(out / "last.pth", weights_only=True)
    new_keys = ("loss_sum", "loss_steps", "seconds_sum", "images_sum", "selected_on", "hardware", "train_model", "callbacks",
                "world_size")
    old = {k: v for k, v in ckpt.items() if k not in new_keys}
    old["config"] = {("amp" if k == "precision" else k): ("none" if k == "precision" else v) for k, v in ckpt["config"].items()}
    old["data_splits"] = {"train": "train", "val": "val"}
    assert set(old) == {"format", "model_name", "num_classes", "model_kwargs", "model", "dataset", "class_names", "palette",
                        "ignore_index", "raw_ignore", "mean", "std", "config", "data_splits", "epoch", "iter_in_epoch",
                        "iteration", "best_miou", "history", "optimizer", "scheduler", "scaler", "rng", "finished"}  # fmt: skip
    dabnet.save_checkpoint(old, out / "last.pth")
    assert dabnet.load_model(out / "last.pth").num_classes == 11
    summary = train_mod.train(_cfg(tiny_camvid, out, epochs=2), log=lambda *a: None)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and summary["best_miou"] >= 0


@pytest.mark.slow
def test_sigint_from_outside_saves_and_exits_cleanly(tiny_camvid, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dabnet", "train", "--config", "camvid", "--out", str(out)] + sum(
        (["--set", s] for s in [f"data_root={tiny_camvid}", "epochs=200", "batch_size=2", "crop_size=[32,48]",
                                "workers=0", "check_data=false", "val_every=100", "fused=false"]), [])  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import time

    deadline = time.time() + 120
    while not (out / "last.pth").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "SIGINT: saved" in output and "Traceback" not in output
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert not ckpt["finished"] and ckpt["epoch"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_whole_process_group_with_loader_workers(tiny_camvid, tmp_path, sig):
    """Ctrl-C in a terminal, or a scheduler's SIGTERM, reaches the loader workers too."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dabnet", "train", "--config", "camvid", "--out", str(out)] + sum(
        (["--set", s] for s in [f"data_root={tiny_camvid}", "epochs=200", "batch_size=2", "crop_size=[32,48]",
                                "workers=2", "check_data=false", "val_every=100", "fused=false"]), [])  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    import time

    deadline = time.time() + 120
    while not (out / "last.pth").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    os.killpg(proc.pid, sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, output[-1500:]
    assert "saved" in output and "Traceback" not in output
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] >= 1


def _children() -> set:
    """Pids of this process's children (Linux /proc)."""
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            kids.add(int(stat.parent.name))
    return kids


def _sigterm_validation_workers(root: Path, out: Path, read_first: int) -> None:
    """A run's validation loader with two workers: read `read_first` batches, SIGTERM both workers, read the rest;
    every frame must come through."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    run = train_mod.build_run(_cfg(root, out, workers=2, val_batch_size=1), torch.device("cpu"), fresh=True, log=lambda *a: None)
    loader = run.val_loaders["val"]
    before = _children()
    batches = iter(loader)
    got = [next(batches) for _ in range(read_first)]
    workers = _children() - before
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    time.sleep(1.0)  # a worker that died of it would be reported here, by PyTorch's SIGCHLD handler
    got += list(batches)
    assert len(got) == len(loader.dataset)


@pytest.mark.slow  # two loader workers
def test_a_stop_signal_during_validation_leaves_its_loader_workers_running(tiny_camvid, tmp_path):
    """A SIGTERM sent to every process (`pkill -f`, systemd's control group) while the trainer validates: the
    validation's workers leave it to the trainer and the validation ends, instead of a killed worker making
    PyTorch raise in the trainer (which then saves at its step boundary, as the test above checks)."""
    _sigterm_validation_workers(tiny_camvid, tmp_path / "run", read_first=2)  # one batch from each worker: both past their init


@pytest.mark.slow  # two loader workers
def test_a_stop_signal_as_loader_workers_start_is_left_to_the_trainer(tiny_camvid, tmp_path, monkeypatch):
    """The same signal in the moment between a worker's start and its worker_init_fn (made a second long here):
    the worker started with the signal blocked, and drops it once it ignores it."""
    import dabnet.training.sampling as sampling

    real = sampling.worker_ignores_stop_signals

    def slow_to_start(worker_id: int) -> None:
        time.sleep(1.0)
        real(worker_id)

    monkeypatch.setattr(sampling, "worker_ignores_stop_signals", slow_to_start)
    _sigterm_validation_workers(tiny_camvid, tmp_path / "run", read_first=0)


def _poison_loss(monkeypatch, alter):
    """Pass the training loss's value through `alter(value, n)` at its n-th (1-based) call."""
    real = train_mod.build_loss

    def poisoned(*a, **k):
        loss, calls = real(*a, **k), {"n": 0}
        orig = loss.forward

        def forward(logits, target):
            calls["n"] += 1
            return alter(orig(logits, target), calls["n"])

        loss.forward = forward
        return loss

    monkeypatch.setattr(train_mod, "build_loss", poisoned)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_camvid, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _poison_loss(monkeypatch, lambda v, n: v * float("nan") if n > 5 else v)  # 4 steps per epoch: NaN in epoch 2
    with pytest.raises(NonFiniteLossError, match=r"loss is nan.*epoch 2.*last good checkpoint is kept"):
        train_mod.train(_cfg(tiny_camvid, out), log=lambda *a: None)
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1


def test_a_stop_in_the_first_epoch_names_no_checkpoint_that_does_not_exist(tiny_camvid, tmp_path, monkeypatch):
    """The stop message named OUT/last.pth before any epoch had written one."""
    out = tmp_path / "run"
    _poison_loss(monkeypatch, lambda v, n: v * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"loss is nan.*epoch 1.*no epoch finished, so no checkpoint was saved") as e:
        train_mod.train(_cfg(tiny_camvid, out), log=lambda *a: None)
    assert not (out / "last.pth").exists() and "last.pth" not in str(e.value)


class _InfGradient(torch.autograd.Function):
    """Identity forward; an inf gradient backward (a finite loss whose gradients blow up)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def _inf_gradients_at(monkeypatch, steps):
    """Make the training loss's gradient inf at the given (1-based) loss calls."""
    _poison_loss(monkeypatch, lambda v, n: _InfGradient.apply(v) if n in steps else v)


def test_steps_with_inf_gradients_are_skipped_and_adam_stays_finite(tiny_camvid, tmp_path, monkeypatch):
    _inf_gradients_at(monkeypatch, {2, 3})  # 4 steps an epoch: two in epoch 1
    logs = []
    train_mod.train(_cfg(tiny_camvid, tmp_path / "run", epochs=2, val_every=2), log=logs.append)
    assert any("epoch 1: 2 step(s) skipped" in str(m) for m in logs), logs
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(t).all() for s in ckpt["optimizer"]["state"].values() for t in (s["exp_avg"], s["exp_avg_sq"]))
    assert ckpt["iteration"] == 8  # the schedule still counts the skipped steps


def test_inf_gradients_step_after_step_stop_training(tiny_camvid, tmp_path, monkeypatch):
    _inf_gradients_at(monkeypatch, set(range(2, 100)))
    with pytest.raises(NonFiniteLossError, match=r"gradients were inf or NaN.*10 steps in a row.*epoch 3"):
        train_mod.train(_cfg(tiny_camvid, tmp_path / "run"), log=lambda *a: None)


@pytest.mark.slow
def test_init_from_weights_with_dead_channels_reinitialises_them_and_training_warns_when_channels_die(tiny_camvid, tmp_path):
    """A depth-wise channel whose weight overflowed (as two layers of the v2 CamVid weights did) is dead for good:
    init_from starts it afresh and says so; a run in which one appears says so after the epoch."""
    from dabnet.models.layers import broken_channels

    train_mod.train(_cfg(tiny_camvid, tmp_path / "a", epochs=1, fused=True), log=lambda *a: None)
    ckpt = torch.load(tmp_path / "a" / "last.pth", weights_only=True)
    ckpt["model"]["block1.0.ddw3x1.conv.weight"][30] = 2.6e25
    ckpt["model"]["block2.3.ddw3x1.bn.running_var"][5] = float("inf")
    torch.save(ckpt, tmp_path / "broken.pth")
    assert broken_channels(dabnet.load_model(tmp_path / "broken.pth")) == {"block1.0.ddw3x1": [30], "block2.3.ddw3x1": [5]}
    logs = []
    train_mod.train(_cfg(tiny_camvid, tmp_path / "b", epochs=1, init_from=str(tmp_path / "broken.pth")), log=logs.append)
    assert any("re-initialised 2 channel(s) (block1.0.ddw3x1 [30]; block2.3.ddw3x1 [5])" in m for m in logs), logs
    assert not any("warning: after epoch" in m for m in logs)
    after = torch.load(tmp_path / "b" / "last.pth", weights_only=True)["model"]
    assert after["block1.0.ddw3x1.conv.weight"].abs().max() < 10 and torch.isfinite(after["block2.3.ddw3x1.bn.running_var"]).all()

    real = train_mod.end_of_epoch

    def corrupt_then_end(run, *a, **k):  # an update that overflows one weight, as a kernel bug would
        with torch.no_grad():
            run.model.block1[0].ddw3x1.conv.weight[3] = float("inf")
        return real(run, *a, **k)

    logs.clear()
    train_mod.end_of_epoch = corrupt_then_end
    try:
        train_mod.train(_cfg(tiny_camvid, tmp_path / "c", epochs=1), log=logs.append)
    finally:
        train_mod.end_of_epoch = real
    assert any("warning: after epoch 1 1 channel(s) (block1.0.ddw3x1 [3]) hold non-finite weights" in m for m in logs), logs


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_clip_and_check_rejects_gradients_whose_square_overflows(grad_clip):
    from dabnet.training.engine import clip_and_check

    layer = torch.nn.Linear(2, 1)
    for value, ok in ((1.0, True), (1e19, True), (3e19, False), (float("inf"), False), (float("nan"), False)):
        layer.weight.grad = torch.full_like(layer.weight, value)
        layer.bias.grad = torch.zeros_like(layer.bias)
        assert clip_and_check(layer, grad_clip) is ok, value
        if ok and grad_clip > 0:
            assert torch.linalg.vector_norm(layer.weight.grad) <= grad_clip + 1e-4


def test_bad_inputs_are_clear(tiny_camvid, tmp_path):
    with pytest.raises(ValueError, match="CamVid root not found"):
        train_mod.train(_cfg(tmp_path / "missing", tmp_path / "r1"), log=lambda *a: None)
    wrong = dabnet.save_checkpoint(dabnet.io.checkpoint.make_checkpoint(dabnet.create_model("dabnet", 19)), tmp_path / "c19.pth")
    with pytest.raises(ConfigError, match=r"holds a dabnet, but this run trains model=enet; .*--set model=dabnet"):
        train_mod.train(_cfg(tiny_camvid, tmp_path / "r2", init_from=str(wrong), model="enet"), log=lambda *a: None)
    with pytest.raises(CheckpointError, match="predicts 19 classes"):
        run_evaluation(EvalConfig(checkpoint=str(wrong), data_root=str(tiny_camvid), workers=0, backend="eager"), log=lambda *a: None)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs torchrun")
def test_torchrun_two_processes_on_cpu(tiny_camvid, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m", "dabnet",
           "train", "--config", "camvid", "--out", str(out)] + sum(
        (["--set", s] for s in [f"data_root={tiny_camvid}", "epochs=2", "batch_size=2", "crop_size=[32,48]",
                                "workers=0", "check_data=false", "warmup_iters=1", "sync_bn=true", "fused=false"]), [])  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(h["val_miou"] is not None for h in history)
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["iteration"] == 2 * 8 // (2 * 2)  # 8 images, 2 processes x batch 2: 2 steps per epoch
    assert res.stdout.count("epoch 2/2  loss") == 1  # only rank 0 logs
    assert "sync_bn ignored" in res.stdout  # SyncBatchNorm is CUDA-only: said, not crashed


# ----------------------------------------------------------------------------- eval


@pytest.mark.slow  # eval's loader workers
def test_eval_json_png_flip_multiscale(tiny_camvid, tmp_path, capsys):
    out = tmp_path / "run"
    train_mod.train(_cfg(tiny_camvid, out, epochs=1), log=lambda *a: None)
    js, png = tmp_path / "eval.json", tmp_path / "cm.png"
    from dabnet.cli import main

    assert main(["eval", "--checkpoint", str(out / "best.pth"), "--data-root", str(tiny_camvid), "--json", str(js), "--backend", "eager",
                 "--confusion-png", str(png)]) == 0  # fmt: skip
    result = json.loads(js.read_text())
    assert set(result) == {"miou", "per_class_iou", "pixel_acc", "images", "backend"} and result["images"] == 8
    assert 0 <= result["miou"] <= 1 and "Sky" in result["per_class_iou"] and png.stat().st_size > 1000
    assert "mIoU" in capsys.readouterr().out
    hist = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert result["miou"] == pytest.approx(hist["val_miou"], abs=1e-6)  # eval == validation during training
    tta = run_evaluation(EvalConfig(checkpoint=str(out / "best.pth"), data_root=str(tiny_camvid), workers=0, flip=True, backend="eager",
                                    scales=[0.75, 1.0, 1.25]), log=lambda *a: None)  # fmt: skip
    assert tta["miou"] == pytest.approx(_tta_miou_by_hand(out / "best.pth", tiny_camvid, (0.75, 1.0, 1.25)), abs=1e-6)


def _tta_miou_by_hand(ckpt, root, scales) -> float:
    """mIoU of the mean softmax over scales and mirror images, written out here: each view resized from the
    image, run, mirrored back, its logits resized to the image's size; IoU per class present, NumPy only."""
    from dabnet.data.datasets import CamVid
    from dabnet.data.transforms import EvalTransform

    model = dabnet.load_model(ckpt).eval()
    meta = model.checkpoint_meta
    ds = CamVid(root, "val", transform=EvalTransform())
    mean, std = torch.tensor(meta["mean"]).view(1, 3, 1, 1), torch.tensor(meta["std"]).view(1, 3, 1, 1)
    conf = np.zeros((11, 11), np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            x = (x.permute(2, 0, 1)[None].float() - mean) / std
            h, w = x.shape[2:]
            prob = torch.zeros(1, 11, h, w)
            for s in scales:
                xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
                for mirrored in (False, True):
                    v = xs.flip(3) if mirrored else xs
                    out = model(v)
                    out = out.flip(3) if mirrored else out
                    prob += F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False).softmax(1)
            pred, y = prob.argmax(1)[0].numpy(), y.numpy()
            keep = y != 255
            np.add.at(conf, (y[keep], pred[keep]), 1)
    inter, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    present = conf.sum(1) > 0
    return float((inter[present] / np.maximum(union[present], 1)).mean())


def test_eval_accepts_official_checkpoints(tmp_path, official_reference, make_cityscapes):
    root = make_cityscapes(tmp_path / "cs")
    sd, _, _ = official_reference
    ckpt = tmp_path / "official.pth"
    torch.save({"epoch": 1, "model": {"module." + k: v for k, v in sd.items()}}, ckpt)
    res = run_evaluation(EvalConfig(checkpoint=str(ckpt), dataset="cityscapes", data_root=str(root), workers=0, backend="eager"),
                         log=lambda *a: None)  # fmt: skip
    assert res["images"] == 4 and len(res["per_class_iou"]) == 19


def test_gradient_clipping_bounds_the_step():
    from dabnet.training.engine import train_one_epoch

    def step(clip):
        torch.manual_seed(0)
        model = dabnet.create_model("dabnet", 3)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
        batch = [(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))]
        train_one_epoch(model, batch, CrossEntropy(), opt, sched, torch.device("cpu"), grad_clip=clip)
        return torch.cat([p.detach().flatten() for p in model.parameters()]) - before

    assert step(0.5).norm() <= 0.5 + 1e-4  # SGD with lr 1: the step is the clipped gradient
    assert step(0.0).norm() > 0.5


@pytest.mark.slow  # the fused kernels compile
def test_training_on_a_user_folder_dataset(tmp_path, make_folder):
    spec = make_folder(tmp_path / "toy")
    cfg = build_config(TrainConfig, "folder_example", data_root=str(spec), out=str(tmp_path / "run"), epochs=1,
                       batch_size=2, crop_size=[32, 32], workers=0, check_data=True, val_batch_size=2)  # fmt: skip
    summary = train_mod.train(cfg, log=lambda *a: None)
    model = dabnet.load_model(tmp_path / "run" / "last.pth")
    assert model.num_classes == 2 and model.checkpoint_meta["class_names"] == ["background", "thing"]
    assert summary["best_miou"] >= 0


@pytest.mark.parametrize("name", [m for m in dabnet.list_models() if m not in ("segnet", "icnet")])  # the 2 heavy ones: same path
def test_init_from_another_class_count_keeps_the_body_and_starts_a_new_head(name, tiny_camvid, tmp_path):
    """Issue 25: fine-tuning pretrained weights (here 19 classes) on a dataset of 11: every tensor that fits
    is kept, what depends on the classes starts fresh, and the log names both."""
    torch.manual_seed(3)
    source = dabnet.create_model(name, 19)
    path = dabnet.save_checkpoint(dabnet.io.checkpoint.make_checkpoint(source), tmp_path / "src.pth")
    logs = []
    run = train_mod.build_run(_cfg(tiny_camvid, tmp_path / "run", model=name, init_from=str(path)), torch.device("cpu"), True, logs.append)
    theirs, ours = source.state_dict(), run.model.state_dict()
    new = [k for k in ours if ours[k].shape != theirs[k].shape]
    assert new and all(torch.equal(ours[k], theirs[k]) for k in ours if k not in new)
    (line,) = [m for m in logs if m.startswith(f"initialised from {path}")]
    assert f"{len(ours) - len(new)} tensors kept, {len(new)} new for 11 classes instead of 19" in line and new[0] in line


@pytest.mark.slow  # the fused kernels compile
def test_the_finetune_config_trains_a_new_head_on_the_bundled_weights(tmp_path, make_folder):
    spec = make_folder(tmp_path / "toy")
    cfg = build_config(TrainConfig, "finetune", data_root=str(spec), out=str(tmp_path / "run"), epochs=1, batch_size=2,
                       crop_size=[32, 32], workers=0, val_batch_size=2, val_every=1)  # fmt: skip
    assert (cfg.init_from, cfg.lr, cfg.dataset) == ("dabnet-camvid", 5e-4, "folder")
    logs = []
    train_mod.train(cfg, log=logs.append)
    assert any("1 new for 2 classes instead of 11 (classifier.weight)" in m for m in logs), logs
    model = dabnet.load_model(tmp_path / "run" / "last.pth")
    assert model.num_classes == 2 and model.checkpoint_meta["class_names"] == ["background", "thing"]


def test_bad_files_stop_training_before_it_starts(tiny_camvid, tmp_path):
    import shutil

    root = tmp_path / "camvid"
    shutil.copytree(tiny_camvid, root)
    (root / "val" / "f001.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"(?s)1 problem\(s\) in camvid:val, found before training.*f001.png.*dabnet data check"):
        train_mod.train(_cfg(root, tmp_path / "run", check_data=True), log=lambda *a: None)
    assert not (tmp_path / "run" / "last.pth").exists()


@pytest.mark.slow
def test_an_unexpected_error_with_loader_workers_alive_still_exits(tiny_camvid, tmp_path):
    """Issue 14, row 1: workers ignore SIGTERM, so an error escaping the loop while they lived left the
    process waiting on them forever at exit. Now the loop drops its loader first: a prompt exit."""
    script = f"""
import dabnet.training.engine, dabnet.commands.train as T
from dabnet.config import TrainConfig, build_config
import asyncio
import errno
def boom(*a, **k):
    raise KeyError("injected")
dabnet.training.engine.autocast = boom  # fails inside the step, after the workers started
cfg = build_config(TrainConfig, "camvid", data_root={str(tiny_camvid)!r}, out={str(tmp_path / "run")!r}, epochs=1,
                   batch_size=2, crop_size=[32, 48], workers=2, check_data=False)
T.train(cfg, log=lambda *a: None)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "KeyError: 'injected'" in res.stderr


@pytest.mark.parametrize("setting", ["weight_decay=[1]", "betas=5", "mean=5", "train_split=[a]", "model_kwargs={foo: 1}",
                                     "model_kwargs={block_2: x}", "holdout=5", "scales=[a]", "ema=[1]", "epochs=1.5"])  # fmt: skip
def test_settings_of_the_wrong_type_are_one_line_errors(setting, tmp_path, capsys):
    from dabnet.cli import main

    assert main(["train", "--config", "camvid", "--out", str(tmp_path / "run"), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dabnet train: error: {setting.split('=')[0]}=") and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_fuzzed_settings_give_a_config_or_a_config_error():
    """Every field set to values of every other kind, as YAML or --set gives them: a TrainConfig or a ConfigError."""
    import dataclasses

    values = ["1", "0", "-1", "2.5", "true", "null", "[]", "[1]", "[a]", "[a", "{}", "{a: 1}", "x", "[1, 2]", "nan", "inf"]
    outcomes = set()
    for f in dataclasses.fields(TrainConfig):
        for v in values:
            try:
                build_config(TrainConfig, "camvid", **{f.name: v})
                outcomes.add("config")
            except ConfigError as e:
                assert "\n" not in str(e), (f.name, v, str(e))
                outcomes.add("error")
    assert outcomes == {"config", "error"}


def _ddp_rank(rank: int, world: int, port: int, out: str, mode: str) -> None:
    """One gloo process of test_ranks_agree...: trains a tiny DDP model; rank 1 alone is told to stop (mode "stop")
    or rank 0's loss alone turns NaN (mode "nan") at the third step. Writes what its train_one_epoch did."""
    import datetime

    import torch.distributed as dist

    from dabnet.training.engine import NonFiniteLossError, train_one_epoch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A short timeout: ranks that disagree block in an all-reduce, and the test fails in seconds instead of hanging.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Conv2d(3, 4, 1))
    opt = torch.optim.SGD(model.parameters(), 0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    batches = [(torch.randn(2, 3, 4, 4), torch.randint(0, 4, (2, 4, 4))) for _ in range(6)]
    calls = {"n": 0}

    def loss_fn(logits, y):
        calls["n"] += 1
        loss = F.cross_entropy(logits, y)
        return loss * float("nan") if mode == "nan" and rank == 0 and calls["n"] == 3 else loss

    stop = (lambda: calls["n"] >= 2) if mode == "stop" and rank == 1 else (lambda: False)
    try:
        result = train_one_epoch(model, batches, loss_fn, opt, sched, torch.device("cpu"), should_stop=stop)
        outcome = {"steps": result["steps"], "stopped": result["stopped"]}
    except NonFiniteLossError as e:
        outcome = {"raised": str(e)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stop", "nan"])
def test_ranks_agree_on_a_stop_or_a_nan_that_only_one_of_them_sees(tmp_path, mode):
    import torch.multiprocessing as mp

    port = 29600 + (os.getpid() % 200) + (0 if mode == "stop" else 1)
    mp.start_processes(_ddp_rank, args=(2, port, str(tmp_path), mode), nprocs=2, join=True, start_method="spawn")
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    if mode == "stop":
        assert outcomes == [{"steps": 2, "stopped": True}] * 2
    else:
        # one line on both: the process whose loss it was, and the step
        assert outcomes == [{"raised": "loss is nan in process 0 after 2 step(s) of this epoch"}] * 2


def _two_epochs(root: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data_root=str(root), out=str(out), epochs=2, batch_size=2, crop_size=[32, 48], workers=0,
                warmup_iters=2, val_batch_size=4, check_data=False, fused=False)  # fmt: skip
    base.update(kw)
    return build_config(TrainConfig, "camvid", **base)


@pytest.fixture(scope="module")
def camvid4(tmp_path_factory, make_camvid) -> Path:
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", n=4)


def test_a_second_train_on_the_same_folder_stops_at_once(camvid4, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # what a running `dabnet train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242\n")
        held.flush()
        with pytest.raises(ConfigError, match=r"in use by another `dabnet train` \(pid 4242\).*another --out"):
            train_mod.train(_two_epochs(camvid4, out), log=lambda *a: None)
    assert not (out / "last.pth").exists()
    train_mod.train(_two_epochs(camvid4, out, epochs=1), log=lambda *a: None)  # released: the folder is usable again
    assert (out / "last.pth").is_file()


def test_restart_moves_the_previous_run_aside_so_average_never_mixes_runs(camvid4, tmp_path):
    out = tmp_path / "run"
    train_mod.train(_two_epochs(camvid4, out, keep_every=1), log=lambda *a: None)
    old_last = digest(out / "last.pth")
    logs = []
    train_mod.train(_two_epochs(camvid4, out, epochs=1, keep_every=1, seed=5), restart=True, log=logs.append)
    assert sorted(p.name for p in out.glob("epoch_*.pth")) == ["epoch_0001.pth"]
    (aside,) = out.glob("previous-*")
    assert sorted(p.name for p in aside.glob("epoch_*.pth")) == ["epoch_0001.pth", "epoch_0002.pth"]
    assert digest(aside / "last.pth") == old_last
    assert any("--restart: moved the previous run's" in m for m in logs)


@pytest.mark.slow  # a loader worker
def test_resume_with_a_different_model_refuses_in_one_line_and_other_changes_are_named(camvid4, tmp_path):
    out = tmp_path / "run"
    train_mod.train(_two_epochs(camvid4, out, epochs=1), log=lambda *a: None)
    with pytest.raises(CheckpointError, match=r"different model 'dabnet' -> 'enet'\. Use --restart") as e:
        train_mod.train(_two_epochs(camvid4, out, model="enet"), log=lambda *a: None)
    assert "\n" not in str(e.value) and "Missing key" not in str(e.value)
    logs = []
    train_mod.train(_two_epochs(camvid4, out, epochs=2, lr=5e-4, workers=1), log=logs.append)
    changed = [m for m in logs if m.startswith("resuming with changed settings")]
    assert changed and "epochs 1 -> 2" in changed[0] and "lr 0.001 -> 0.0005" in changed[0] and "workers" not in changed[0]
