"""Checkpoints: the official reference reproduced, official files loaded, ours round-tripped, errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from helpers import digest

import dabnet
from dabnet.cli import main
from dabnet.io.checkpoint import (
    NEGLIGIBLE,
    CheckpointError,
    average_checkpoints,
    flush_negligible,
    make_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from dabnet.models.dabnet import DABNet, convert_official_state_dict


def _official_file(tmp_path, state_dict, prefix=""):
    path = tmp_path / f"official{prefix.strip('.') or ''}.pth"
    torch.save({"epoch": 1000, "model": {prefix + k: v for k, v in state_dict.items()}}, path)
    return path


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_checkpoint_reproduces_reference_output(tmp_path, official_reference, prefix):
    sd, x, expected = official_reference
    model = dabnet.load_model(_official_file(tmp_path, sd, prefix), num_classes=19)
    with torch.no_grad():
        out = model(x)
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < 1e-4
    assert model.checkpoint_meta["source"] == "official" and model.checkpoint_meta["epoch"] == 1000


def test_official_keys_map_one_to_one(official_reference):
    sd, _, _ = official_reference
    ours = set(DABNet(19).state_dict())
    mapped = convert_official_state_dict(sd)
    assert len(mapped) == len(sd) and set(mapped) == ours


def test_official_semantics_kept_where_the_official_code_runs(official_reference):
    """On sizes where the official max pool needs no padding, our odd-size padding is a no-op."""
    sd, _, _ = official_reference
    model = DABNet(19)
    model.load_state_dict(convert_official_state_dict(sd))
    model.eval()
    x = torch.randn(1, 3, 100, 132)  # ceil(H/2), ceil(W/2) even: the official code runs
    calls = []
    hook = model.down1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    with torch.no_grad():
        model(x)
    hook.remove()
    assert calls[0][2] % 2 == 0 and calls[0][3] % 2 == 0
    # And for odd sizes the pool covers ceil(H/2) rows, matching the stride-2 convolution.
    y = torch.randn(1, 35, 51, 67)
    assert model.down1(y).shape[2:] == (26, 34)


def test_official_checkpoint_with_wrong_class_count_is_refused(tmp_path, official_reference):
    sd, _, _ = official_reference
    with pytest.raises(CheckpointError, match="19 classes but 11"):
        dabnet.load_model(_official_file(tmp_path, sd), num_classes=11)


def test_our_checkpoint_round_trip(tmp_path):
    model = dabnet.create_model("dabnet_coprime", 7, block_1=2)
    path = save_checkpoint(make_checkpoint(model, epoch=3, best_miou=0.5, config={"lr": 0.1}), tmp_path / "run" / "last.pth")
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # no temp file left behind
    loaded = dabnet.load_model(path)
    assert loaded.model_name == "dabnet_coprime" and loaded.num_classes == 7 and len(loaded.block1) == 2
    assert loaded.checkpoint_meta["epoch"] == 3 and loaded.checkpoint_meta["config"] == {"lr": 0.1}
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


@pytest.mark.parametrize("name", dabnet.list_models())
def test_loading_zeroes_negligible_weights_and_keeps_the_output(tmp_path, name):
    """Weights decayed towards zero (dead channels) load as zero: subnormal arithmetic is many times slower on CPUs."""
    torch.manual_seed(0)
    model = dabnet.create_model(name, 5).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        floats = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point() and v.numel() > 3]
        for (_, weight), tiny in zip(floats, (1e-30, 1e-40, -3e-25)):  # normal-but-negligible, subnormal, negative
            weight.view(-1)[:3] = tiny
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = dabnet.load_model(save_checkpoint(make_checkpoint(model), tmp_path / "w.pth"))
    for key, value in loaded.state_dict().items():
        small = state[key].abs() < NEGLIGIBLE if value.is_floating_point() else torch.zeros_like(value, dtype=torch.bool)
        assert torch.equal(value[small], torch.zeros_like(value[small])) and torch.equal(value[~small], state[key][~small]), key
    assert flush_negligible(state)[1] == sum(int(((v.abs() < NEGLIGIBLE) & (v != 0)).sum()) for k, v in floats)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), before, rtol=1e-4, atol=1e-4)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"a": torch.zeros(1)}, path)

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        save_checkpoint({"a": torch.ones(1)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["a"].item() == 0.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        dabnet.load_model(tmp_path / "nope.pth")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    good = save_checkpoint(make_checkpoint(dabnet.create_model("dabnet", 11)), tmp_path / "good.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="bad.pth"):
        dabnet.load_model(bad)


def test_checkpoint_of_another_network_is_refused(tmp_path):
    ckpt = make_checkpoint(dabnet.create_model("enet", 11))
    ckpt["model_name"] = "dabnet"
    path = save_checkpoint(ckpt, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="does not fit model 'dabnet'"):
        dabnet.load_model(path)


def test_official_checkpoints_expect_mean_subtraction_only(tmp_path, official_reference):
    from dabnet.inference.segmenter import Segmenter

    sd, _, _ = official_reference
    seg = Segmenter.from_checkpoint(_official_file(tmp_path, sd), backend="eager")
    assert list(seg.std) == [1.0, 1.0, 1.0]
    assert seg.class_names[0] == "road" and len(seg.class_names) == 19  # Cityscapes, by class count


@pytest.mark.parametrize("name", dabnet.list_models())
def test_average_is_the_mean_of_the_weights_and_batchnorm_statistics(tmp_path, name):
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = dabnet.create_model(name, 5)
        for buf in model.buffers():  # fresh BatchNorm statistics are all 0/1: make them differ between files
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
        paths.append(save_checkpoint(make_checkpoint(model, epoch=10 * seed, history=[{}], best_miou=0.4, class_names=list("abcde")),
                                     tmp_path / f"e{seed}.pth"))  # fmt: skip
    states = [torch.load(p, weights_only=True)["model"] for p in paths]
    avg = average_checkpoints(paths)
    for key, value in avg["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in states) / 3)
        else:  # counters: the last file's
            assert torch.equal(value, states[-1][key])
    assert [a["epoch"] for a in avg["averaged_from"]] == [0, 10, 20] and avg["class_names"] == list("abcde")
    assert "history" not in avg and "best_miou" not in avg  # the run's progress is no figure of the average
    loaded = dabnet.load_model(save_checkpoint(avg, tmp_path / "avg.pth"))
    assert loaded.model_name == name and loaded.checkpoint_meta["averaged_from"][2]["path"] == str(paths[2])


def test_averaging_refuses_different_networks_and_a_single_file(tmp_path):
    a = save_checkpoint(make_checkpoint(dabnet.create_model("dabnet", 11)), tmp_path / "a.pth")
    b = save_checkpoint(make_checkpoint(dabnet.create_model("dabnet", 11, block_2=4)), tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match=f"cannot average {b} with {a}: they hold different networks"):
        average_checkpoints([a, b])
    with pytest.raises(ValueError, match="two or more checkpoints"):
        average_checkpoints([a])


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


def test_average_never_writes_over_an_input(ckpt, tmp_path, capsys):
    a = tmp_path / "a.pth"
    a.write_bytes(ckpt.read_bytes())
    before = digest(a)
    assert main(["average", str(a), str(ckpt), "--out", str(a)]) == 2
    assert "is also read by this command" in capsys.readouterr().err and digest(a) == before


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
