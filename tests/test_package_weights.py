"""scripts/package_weights.py: a held-out-drive run turned into bundled-style weights and a model card."""

from __future__ import annotations

import shlex

import pytest
import torch

import dabnet
from dabnet.commands.demo import run_demo
from dabnet.config import DemoConfig, TrainConfig, build_config
from dabnet.runtimes.auto import choose_auto


@pytest.mark.parametrize("val_split", ["val", None])  # None: the shipped camvid_holdout config's choice
@pytest.mark.slow  # packaging evaluates with a loader worker
def test_a_holdout_run_is_packaged_with_each_figures_split(tmp_path, holdout_run, repo_script, val_split):
    root, run, cfg = holdout_run(tmp_path, val_split=val_split)
    pw = repo_script("scripts/package_weights.py")
    out, card = tmp_path / "w.safetensors", tmp_path / "docs" / "MODEL_CARD.md"
    card.parent.mkdir()
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "0016E5_00000.jpg").write_bytes(b"old")
    (samples / "0016E5_00000_label.png").write_bytes(b"old")
    meta = pw.package(run, str(root), out, card, samples=samples, sample_names=["0006R0_00003", "0006R0_00001.png"], default_backend=False)
    # The demo frames are now the held-out drive's (the guard's figure is recorded on them); the old ones are gone.
    assert sorted(p.name for p in samples.iterdir()) == ["0006R0_00001.jpg", "0006R0_00001_label.png", "0006R0_00003.jpg", "0006R0_00003_label.png"]
    assert meta["sample_frames"] == ["0006R0_00001", "0006R0_00003"] and 0 <= meta["sample_frames_miou"] <= 1
    assert (samples / "0006R0_00001_label.png").read_bytes() == (root / "trainannot" / "0006R0_00001.png").read_bytes()
    model = dabnet.load_model(out)
    assert model.checkpoint_meta["holdout_sequences"] == ["0006R0"] and model.checkpoint_meta["val_trained_on"] is True
    assert meta["holdout_miou"] == pytest.approx(model.checkpoint_meta["best_miou"], abs=1e-6)  # selected on it
    text = card.read_text()
    assert "held-out drive 0006R0 mIoU" in text and "not measured here" in text and "57.6% on the CamVid test split" in text
    assert "trained on: these frames are in the training split" in text
    why = text.split("## Why this data and this length")[1]
    assert "**Everything but drive 0006R0** (4 frames left out)" in why and "**2 epochs of a 2-epoch schedule**" in why, why
    figures = [h["holdout_miou"] for h in torch.load(run / "last.pth", weights_only=True)["history"]]
    assert f"- **Epoch {meta['epoch']}**, the best of 2 validations on 0006R0." in why
    assert f"the median of the run's last 20 validations is\n  {50 * sum(figures):.2f}%" in why
    assert (card.parent / "camvid_learning_curve.png").stat().st_size > 1000
    assert (card.parent / "demo_side_by_side.png").stat().st_size > 1000
    lines = []
    run_demo(DemoConfig(checkpoint=str(out), out=str(tmp_path / "demo"), backend="eager", samples=str(samples)), log=lines.append)
    assert sorted(p.name for p in (tmp_path / "demo").glob("*_side_by_side.png")) == ["0006R0_00001_side_by_side.png", "0006R0_00003_side_by_side.png"]
    assert f"{100 * meta['holdout_miou']:.1f}% mIoU on held-out CamVid drive 0006R0" in lines[0]  # not the trained-on val figure
    # The card's command rebuilds the run's recipe.
    command = next(line for line in text.splitlines() if line.startswith("dabnet train"))
    args = shlex.split(command)
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    again = build_config(TrainConfig, args[args.index("--config") + 1], sets)
    assert {k: v for k, v in vars(again).items() if k not in pw.NOT_RECIPE} == {k: v for k, v in vars(cfg).items() if k not in pw.NOT_RECIPE}


