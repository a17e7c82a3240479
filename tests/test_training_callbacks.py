"""Training extensions (dabnet.training): the callback seam, weight EMA and distillation."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dabnet
import dabnet.training.run as train_mod
from dabnet.config import ConfigError, TrainConfig, build_config
from dabnet.data.transforms import TrainTransform, soft_window
from dabnet.io.checkpoint import make_checkpoint
from dabnet.training import Callback
from dabnet.training import callbacks as callbacks_mod
from dabnet.training import distill as distill_mod
from dabnet.training.distill import CACHE_STRIDE, DistillError, distillation_loss, teacher_probabilities
from dabnet.training.ema import EMA


@pytest.fixture(scope="module")
def tiny_camvid(tmp_path_factory, make_camvid) -> Path:
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", n=8)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_camvid) -> Path:
    """A 1-epoch CamVid run's weights: a teacher with the dataset's classes and statistics."""
    out = tmp_path_factory.mktemp("teacher")
    train_mod.train(_cfg(tiny_camvid, out, epochs=1), log=lambda *a: None)
    return out / "last.pth"


def _cfg(root: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data_root=str(root), out=str(out), epochs=3, batch_size=2, crop_size=[32, 48], workers=0,
                warmup_iters=2, val_batch_size=4, check_data=False, fused=False)  # fmt: skip
    base.update(kw)
    return build_config(TrainConfig, "camvid", **base)


def _run_stopped_and_resumed(cfg_of, tmp_path, monkeypatch, sigterm_at, epoch=2, step=1):
    """(straight, resumed) last.pth of the same run, the second stopped by SIGTERM mid-epoch and resumed."""
    train_mod.train(cfg_of(tmp_path / "straight"), log=lambda *a: None)
    real = train_mod.train_one_epoch
    monkeypatch.setattr(train_mod, "train_one_epoch", sigterm_at(real, epoch, step))
    result = train_mod.train(cfg_of(tmp_path / "resumed"), log=lambda *a: None)
    assert result.get("interrupted") == "SIGTERM" and result["iter_in_epoch"] == step
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    train_mod.train(cfg_of(tmp_path / "resumed"), log=lambda *a: None)
    load = lambda p: torch.load(p / "last.pth", weights_only=True)  # noqa: E731
    return load(tmp_path / "straight"), load(tmp_path / "resumed")


def _equal_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the seam


def test_a_registered_callback_sees_every_step_and_adds_to_the_loss(tiny_camvid, tmp_path, monkeypatch):
    """A kind of callback is one factory and one registration; it sees each batch, logits and loss, can change
    the loss, and reports in the epoch's record."""
    seen = []

    class Doubler(Callback):
        name = "doubler"

        def on_loss(self, batch, logits, loss):
            seen.append((tuple(batch[0].shape), tuple(logits.shape), float(loss.detach())))
            return loss * 2

        def on_epoch_end(self, record):
            record["doubled_steps"] = len(seen)

    monkeypatch.setitem(callbacks_mod._FACTORIES, "doubler", lambda cfg, device, log: Doubler())
    train_mod.train(_cfg(tiny_camvid, tmp_path / "run", epochs=1), log=lambda *a: None)
    assert len(seen) == 4 and seen[0][0] == (2, 3, 32, 48) and seen[0][1] == (2, 11, 32, 48)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["doubled_steps"] == 4
    # The loss trained on is the callback's: train_loss is the mean of the doubled losses.
    assert history[0]["train_loss"] == pytest.approx(2 * np.mean([s[2] for s in seen]), rel=1e-5)


def test_weights_in_swaps_and_restores_bit_for_bit():
    model = dabnet.create_model("dabnet", 11)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = {k: (v + 1 if v.is_floating_point() else v) for k, v in before.items()}
    with callbacks_mod.weights_in(model, other):
        assert torch.equal(model.state_dict()["classifier.weight"], other["classifier.weight"])
    assert _equal_weights(model.state_dict(), before)
    # The model's own weights (a fresh state_dict of it) are not copied in and out: validation without EMA costs nothing.
    loads = []
    real = model.load_state_dict
    model.load_state_dict = lambda *a, **k: loads.append(1) or real(*a, **k)
    with callbacks_mod.weights_in(model, model.state_dict()):
        pass
    assert loads == []


# ----------------------------------------------------------------------------- EMA


