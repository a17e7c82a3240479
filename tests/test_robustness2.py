"""Issue 24, the second round of bad input and faults: nothing lost, nothing mixed up, errors in one line.
One test per row (the row in the comment), plus the siblings found beside them."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dabnet
import dabnet.commands.train as train_mod
from dabnet.cli import main
from dabnet.commands.predict import MANIFEST
from dabnet.config import ConfigError, TrainConfig, build_config
from dabnet.data.classes import CAMVID_CLASSES, CAMVID_MEAN, CAMVID_PALETTE, CAMVID_STD
from dabnet.inference.segmenter import Segmenter
from dabnet.io.checkpoint import CheckpointError
from dabnet.util.files import OutputError, atomic_output, check_output_file, check_output_folder, os_error_message


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder no file can be written into, for whoever runs the tests (root ignores permission bits)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        yield folder
        folder.chmod(0o755)
        return
    (folder / "probe").unlink()
    folder.chmod(0o755)
    sysfs = Path("/sys/kernel")  # root: sysfs refuses new files to everyone
    try:
        (sysfs / "dabnet-probe").write_bytes(b"")
    except OSError:
        yield sysfs
        return
    pytest.skip("no folder here refuses writes to this user")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _frame(path: Path, seed: int, size=(40, 56)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------- row 2: same stem, same folder


def test_same_stem_in_one_folder_keeps_every_output(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i, suffix in enumerate(["jpg", "png", "webp"]):
        _frame(src / f"street.{suffix}", i)
    _frame(src / "other.png", 3)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(src), "--out", str(out), "--backend", "eager"]) == 0
    labels = sorted(p.name for p in out.glob("*_label.png"))
    assert labels == ["other_label.png", "street.jpg_label.png", "street.png_label.png", "street.webp_label.png"]
    assert "4 image(s) segmented" in capsys.readouterr().out


# ----------------------------------------------------------------------------- row 3: video outputs


def _video(path: Path, frames: int = 4, size=(48, 64)) -> Path:
    cv2 = pytest.importorskip("cv2")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size[1], size[0]))
    for i in range(frames):
        writer.write(np.full((*size, 3), 30 * i, np.uint8))
    writer.release()
    return path


def test_videos_with_one_name_in_two_folders_keep_both_and_a_bad_one_is_skipped(ckpt, tmp_path, capsys):
    a, b = _video(tmp_path / "vidA" / "clip.avi"), _video(tmp_path / "vidB" / "clip.avi", frames=3)
    bad = tmp_path / "vidC" / "broken.avi"
    bad.parent.mkdir()
    bad.write_bytes(b"not a video at all")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(ckpt), str(bad), str(a), str(b), "--out", str(out), "--backend", "eager"])
    assert code == 1  # one input failed, the others were written
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.mp4")) == ["vidA/clip_overlay.mp4", "vidB/clip_overlay.mp4"]
    assert f"skipped {bad}" in capsys.readouterr().err
    assert [p.name for p in out.rglob(".*")] == [MANIFEST]  # no temp file left, only predict's list of what it wrote


def test_video_into_an_unwritable_folder_is_an_error_not_a_silent_success(ckpt, tmp_path, unwritable, capsys):
    clip = _video(tmp_path / "clip.avi")
    assert main(["predict", "--checkpoint", str(ckpt), str(clip), "--out", str(unwritable / "sub"), "--backend", "eager"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and str(unwritable) in err and "Traceback" not in err


# ----------------------------------------------------------------------------- row 4: one run per folder, --restart


def _cfg(root: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data_root=str(root), out=str(out), epochs=2, batch_size=2, crop_size=[32, 48], workers=0,
                warmup_iters=2, val_batch_size=4, check_data=False, fused=False)  # fmt: skip
    base.update(kw)
    return build_config(TrainConfig, "camvid", **base)


@pytest.fixture(scope="module")
def tiny_camvid(tmp_path_factory, make_camvid) -> Path:
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", n=4)


def test_a_second_train_on_the_same_folder_stops_at_once(tiny_camvid, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # what a running `dabnet train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242\n")
        held.flush()
        with pytest.raises(ConfigError, match=r"in use by another `dabnet train` \(pid 4242\).*another --out"):
            train_mod.train(_cfg(tiny_camvid, out), log=lambda *a: None)
    assert not (out / "last.pth").exists()
    train_mod.train(_cfg(tiny_camvid, out, epochs=1), log=lambda *a: None)  # released: the folder is usable again
    assert (out / "last.pth").is_file()


def test_restart_moves_the_previous_run_aside_so_average_never_mixes_runs(tiny_camvid, tmp_path):
    out = tmp_path / "run"
    train_mod.train(_cfg(tiny_camvid, out, keep_every=1), log=lambda *a: None)
    old_last = _digest(out / "last.pth")
    logs = []
    train_mod.train(_cfg(tiny_camvid, out, epochs=1, keep_every=1, seed=5), restart=True, log=logs.append)
    assert sorted(p.name for p in out.glob("epoch_*.pth")) == ["epoch_0001.pth"]
    (aside,) = out.glob("previous-*")
    assert sorted(p.name for p in aside.glob("epoch_*.pth")) == ["epoch_0001.pth", "epoch_0002.pth"]
    assert _digest(aside / "last.pth") == old_last
    assert any("--restart: moved the previous run's" in m for m in logs)


# ----------------------------------------------------------------------------- row 5: outputs onto inputs


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_never_writes_over_its_checkpoint(ckpt, tmp_path, capsys, fmt):
    victim = tmp_path / "victim.pth"
    victim.write_bytes(ckpt.read_bytes())
    before = _digest(victim)
    assert main(["export", "--checkpoint", str(victim), "--format", fmt, "--out", str(victim)]) == 2
    assert "is also read by this command" in capsys.readouterr().err
    assert _digest(victim) == before
    assert main(["export", "--checkpoint", str(victim), "--format", fmt, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_average_never_writes_over_an_input(ckpt, tmp_path, capsys):
    a = tmp_path / "a.pth"
    a.write_bytes(ckpt.read_bytes())
    before = _digest(a)
    assert main(["average", str(a), str(ckpt), "--out", str(a)]) == 2
    assert "is also read by this command" in capsys.readouterr().err and _digest(a) == before


# ----------------------------------------------------------------------------- row 6: Ctrl-C during predict


def test_ctrl_c_during_predict_leaves_no_truncated_png_and_no_traceback(ckpt, tmp_path, capsys, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        _frame(src / f"f{i}.png", i)
    real_save, calls = Image.Image.save, {"n": 0}

    def save(self, fp, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-way through the second image's outputs: half a file, then Ctrl-C
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n partial")
            raise KeyboardInterrupt
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(src), "--out", str(out), "--backend", "eager", "--workers", "0"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    written = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    assert written == ["f0_color.png", "f0_label.png", "f0_overlay.png", "f1_label.png"]  # whole files only
    for p in (q for q in out.iterdir() if q.name != MANIFEST):
        real = Image.open(p)
        real.load()


# ----------------------------------------------------------------------------- row 8: unwritable paths, full disk


@pytest.mark.parametrize("command", ["predict", "demo", "export", "average", "eval-json", "bench-json", "train"])
def test_unwritable_outputs_are_one_line_before_any_work(command, ckpt, tmp_path, unwritable, capsys, make_camvid, monkeypatch):
    import dabnet.inference.segmenter

    target = unwritable / "sub"
    frame = _frame(tmp_path / "f.png", 0)
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


def test_existing_file_as_an_output_folder_and_folder_as_an_output_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(f)
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path, "--json")


def test_a_full_disk_while_saving_a_checkpoint_says_disk_full(ckpt, tmp_path, capsys, monkeypatch):
    import shutil

    def full(obj, f, *a, **k):  # what torch.save raises when a write fails
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0")

    monkeypatch.setattr(torch, "save", full)
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1024))
    assert main(["average", str(ckpt), str(ckpt), "--out", str(tmp_path / "avg.pth")]) == 2
    err = capsys.readouterr().err
    assert "disk full writing" in err and "avg.pth" in err and "inline_container" not in err
    assert list(tmp_path.iterdir()) == []  # no temp file left


def test_os_error_messages_name_the_file_and_the_fix():
    assert "disk full writing /x/y.png" in os_error_message(OSError(errno.ENOSPC, "No space left on device", "/x/y.png"))
    assert "choose a writable path" in os_error_message(OSError(errno.EROFS, "Read-only file system", "/x"))


def test_atomic_output_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


# ----------------------------------------------------------------------------- row 11: resume with a changed config


def test_resume_with_a_different_model_refuses_in_one_line_and_other_changes_are_named(tiny_camvid, tmp_path):
    out = tmp_path / "run"
    train_mod.train(_cfg(tiny_camvid, out, epochs=1), log=lambda *a: None)
    with pytest.raises(CheckpointError, match=r"different model 'dabnet' -> 'enet'\. Use --restart") as e:
        train_mod.train(_cfg(tiny_camvid, out, model="enet"), log=lambda *a: None)
    assert "\n" not in str(e.value) and "Missing key" not in str(e.value)
    logs = []
    train_mod.train(_cfg(tiny_camvid, out, epochs=2, lr=5e-4, workers=1), log=logs.append)
    changed = [m for m in logs if m.startswith("resuming with changed settings")]
    assert changed and "epochs 1 -> 2" in changed[0] and "lr 0.001 -> 0.0005" in changed[0] and "workers" not in changed[0]


# ----------------------------------------------------------------------------- row 14: smaller


def test_bench_plot_without_a_suffix_says_the_file_it_writes(tmp_path, capsys):
    target = tmp_path / "edir"
    assert main(["bench", "--models", "dabnet", "--sizes", "32x32", "--backends", "eager", "--frames", "2", "--warmup", "1",
                 "--plot", str(target)]) == 0  # fmt: skip
    assert f"wrote {target}.png" in capsys.readouterr().out and (tmp_path / "edir.png").is_file()


# ----------------------------------------------------------------------------- row 1: tiny images on every backend


def _backends():
    names = ["eager", "fold", "onnxruntime"]
    try:
        import openvino  # noqa: F401

        names.append("openvino")
    except ImportError:
        pass
    return names


@pytest.mark.parametrize("backend", _backends())
def test_tiny_images_run_on_every_backend_and_agree(ckpt, backend):
    from dabnet.inference.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(ckpt, backend=backend, log=None)
    ref = Segmenter.from_checkpoint(ckpt, backend="eager", log=None)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(1, 1), (2, 2), (3, 1), (1, 40), (15, 9)]]
    same, total = 0, 0
    for im, lab, want in zip(images, seg.predict_batch(images), ref.predict_batch(images)):
        assert lab.shape == im.shape[:2]
        same, total = same + int((lab == want).sum()), total + lab.size
    assert same / total >= 0.999, backend  # the same padded input, fp32 on each backend: equal but for float ties


def test_tiny_scale_in_eval_and_tiny_sizes_in_bench(ckpt, tmp_path, make_camvid, capsys):
    root = make_camvid(tmp_path / "cv", n=2)
    assert main(["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--backend", "eager", "--scales", "0.004", "1.0"]) == 0
    assert main(["bench", "--models", "dabnet", "--sizes", "2x2", "--backends", "eager"]) == 2
    assert "sizes=['2x2'] is not valid: sizes of at least 16x16" in capsys.readouterr().err


def test_one_bad_request_in_a_batch_fails_alone():
    import asyncio

    pytest.importorskip("fastapi")
    from dabnet.commands.serve import InferenceWorker
    from dabnet.config import ServeConfig
    from dabnet.inference.segmenter import Segmenter

    class Picky(Segmenter):  # fails on any batch that holds a 7x7 image, as a backend might on a bad input
        def predict_batch(self, images):
            if any(im.shape[:2] == (7, 7) for im in images):
                raise RuntimeError("kernel larger than the data")
            return super().predict_batch(images)

    base = Segmenter(dabnet.create_model("dabnet", 11), (0, 0, 0))
    seg = Picky(base.model, (0, 0, 0))

    async def scenario():
        worker = InferenceWorker(seg, ServeConfig(max_batch=4, batch_wait_ms=200))
        good = [worker.submit(np.zeros((7, 7, 3), np.uint8) if i == 1 else np.full((7, 7, 3), 9, np.uint8)) for i in range(1)]
        bad = worker.submit(np.zeros((7, 7, 3), np.uint8))
        fine = [worker.submit(np.zeros((16, 16, 3), np.uint8)) for _ in range(2)]
        results = await asyncio.gather(*good, bad, *fine, return_exceptions=True)
        return results

    res = asyncio.run(scenario())
    assert isinstance(res[0], RuntimeError) and isinstance(res[1], RuntimeError)
    assert all(not isinstance(r, Exception) and r[0].shape == (16, 16) for r in res[2:])


# ----------------------------------------------------------------------------- row 7: memory bounded


def test_large_images_run_as_tiles_no_pass_over_the_budget_and_tiles_match_their_crops(ckpt):
    from dabnet.inference.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(ckpt, backend="eager", log=None)
    seg.max_pixels, seg.tile_margin = 96 * 96, 16
    seen = []
    real = seg.run

    def spy(x):
        seen.append(x.shape[-2] * x.shape[-1] * x.shape[0])
        return real(x)

    seg.run = spy
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (150, 230, 3), dtype=np.uint8)
    labels = seg.predict(image)
    assert labels.shape == (150, 230) and max(seen) <= seg.max_pixels and len(seen) > 4
    core = (96 - 2 * 16) // 8 * 8  # 64: the second tile's centre, seen with its margin
    crop = seg.predict(image[0 : core + 16, core - 16 : 2 * core + 16])  # the pixels the network saw for it
    np.testing.assert_array_equal(labels[0:core, core : 2 * core], crop[0:core, 16 : 16 + core])
    # Batches of same-size images are split to stay within the budget too.
    seen.clear()
    seg.predict_batch([image[:40, :40]] * 9)
    assert max(seen) <= seg.max_pixels and sum(seen) == 9 * 1600


def test_serve_gives_memory_back_after_a_burst():
    """The worker itself gives memory back after a batch over RELEASE_AFTER_PIXELS once its queue is empty (the
    trigger, not only the call), and the call returns freed heap to the OS."""
    pytest.importorskip("fastapi")
    import dabnet.commands.serve as S

    def rss_mb():
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    calls = []
    real = S.release_memory
    S.release_memory = lambda: calls.append(1)
    try:
        seg = Segmenter(dabnet.create_model("dabnet", 11), CAMVID_MEAN, CAMVID_STD, CAMVID_CLASSES, CAMVID_PALETTE)
        worker = S.InferenceWorker(seg, S.ServeConfig(checkpoint="test"))
        worker.RELEASE_AFTER_PIXELS = 64 * 64 - 1
        loop = asyncio.new_event_loop()
        try:
            for shape in ((32, 32), (64, 64)):  # under the threshold, then over it
                fut = loop.run_until_complete(_submit(worker, np.zeros((*shape, 3), np.uint8)))
                loop.run_until_complete(asyncio.wait_for(fut, 30))
                deadline = time.time() + 5
                while len(calls) < (shape == (64, 64)) and time.time() < deadline:
                    time.sleep(0.01)
                assert len(calls) == (1 if shape == (64, 64) else 0)
        finally:
            loop.close()
    finally:
        S.release_memory = real
    blocks = [np.ones(8192, np.float64) for _ in range(16000)]  # 1 GiB of 64 KiB blocks: glibc keeps them once freed
    last = blocks[-1]  # one live block at the top of the heap, as a request still being answered
    del blocks
    before = rss_mb()
    real()
    assert before - rss_mb() > 500 and last.sum() == 8192


async def _submit(worker, image):
    return worker.submit(image)


# ----------------------------------------------------------------------------- row 9: caches


def test_an_unwritable_cache_falls_back_to_a_temporary_one(monkeypatch, unwritable, make_camvid, tmp_path):
    import dabnet.util.files as files
    from dabnet.data.datasets import build_dataset
    from dabnet.data.stats import compute_stats

    monkeypatch.setenv("DABNET_CACHE", str(unwritable / "cache"))
    monkeypatch.setattr(files, "_fallback_cache", None)
    ds = build_dataset("camvid", make_camvid(tmp_path / "cv", n=2), "train")
    with pytest.warns(UserWarning, match="not writable|cannot create"):
        stats = compute_stats(ds)
    assert stats.images == 2 and files.cache_dir() != unwritable / "cache"


def test_a_corrupt_or_old_stats_cache_is_recomputed(make_camvid, tmp_path):
    from dabnet.data.datasets import build_dataset
    from dabnet.data.stats import compute_stats

    ds = build_dataset("camvid", make_camvid(tmp_path / "cv", n=2), "train")
    good = compute_stats(ds, cache_dir=tmp_path / "c")
    (cached,) = (tmp_path / "c").glob("stats-*.json")
    for damage in ["{not json", '{"mean": [1, 2, 3]}']:
        cached.write_text(damage)
        with pytest.warns(UserWarning, match=f"unreadable statistics cache {cached}"):
            assert compute_stats(ds, cache_dir=tmp_path / "c") == good
        assert compute_stats(ds, cache_dir=tmp_path / "c") == good  # rewritten whole


def test_a_truncated_cached_ir_is_rebuilt(ckpt, tmp_path):
    pytest.importorskip("openvino")
    import dabnet.runtimes.openvino as ovr

    model = dabnet.load_model(ckpt)
    first = ovr.cached_ir(model, False, None, tmp_path)
    bin_file = first.with_suffix(".bin")
    bin_file.write_bytes(bin_file.read_bytes()[:100])
    with pytest.warns(UserWarning, match="is incomplete; rebuilding it"):
        again = ovr.cached_ir(model, False, None, tmp_path)
    from dabnet.runtimes.cache import whole

    assert again == first and whole(first.parent)
    runner = ovr.OpenVINORunner(again)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(runner(x), model.eval()(x), atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------------------- row 12: data pack, folder YAML


def test_pack_trainval_writes_the_folders_its_readers_see(make_camvid, tmp_path):
    from dabnet.data.datasets import build_dataset

    root = make_camvid(tmp_path / "cv", n=2)
    assert main(["data", "pack", str(root), str(tmp_path / "packed"), "--splits", "trainval"]) == 0
    assert sorted(p.name for p in (tmp_path / "packed").iterdir()) == ["train", "trainannot", "val", "valannot"]
    assert len(build_dataset("camvid", tmp_path / "packed", "trainval")) == 4
    assert main(["data", "pack", str(root), str(tmp_path / "p2"), "--splits", "tran"]) == 2


def test_pack_names_a_truncated_source_image(make_camvid, tmp_path, capsys):
    root = make_camvid(tmp_path / "cv", n=2)
    victim = sorted((root / "train").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])
    assert main(["data", "pack", str(root), str(tmp_path / "packed")]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "restore or replace it" in err and "Traceback" not in err


def test_folder_yaml_with_id_map_as_a_list_is_a_clear_error(make_folder, tmp_path, capsys):
    import yaml

    spec_file = make_folder(tmp_path / "mine")
    spec = yaml.safe_load(spec_file.read_text())
    spec["id_map"] = [0, 1, 2]
    spec_file.write_text(yaml.safe_dump(spec))
    assert main(["data", "check", "folder", str(spec_file)]) != 0
    assert "'id_map' maps raw mask values to class ids" in capsys.readouterr().err


# ----------------------------------------------------------------------------- row 13: the Python API takes what users pass


def test_segmenter_takes_pil_paths_tensors_and_refuses_the_rest_in_one_line(ckpt, tmp_path):
    from dabnet.inference.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(ckpt, backend="eager", log=None)
    rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    want = seg.predict(rgb)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for form in [Image.fromarray(rgb), str(tmp_path / "x.png"), tmp_path / "x.png", torch.from_numpy(rgb), chw, chw.float() / 255]:
        with __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            np.testing.assert_array_equal(seg.predict(form), want)
    assert [lab.shape for lab in seg.predict_batch([rgb, Image.fromarray(rgb[:20])])] == [(40, 56), (20, 56)]
    with pytest.raises(TypeError, match="use predict_batch"):
        seg.predict([rgb, rgb])
    with pytest.raises(TypeError, match="use predict for one image"):
        seg.predict_batch(rgb)
    with pytest.raises(TypeError, match="cannot segment a dict"):
        seg.predict({"image": rgb})
    with pytest.raises(ValueError, match=r"the image is empty \(0x0 pixels\)"):
        seg.predict(np.zeros((0, 0, 3), np.uint8))


# ----------------------------------------------------------------------------- row 14: smaller


def test_bomb_message_reads_cleanly(tmp_path, monkeypatch):
    from dabnet.io.images import ImageReadError, read_image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "big.png")
    assert ".." not in str(e.value) and "corrupt" not in str(e.value) and "--max-image-pixels" in str(e.value)


@pytest.mark.slow
def test_progress_bars_in_a_log_file_are_few_lines(ckpt, tmp_path):
    import subprocess
    import sys

    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        _frame(src / f"f{i}.png", i, size=(24, 24))
    log = tmp_path / "predict.log"
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "dabnet", "predict", "--checkpoint", str(ckpt), str(src), "--out",
                                str(tmp_path / "out"), "--backend", "eager"], stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
    text = log.read_text()
    assert code == 0 and "12 image(s) segmented" in text
    assert text.count("\r") + text.count("\n") <= 6, text


# ----------------------------------------------------------------------------- row 10: every registered model exports


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



# ----------------------------------------------------------------------------- issue 23: the throughput path


def test_overlapped_reads_and_writes_give_the_same_files_and_save_chooses_them(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(7):
        _frame(src / f"f{i}.png", i, size=(40 + 8 * (i % 2), 56))  # two sizes: batches split by size
    (src / "bad.png").write_bytes(b"not a png")
    outs = {}
    for workers in ("0", "3"):
        out = tmp_path / f"out{workers}"
        code = main(["predict", "--checkpoint", str(ckpt), str(src), "--out", str(out), "--backend", "eager",
                     "--workers", workers, "--batch-size", "2"])  # fmt: skip
        captured = capsys.readouterr()
        assert code == 1 and "skipped" in captured.out + captured.err
        outs[workers] = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != MANIFEST}
    assert len(outs["0"]) == 21 and outs["0"] == outs["3"]
    out = tmp_path / "labels_only"
    assert main(["predict", "--checkpoint", str(ckpt), str(src / "f1.png"), "--out", str(out), "--backend", "eager", "--save", "label"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST) == ["f1_label.png"]
    for save in (["label,color"], ["color", "label"]):  # comma-separated or one word each
        out = tmp_path / f"two{len(save)}"
        assert main(["predict", "--checkpoint", str(ckpt), str(src / "f1.png"), "--out", str(out), "--backend", "eager", "--save", *save]) == 0
        assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST) == ["f1_color.png", "f1_label.png"]
    for bad in ("mask", "label,mask"):
        with pytest.raises(SystemExit):  # argparse: "invalid choice: 'mask' (choose from label, color, overlay)"
            main(["predict", "--checkpoint", str(ckpt), str(src / "f1.png"), "--save", bad])
        assert "invalid choice: 'mask' (choose from label, color, overlay)" in capsys.readouterr().err


def test_video_with_decode_and_encode_threads_writes_the_same_frames(ckpt, tmp_path):
    cv2 = pytest.importorskip("cv2")
    clip = _video(tmp_path / "clip.avi", frames=7)
    decoded = {}
    for workers in ("0", "2"):
        out = tmp_path / f"o{workers}"
        assert main(["predict", "--checkpoint", str(ckpt), str(clip), "--out", str(out), "--backend", "eager", "--workers", workers]) == 0
        cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
        frames = []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(f)
        decoded[workers] = np.stack(frames)
    assert len(decoded["0"]) == 7 and np.array_equal(decoded["0"], decoded["2"])
    out = tmp_path / "short"
    assert main(["predict", "--checkpoint", str(ckpt), str(clip), "--out", str(out), "--backend", "eager", "--max-frames", "3"]) == 0
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