@pytest.mark.slow  # packaging evaluates with a loader worker
def test_an_average_of_kept_epochs_is_packaged_with_how_to_make_it_again(tmp_path, holdout_run, repo_script):
    from dabnet.io.checkpoint import average_checkpoints, save_checkpoint

    root, run, _ = holdout_run(tmp_path, keep_every=1)
    avg = save_checkpoint(average_checkpoints([run / "epoch_0001.pth", run / "epoch_0002.pth"]), tmp_path / "avg.pth")
    card = tmp_path / "docs" / "MODEL_CARD.md"
    card.parent.mkdir()
    meta = repo_script("scripts/package_weights.py").package(run, str(root), tmp_path / "w.safetensors", card, weights=avg, default_backend=False)
    assert meta["averaged_from"] == [{"path": "epoch_0001.pth", "epoch": 1}, {"path": "epoch_0002.pth", "epoch": 2}]
    text = card.read_text()
    why = text.split("## Why this data and this length")[1].split("## Per-class IoU")[0]
    assert "**The mean of epochs 1-2** (2 epochs, `dabnet average`), not the best single" in why
    assert "the best of 2 validations is partly" in why and "(CAMVID_AVERAGING.md)" in why
    assert "from `avg.pth`" in text and "(the mean of the weights of epochs 1, 2 (`dabnet average`))" in text
    lines = text.split("## Reproduce")[1].splitlines()
    assert lines[3].startswith("dabnet train --config camvid_holdout") and lines[3].endswith("--set keep_every=1")
    assert lines[4] == "dabnet average runs/run/epoch_0001.pth runs/run/epoch_0002.pth --out runs/run/averaged.pth"
    assert lines[5] == "python scripts/package_weights.py --run runs/run --weights runs/run/averaged.pth"


@pytest.mark.parametrize("name, holdout", [("0001TP_00000", ["0006R0"]), ("0006R0_00099", ["0006R0"]), ("0006R0_00001", [])])
def test_demo_frames_must_come_from_a_held_out_drive(tmp_path, make_camvid, repo_script, name, holdout):
    """A trained-on frame, a frame that is not there, or a run without a held-out drive: refused, nothing removed."""
    root = make_camvid(tmp_path / "cv", n=4, sequences={"train": ["0001TP", "0006R0"], "val": ["0016E5"]})
    cfg = build_config(TrainConfig, "camvid_holdout", data_root=str(root), holdout=holdout)
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "keep.jpg").write_bytes(b"x")
    with pytest.raises(SystemExit, match=f"--sample-frames {name}: not a frame of the .*never trained on"):
        repo_script("scripts/package_weights.py").replace_samples(cfg, str(root), [name], samples)
    assert (samples / "keep.jpg").exists()