def test_ema_update_is_the_exponential_average_by_hand():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(0.9)
    ema.on_start(model)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked.fill_(7)
    ema.on_step_end(model)
    torch.testing.assert_close(ema.shadow["0.weight"], 0.9 * w0 + 0.1 * (w0 + 1.0))
    assert int(ema.shadow["1.num_batches_tracked"]) == 7 and ema.updates == 1


def test_ema_run_publishes_the_average_keeps_the_trained_weights_and_resumes_bit_exactly(tiny_camvid, tmp_path, monkeypatch, sigterm_at):
    a, b = _run_stopped_and_resumed(lambda out: _cfg(tiny_camvid, out, epochs=3, ema=0.5), tmp_path, monkeypatch, sigterm_at)
    # The checkpoint's model is the average (what eval, predict and average use), train_model the trained weights.
    assert not _equal_weights(a["model"], a["train_model"])
    assert _equal_weights(a["model"], a["callbacks"]["ema"]["shadow"]) and a["callbacks"]["ema"]["updates"] == 12
    for key in ("model", "train_model"):
        assert _equal_weights(a[key], b[key]), key
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    assert [h["val_miou"] for h in a["history"]] == [h["val_miou"] for h in b["history"]]
    assert all(h["val_trained_miou"] is not None for h in a["history"])  # both figures, every validation
    loaded = dabnet.load_model(tmp_path / "straight" / "last.pth")
    assert _equal_weights({k: v for k, v in loaded.state_dict().items()}, dict(a["model"]))


def test_ema_does_not_change_the_trained_weights(tiny_camvid, tmp_path):
    """The average is a passenger: the weights trained with EMA on are those of the same run without it."""
    train_mod.train(_cfg(tiny_camvid, tmp_path / "plain", epochs=2), log=lambda *a: None)
    train_mod.train(_cfg(tiny_camvid, tmp_path / "ema", epochs=2, ema=0.9), log=lambda *a: None)
    plain = torch.load(tmp_path / "plain" / "last.pth", weights_only=True)
    ema = torch.load(tmp_path / "ema" / "last.pth", weights_only=True)
    assert _equal_weights(plain["model"], ema["train_model"])
    assert [h["val_miou"] for h in plain["history"]] == [h["val_trained_miou"] for h in ema["history"]]


def test_switching_ema_off_on_resume_trains_on_from_the_trained_weights(tiny_camvid, tmp_path):
    out = tmp_path / "run"
    train_mod.train(_cfg(tiny_camvid, out, epochs=1, ema=0.5), log=lambda *a: None)
    trained = torch.load(out / "last.pth", weights_only=True)["train_model"]
    seen = {}
    real = train_mod.build_run

    def spy(*a, **k):
        run = real(*a, **k)
        restore = run.restore
        run.restore = lambda ckpt: (restore(ckpt), seen.update({k: v.clone() for k, v in run.model.state_dict().items()}))[0]
        return run

    import unittest.mock as mock

    with mock.patch.object(train_mod, "build_run", spy):
        train_mod.train(_cfg(tiny_camvid, out, epochs=2), log=lambda *a: None)
    assert _equal_weights({k: seen[k] for k in trained}, trained)


def test_ema_decay_is_checked():
    with pytest.raises(ConfigError, match="ema"):
        TrainConfig(ema=1.0)
    with pytest.raises(ConfigError, match="ema"):
        TrainConfig(ema=float("nan"))


# ----------------------------------------------------------------------------- distillation


def test_distillation_loss_equals_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 2, 2, generator=g)
    teacher = torch.rand(2, 3, 2, 2, generator=g)
    soft = (teacher / teacher.sum(1, keepdim=True) * 255).round().to(torch.uint8)
    soft[1, :, 1, 1] = 0  # padding: no teacher
    target = torch.tensor([[[0, 1], [255, 2]], [[1, 1], [0, 2]]])
    T = 2.0
    total, count = 0.0, 0
    for n in range(2):
        for i in range(2):
            for j in range(2):
                p = soft[n, :, i, j].double().numpy()
                if target[n, i, j] == 255 or p.sum() == 0:
                    continue
                p = np.maximum(p / p.sum(), 1e-6)
                qt = p ** (1 / T) / (p ** (1 / T)).sum()  # softmax(log p / T)
                z = logits[n, :, i, j].double().numpy() / T
                qs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                total += float((qt * np.log(qt / qs)).sum())
                count += 1
    expected = T * T * total / count
    assert count == 6
    assert float(distillation_loss(logits, soft, target, 255, T)) == pytest.approx(expected, rel=1e-5)
    # Its gradient is autograd's through the same formula, written out.
    z = logits.double().requires_grad_()
    p = soft.double()
    valid = ((target != 255) & (p.sum(1) > 0)).double()
    log_qt = torch.log_softmax(torch.log((p / p.sum(1, keepdim=True).clamp_min(1)).clamp_min(1e-6)) / T, 1)
    kl = (log_qt.exp() * (log_qt - torch.log_softmax(z / T, 1))).sum(1)
    ((kl * valid).sum() / valid.sum() * T * T).backward()
    mine = logits.clone().requires_grad_()
    distillation_loss(mine, soft, target, 255, T).backward()
    torch.testing.assert_close(mine.grad.double(), z.grad, rtol=1e-5, atol=1e-7)
    # A teacher equal to the student costs nothing (up to uint8 rounding), at any temperature.
    same = (logits.softmax(1) * 255).round().to(torch.uint8)
    assert float(distillation_loss(logits, same, torch.zeros_like(target), 255, 1.0)) < 2e-3


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_compiled_distillation_loss_matches_the_eager_one(temperature):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 12, 16, generator=g)
    soft = (torch.rand(2, 5, 12, 16, generator=g) * 60).to(torch.uint8)
    target = torch.randint(0, 5, (2, 12, 16), generator=g)
    target[0, :4] = 255
    grads = []
    for fused in (False, True):
        z = logits.clone().requires_grad_()
        loss = distillation_loss(z, soft, target, 255, temperature, fused)
        loss.backward()
        grads.append((loss.detach(), z.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-8)


def _blocks(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A mask of 8x8 blocks of classes 0..4, every block different from its right and lower neighbours."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 5, (h // 8 + 1, w // 8 + 1))
    grid[:, 1:] = np.where(grid[:, 1:] == grid[:, :-1], (grid[:, 1:] + 1) % 5, grid[:, 1:])
    return np.kron(grid, np.ones((8, 8), dtype=np.int64))[:h, :w].astype(np.uint8)


@pytest.mark.parametrize("scales", [(1.0,), (0.5, 0.75, 1.5, 2.0)])
def test_teacher_maps_are_scaled_cropped_and_flipped_like_the_mask(scales):
    h, w = 64, 96
    mask = _blocks(h, w)
    one_hot = np.eye(5, dtype=np.uint8)[mask] * 255  # a teacher sure of the mask, at the frame's size
    image = np.zeros((h, w, 3), np.uint8)
    tf = TrainTransform(crop_size=(48, 64), scales=scales, flip=True, to_tensor=False)
    flipped = 0
    for index in range(24):
        draws = lambda: np.random.default_rng([0, 1, index])  # noqa: E731
        img, msk, soft = tf(image, mask, draws(), soft=one_hot)
        plain = tf(image, mask, draws())
        assert np.array_equal(plain[1], msk)  # the map takes no draw of its own
        labelled = msk != 255
        agree = (soft.argmax(2) == msk)[labelled].mean()
        # Bilinear maps and nearest-neighbour masks differ only on a block's border row when rescaled.
        assert agree == 1.0 if scales == (1.0,) else agree > 0.85, (index, agree)
        assert (soft[~labelled] == 0).all()  # padding: no teacher where the mask is padding
        r = np.random.default_rng([0, 1, index])
        r.integers(len(scales)), r.integers(2), r.integers(2)
        flipped += r.random() < 0.5
    assert 0 < flipped < 24  # both flips were exercised


def test_the_window_of_a_resized_map_is_that_of_the_whole_resize():
    """soft_window computes only the crop; it equals torch's bilinear resize of the whole map, then cropped and
    zero-padded (to uint8 rounding)."""
    r = np.random.default_rng(0)
    for _ in range(100):
        h, w = int(r.integers(5, 40)), int(r.integers(5, 40))
        soft = r.integers(0, 256, (h, w, 4)).astype(np.uint8)
        size = int(r.integers(h, 3 * h + 1)), int(r.integers(w, 3 * w + 1))
        crop = int(r.integers(4, 60)), int(r.integers(4, 60))
        corner = int(r.integers(max(size[0], crop[0]) - crop[0] + 1)), int(r.integers(max(size[1], crop[1]) - crop[1] + 1))
        whole = F.interpolate(torch.from_numpy(soft).permute(2, 0, 1)[None].float(), size=size, mode="bilinear", align_corners=False)
        whole = whole[0].round().permute(1, 2, 0).numpy()
        expected = np.zeros((*crop, 4))
        window = whole[corner[0] : corner[0] + crop[0], corner[1] : corner[1] + crop[1]]
        expected[: window.shape[0], : window.shape[1]] = window
        assert np.abs(soft_window(soft, size, corner, crop) - expected).max() <= 1


def test_teacher_maps_stored_at_the_cache_stride_land_on_the_mask():
    h, w = 64, 96
    mask = _blocks(h, w, seed=1)
    one_hot = np.eye(5, dtype=np.uint8)[mask] * 255
    small = F.interpolate(torch.from_numpy(one_hot).permute(2, 0, 1)[None].float(), size=(h // CACHE_STRIDE, w // CACHE_STRIDE), mode="area")
    small = small[0].permute(1, 2, 0).round().to(torch.uint8).numpy()
    tf = TrainTransform(crop_size=(48, 64), scales=(1.0,), flip=True, to_tensor=False)
    _, msk, soft = tf(np.zeros((h, w, 3), np.uint8), mask, np.random.default_rng(3), soft=small)
    assert soft.shape == (48, 64, 5)
    assert (soft.argmax(2) == msk).mean() > 0.9


def test_teacher_probabilities_average_the_views(tmp_path):
    torch.manual_seed(0)
    model = dabnet.create_model("dabnet", 5).eval()
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    probs = teacher_probabilities(model, image, (0, 0, 0), (255, 255, 255), (1.0, 1.5), True, torch.device("cpu"))
    assert probs.shape == (20, 28, 5) and probs.dtype == np.uint8
    assert np.abs(probs.astype(int).sum(2) - 255).max() <= 3  # probabilities, rounded to 1/255
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        views = []
        for s in (1.0, 1.5):
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            for flip in (False, True):
                v = xs.flip(3) if flip else xs
                out = model(v)
                out = out.flip(3) if flip else out
                views.append(F.interpolate(out, size=(40, 56), mode="bilinear", align_corners=False).softmax(1))
    expected = F.interpolate(sum(views) / 4, size=(20, 28), mode="area")[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(probs - expected).max() <= 0.51


def test_distilled_run_caches_the_teacher_once_and_resumes_bit_exactly(tiny_camvid, teacher, tmp_path, monkeypatch, sigterm_at):
    cache = tmp_path / "cache"
    cfg_of = lambda out: _cfg(tiny_camvid, out, epochs=3, distill_from=str(teacher), distill_scales=[1.0, 1.5],  # noqa: E731
                              distill_flip=True, distill_weight=2.0, distill_temperature=2.0, distill_cache=str(cache), ema=0.5)
    passes = []  # (frame's height, width) of every teacher pass, over all four runs below
    real = distill_mod.teacher_probabilities
    monkeypatch.setattr(distill_mod, "teacher_probabilities", lambda teacher, image, *a: passes.append(image.shape[:2]) or real(teacher, image, *a))
    logs = []
    train_mod.train(cfg_of(tmp_path / "first"), log=logs.append)
    assert any("8 teacher maps" in m and "8 computed now" in m for m in logs), logs
    entries = [json.loads(p.read_text())["key"] for p in cache.glob("*/entry.json")]
    assert len(entries) == 8 and all(e["scales"] == [1.0, 1.5] and e["flip"] for e in entries)
    maps = sorted(cache.glob("*/map.npy"))
    assert len(maps) == 8 and passes == [(48, 64)] * 8
    # 48x64 frames at 1/CACHE_STRIDE (2): 24x32, a probability per class as uint8, summing to 255 up to rounding
    assert all(np.load(p).shape == (24, 32, 11) and np.load(p).dtype == np.uint8 for p in maps)
    assert np.abs(np.load(maps[0]).astype(int).sum(-1) - 255).max() <= 6
    a, b = _run_stopped_and_resumed(cfg_of, tmp_path, monkeypatch, sigterm_at)
    assert len(passes) == 8, len(passes)  # the three later runs, one of them resumed, read the cache: no teacher pass
    for key in ("model", "train_model"):
        assert _equal_weights(a[key], b[key]), key
    assert [h["train_loss"] for h in a["history"]] == pytest.approx([h["train_loss"] for h in b["history"]], rel=1e-6)
    assert [h["distill_kl"] for h in a["history"]] == pytest.approx([h["distill_kl"] for h in b["history"]], rel=1e-6)
    assert all(h["distill_kl"] > 0 for h in a["history"])


def test_distillation_changes_training_and_weight_zero_does_not(tiny_camvid, teacher, tmp_path):
    cache = str(tmp_path / "cache")
    runs = {}
    for name, extra in [("plain", {}), ("zero", dict(distill_from=str(teacher), distill_weight=0.0, distill_cache=cache)),
                        ("distilled", dict(distill_from=str(teacher), distill_weight=5.0, distill_cache=cache))]:  # fmt: skip
        train_mod.train(_cfg(tiny_camvid, tmp_path / name, epochs=1, **extra), log=lambda *a: None)
        runs[name] = torch.load(tmp_path / name / "last.pth", weights_only=True)["model"]
    assert _equal_weights(runs["plain"], runs["zero"])
    assert not _equal_weights(runs["plain"], runs["distilled"])


def test_a_bad_teacher_is_one_line_before_any_work(tiny_camvid, tmp_path, tmp_path_factory):
    out = tmp_path / "run"
    with pytest.raises(DistillError, match="no such file") as e:
        train_mod.train(_cfg(tiny_camvid, out, distill_from=str(tmp_path / "missing.pth"), check_data=True), log=lambda *a: None)
    assert "\n" not in str(e.value)
    other = tmp_path / "other.pth"
    dabnet.save_checkpoint(make_checkpoint(dabnet.create_model("dabnet", 5)), other)
    checked = []
    real = train_mod._check_files
    train_mod._check_files = lambda *a, **k: checked.append(1) or real(*a, **k)
    try:
        with pytest.raises(DistillError, match="5 classes.*give a teacher trained on these classes"):
            train_mod.train(_cfg(tiny_camvid, out, distill_from=str(other), check_data=True), log=lambda *a: None)
    finally:
        train_mod._check_files = real
    assert not checked and not (out / "teacher_cache").exists() and not (out / "last.pth").exists()


def test_a_cache_folder_of_other_files_is_refused(tiny_camvid, teacher, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(DistillError, match="not a teacher cache"):
        train_mod.train(_cfg(tiny_camvid, tmp_path / "run", distill_from=str(teacher), distill_cache=str(folder)), log=lambda *a: None)
    assert (folder / "notes.txt").read_text() == "keep me"


def _fill(root: Path, cache: Path, teacher: Path, scales=(1.0,), log=None):
    """What a distilled run does with its teacher maps before its first step (on_data, on_start), without training:
    (the callback, the training set that carries the maps)."""
    from dabnet.training.distill import _from_config

    cfg = _cfg(root, cache.parent / "out", distill_from=str(teacher), distill_scales=list(scales), distill_cache=str(cache))
    distill = _from_config(cfg, torch.device("cpu"), log or (lambda *a: None))
    drawn = distill.on_data(train_mod.build_datasets(cfg)[0])
    distill.on_start(None)
    return distill, drawn


def _told(records, path: Path):
    return [str(w.message) for w in records if str(path) in str(w.message)]


def test_runs_with_other_distill_scales_keep_their_own_teacher_maps(tiny_camvid, teacher, tmp_path):
    cache = tmp_path / "shared"
    _fill(tiny_camvid, cache, teacher, [1.0])
    maps_a = {p: p.read_bytes() for p in cache.rglob("*.npy")}
    assert len(maps_a) == 8
    logs = []
    _fill(tiny_camvid, cache, teacher, [1.0, 1.5], logs.append)  # run B: other views, the same folder
    assert "8 teacher maps" in logs[-1] and "8 computed now" in logs[-1], logs
    assert all(path.is_file() and path.read_bytes() == data for path, data in maps_a.items())  # A's maps untouched
    assert len(list(cache.rglob("*.npy"))) == 16
    logs = []
    _fill(tiny_camvid, cache, teacher, [1.0], logs.append)  # run A again: its own maps, none made anew
    assert "0 computed now" in logs[-1], logs


def test_a_frame_replaced_in_place_gets_a_teacher_map_of_its_own(make_camvid, teacher, tmp_path):
    from PIL import Image

    root = make_camvid(tmp_path / "data", n=3)
    cache = tmp_path / "cache"
    _fill(root, cache, teacher)
    images, masks = sorted((root / "train").iterdir()), sorted((root / "trainannot").iterdir())
    stamp = images[0].stat()
    Image.open(images[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images[0])  # flipped, same name and size
    os.utime(images[0], ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # and its old time
    for path, resample in ((images[1], Image.Resampling.BILINEAR), (masks[1], Image.Resampling.NEAREST)):
        Image.open(path).resize((56, 40), resample).save(path)  # resized
    logs = []
    distill, drawn = _fill(root, cache, teacher, log=logs.append)
    assert "3 teacher maps" in logs[-1] and "2 computed now" in logs[-1], logs
    runner = dabnet.load_model(str(teacher)).eval()
    for i in (0, 1):
        image = drawn.base.load_pair(i)[0]
        want = teacher_probabilities(runner, image, distill.mean, distill.std, [1.0], False, torch.device("cpu"))
        assert np.abs(distill.cache.load(i, image).astype(int) - want).max() <= 1


@pytest.mark.slow
def test_damaged_teacher_maps_are_made_again_with_one_line_naming_each(tiny_camvid, teacher, tmp_path):
    cache = tmp_path / "cache"
    cfg_of = lambda out: _cfg(tiny_camvid, out, epochs=1, distill_from=str(teacher), distill_cache=str(cache))  # noqa: E731
    train_mod.train(cfg_of(tmp_path / "a"), log=lambda *a: None)
    maps = sorted(cache.rglob("*.npy"))
    assert len(maps) == 8
    maps[0].write_bytes(maps[0].read_bytes()[:200])  # truncated
    np.save(maps[1], np.full((5, 7, 11), 23, np.uint8))  # another shape
    maps[2].write_bytes(bytes(maps[2].stat().st_size))  # all zero
    with pytest.warns(UserWarning) as records:
        train_mod.train(cfg_of(tmp_path / "b"), log=lambda *a: None)
    for path in maps[:3]:
        (line,) = _told(records, path)  # one line, naming the file, the first time the map is read
        assert "damaged" in line and "\n" not in line
    assert not any(_told(records, path) for path in maps[3:])
    a, b = (torch.load(tmp_path / r / "last.pth", weights_only=True)["model"] for r in "ab")
    assert _equal_weights(a, b)  # trained on the maps made again, as the first run was on the first ones


def test_a_teacher_map_of_the_wrong_shape_is_refused_even_when_whole(tiny_camvid, teacher, tmp_path):
    import shutil

    distill, drawn = _fill(tiny_camvid, tmp_path / "cache", teacher)
    name = distill.cache.names[0]
    good = drawn[0]
    shutil.rmtree(distill.cache.store.folder(name))
    distill.cache.store.write(name, lambda folder: np.save(folder / "map.npy", np.zeros((5, 7, 11), np.uint8)))
    with pytest.warns(UserWarning, match=r"map\.npy is damaged \(a uint8 map of shape \(5, 7, 11\), where this frame's is uint8 \(24, 32, 11\)\)"):
        again = drawn[0]
    assert all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(good, again))


def test_two_runs_filling_one_teacher_cache_at_once_both_succeed(tiny_camvid, teacher, tmp_path):
    import threading
    import warnings

    cache, errors, start = tmp_path / "cache", [], threading.Barrier(3)

    def run(scales):
        try:
            start.wait()
            _fill(tiny_camvid, cache, teacher, scales)
        except BaseException as e:  # noqa: BLE001  the test reports it
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in ([1.0], [1.0], [1.0, 1.5])]
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert not errors and not [str(w.message) for w in records if "teacher map" in str(w.message)]
    assert len(list(cache.rglob("*.npy"))) == 16
    for scales in ([1.0], [1.0, 1.5]):
        logs = []
        distill, drawn = _fill(tiny_camvid, cache, teacher, scales, logs.append)
        assert "0 computed now" in logs[-1]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            [drawn[i] for i in range(len(drawn))]  # every map whole


def test_distill_options_are_checked():
    for bad in [dict(distill_scales=[]), dict(distill_scales=[0]), dict(distill_weight=-1), dict(distill_temperature=0),
                dict(distill_from=""), dict(distill_from="dabnet-camvid", data_on_device=True)]:  # fmt: skip
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    assert math.isclose(TrainConfig(distill_temperature=2).distill_temperature, 2)