@pytest.mark.slow  # packaging evaluates with a loader worker
def test_a_run_on_every_labelled_frame_ships_by_its_rule_with_the_history_of_earlier_weights(tmp_path, holdout_run, repo_script):
    from dabnet.io.checkpoint import average_checkpoints, make_checkpoint, save_checkpoint, save_safetensors

    start = save_safetensors(make_checkpoint(dabnet.create_model("dabnet", 11)), tmp_path / "dabnet-camvid-v2.safetensors")
    root, run, cfg = holdout_run(tmp_path, config="camvid_trainval", init_from=str(start), epochs=3)
    pw = repo_script("scripts/package_weights.py")
    card = tmp_path / "docs" / "MODEL_CARD.md"
    card.parent.mkdir()
    with pytest.raises(SystemExit, match="trained on every labelled frame.*--rule"):  # nothing to choose by: a rule is needed
        pw.package(run, str(root), tmp_path / "w.safetensors", card)
    avg = save_checkpoint(average_checkpoints([run / "epoch_0002.pth", run / "epoch_0003.pth"]), run / "averaged.pth")
    rule = "the mean of the last 2 epochs of the 3 (epochs 2-3), made by `dabnet average`"
    fetch = "git show da77c38:dabnet/weights/dabnet-camvid.safetensors > dabnet-camvid-v2.safetensors"
    meta = pw.package(run, str(root), tmp_path / "w.safetensors", card, weights=avg, rule=rule, init_from_how=fetch, default_backend=False)
    assert meta["trained_on_every_labelled_frame"] and meta["selection_rule"] == rule and meta["init_from"] == "dabnet-camvid-v2.safetensors"
    text = card.read_text()
    assert "trained on `trainval`: every labelled frame, nothing held out; no figure selected anything" in text
    assert "v1 (" in text and "**57.64%**" in text and "v2 (" in text and "**60.84%**" in text and "**65.76%**" in text and "| CamVid test | not measured here" in text
    assert "trained on: these frames are in the training split" in text  # val marked as trained on
    why = text.split("## Why this data and this length")[1].split("## Per-class IoU")[0]
    assert "**Every labelled frame**" in why and "**Started from `dabnet-camvid-v2.safetensors`** with a fresh 3-epoch" in why
    assert f"**The weights that ship: {rule}.**" in why
    steps = text.split("## Reproduce")[1].split("```")[1].strip().splitlines()[1:]  # after "bash"
    assert steps[0] == fetch and steps[1].startswith("dabnet train --config camvid_trainval")
    args = shlex.split(steps[1])
    assert "init_from=dabnet-camvid-v2.safetensors" in args and "keep_every" not in steps[1]  # the config keeps every epoch
    assert steps[2] == "dabnet average runs/run/epoch_0002.pth runs/run/epoch_0003.pth --out runs/run/averaged.pth"
    assert steps[3] == f"python scripts/package_weights.py --run runs/run --weights runs/run/averaged.pth --rule {shlex.quote(rule)}"
    again = build_config(TrainConfig, args[args.index("--config") + 1], [args[i + 1] for i, a in enumerate(args) if a == "--set"])
    same = {k: v for k, v in vars(cfg).items() if k not in pw.NOT_RECIPE}
    assert {k: v for k, v in vars(again).items() if k not in pw.NOT_RECIPE} == {**same, "init_from": "dabnet-camvid-v2.safetensors"}
    lines = []
    run_demo(DemoConfig(checkpoint=str(tmp_path / "w.safetensors"), out=str(tmp_path / "demo"), backend="eager"), log=lines.append)
    assert "trained on every labelled CamVid drive (train+val)" in lines[0] and "val mIoU" not in lines[0]


@pytest.mark.slow  # packaging evaluates with a loader worker
def test_a_distilled_run_with_ema_ships_its_last_epoch_with_the_teacher_on_its_card(tmp_path, holdout_run, repo_script, monkeypatch):
    """v4's shape: every frame, from earlier weights, taught by their ensemble, EMA; the last epoch ships by the rule."""
    import sys

    from dabnet.io.checkpoint import make_checkpoint, save_safetensors

    monkeypatch.setitem(sys.modules, "openvino", None)  # auto as on a machine without it: the card's row, not NNCF's cost

    start = save_safetensors(make_checkpoint(dabnet.create_model("dabnet", 11)), tmp_path / "v3.safetensors")
    root, run, cfg = holdout_run(tmp_path, config="camvid_trainval", init_from=str(start), distill_from=str(start), distill_scales=[1.0, 2.0],
                                 distill_flip=True, distill_weight=2.0, ema=0.9, distill_cache=str(tmp_path / "maps"))  # fmt: skip
    pw = repo_script("scripts/package_weights.py")
    card = tmp_path / "docs" / "MODEL_CARD.md"
    card.parent.mkdir()
    rule = "the weights the run saves at its last epoch (the EMA average)"
    meta = pw.package(run, str(root), tmp_path / "w.safetensors", card, weights=run / "last.pth", rule=rule)
    shipped = dabnet.load_model(tmp_path / "w.safetensors").state_dict()
    ema, _ = pw.flush_negligible(torch.load(run / "last.pth", weights_only=True)["model"])  # the run's model: the average
    assert shipped.keys() == ema.keys() and all(torch.equal(shipped[k], v) for k, v in ema.items())
    words = "distilled from `v3.safetensors` run as its own ensemble (scales [1.0, 2.0] + flips, probabilities averaged): " \
            "loss = CE + 2 * T^2 * KL, T = 1; weight EMA 0.9 (the weights are the average)"
    assert meta["extensions"] == words
    text = card.read_text()
    assert f"schedule of 2 epochs; {words} |" in text  # the recipe row
    # What users get: the shipped file through the default backend, beside eager, on val (nothing is held out).
    assert meta["default_backend"].startswith(choose_auto()[0]) and 0 <= meta["default_backend_miou"] <= 1  # what auto picks here
    assert meta["default_backend_change"] == pytest.approx(meta["default_backend_miou"] - meta["val_miou"])
    assert (f"| default backend | {100 * meta['default_backend_miou']:.2f}% on val with `{meta['default_backend']}` (`--backend auto`), "
            f"{100 * meta['default_backend_change']:+.2f} points against eager fp32 |") in text
    why = text.split("## Why this data and this length")[1].split("## Per-class IoU")[0]
    assert f"- **Taught by an ensemble**: {words}. The recipe was chosen on a held-out drive" in why and f"**The weights that ship: {rule}.**" in why
    command = next(line for line in text.splitlines() if line.startswith("dabnet train"))
    args = shlex.split(command)
    assert "distill_from=v3.safetensors" in args and "init_from=v3.safetensors" in args and str(tmp_path) not in command
    again = build_config(TrainConfig, args[args.index("--config") + 1], [args[i + 1] for i, a in enumerate(args) if a == "--set"])
    same = {k: v for k, v in vars(cfg).items() if k not in pw.NOT_RECIPE}
    assert {k: v for k, v in vars(again).items() if k not in pw.NOT_RECIPE} == {**same, "init_from": "v3.safetensors", "distill_from": "v3.safetensors"}


def test_inputs_that_would_fail_at_the_end_are_refused_before_any_evaluation(tmp_path, holdout_run, repo_script, monkeypatch):
    """No demo frames, or an output that is the checkpoint being read: refused at once, nothing written over."""
    root, run, _ = holdout_run(tmp_path)
    pw = repo_script("scripts/package_weights.py")
    monkeypatch.setattr(pw, "figures", lambda *a: pytest.fail("evaluated before the inputs were checked"))
    card = tmp_path / "docs" / "MODEL_CARD.md"
    for samples in (tmp_path / "missing", tmp_path):  # absent, and a folder without frames
        with pytest.raises(SystemExit, match=f"--samples {samples}: no demo frames there.*--sample-frames"):
            pw.package(run, str(root), tmp_path / "w.safetensors", card, samples=samples)
    before = (run / "best.pth").read_bytes()
    with pytest.raises(SystemExit, match="--out .*best.pth: that is the checkpoint being packaged"):
        pw.package(run, str(root), run / "best.pth", card)
    with pytest.raises(SystemExit, match="--card .*last.pth: that is the checkpoint being packaged"):
        pw.package(run, str(root), tmp_path / "w.safetensors", run / "last.pth")
    assert (run / "best.pth").read_bytes() == before and not card.parent.exists()


@pytest.mark.slow  # packaging evaluates with a loader worker
def test_the_output_folders_are_made(tmp_path, holdout_run, repo_script):
    root, run, _ = holdout_run(tmp_path)
    out, card = tmp_path / "new" / "w.safetensors", tmp_path / "other" / "docs" / "MODEL_CARD.md"
    repo_script("scripts/package_weights.py").package(run, str(root), out, card, default_backend=False)
    assert out.exists() and card.exists() and (card.parent / "demo_side_by_side.png").exists()
