"""Scripts in benchmarks/ that write docs/: run small, on real inputs, into temporary folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dabnet
from dabnet.inference.segmenter import Segmenter
from dabnet.runtimes import MIN_INT8_AGREEMENT

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_recipe_table_from_two_holdout_runs(tmp_path, holdout_run):
    runs = []
    for name, crop in (("new", [32, 48]), ("old", [24, 32])):
        root, run, _ = holdout_run(tmp_path, out=name, crop_size=crop)
        runs.append(run)
    out = tmp_path / "docs" / "RECIPES.md"
    out.parent.mkdir()
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "camvid_recipes.py"), *map(str, runs), "--pair", *map(str, runs),
                    "--data-root", str(root), "--out", str(out)], check=True, capture_output=True, cwd=tmp_path)  # fmt: skip
    text = out.read_text()
    history = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda h: h["holdout_miou"])
    assert f"{100 * best['holdout_miou']:.2f} (ep {best['epoch']})" in text and "2 / 2" in text and "trained on" in text
    assert "### new against old" in text and "ahead at" in text  # both validated at epochs 1 and 2
    # Per class: the drive's pixel shares (they sum to 100) and each run's IoU at its best held-out epoch.
    rows = [line.split("|")[1:-1] for line in text.split("## Held-out IoU per class")[1].splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows][:2] == ["Sky", "Building"] and len(rows) == 11
    assert abs(sum(float(r[1]) for r in rows) - 100) < 0.1
    iou = [None if r[2].strip() == "–" else float(r[2]) for r in rows]
    assert iou == [None if v is None else round(100 * v, 2) for v in best["holdout_iou"]]
    assert (out.parent / "camvid_recipes.png").stat().st_size > 1000


@pytest.mark.slow
def test_train_speed_keeps_other_machines_sections(tmp_path):
    out = tmp_path / "TRAIN_SPEED.md"
    out.write_text("# Training speed\n\nOne section per machine.\n\n## Some other CPU, 2 threads x1\n\n| loop | images/s |\n| x | 1.00 |\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--crop", "32", "48", "--batch", "2", "--steps", "1",
           "--repeats", "1", "--warmup", "0", "--out", str(out)]  # fmt: skip
    # What is tested here is the document; the fused kernels run uncompiled (TORCHDYNAMO_DISABLE), which costs no
    # cold compile in a new process: tests/test_fused.py compiles and checks them.
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    subprocess.run(cmd + ["--variants", "fused", "--profile", "2"], check=True, capture_output=True, cwd=tmp_path, env=env)
    text = out.read_text()
    assert text.count("| dabnet loop, fused |") == 1 and "--batch 2 --crop 32 48 --steps 1 --repeats 1 --profile 2" in text
    # the profile of one step, eager and fused, its top two operators each
    assert text.count("fused=false: ") == 1 and text.count("fused=true: ") == 1 and text.count("| operator |") == 2
    # a second run on this machine replaces its section instead of adding another
    subprocess.run(cmd + ["--variants", "eager, fused=false"], check=True, capture_output=True, cwd=tmp_path, env=env)
    text = out.read_text()
    assert text.count("## ") == 2 and "## Some other CPU, 2 threads x1\n\n| loop | images/s |" in text
    assert "| dabnet loop, eager, fused=false |" in text and "| dabnet loop, fused |" not in text


@pytest.mark.slow
def test_averaging_table_from_kept_epochs(tmp_path, holdout_run):
    root, run, _ = holdout_run(tmp_path, epochs=3, keep_every=1)
    out, saved = tmp_path / "AVERAGING.md", tmp_path / "avg.pth"
    kept = sorted(run.glob("epoch_*.pth"), reverse=True)  # any order: the script orders them by epoch
    script = ROOT / "benchmarks" / "camvid_average.py"
    subprocess.run([sys.executable, str(script), *map(str, kept), "--windows", "2", "3", "9", "--data-root", str(root),
                    "--out", str(out), "--save", str(saved)], check=True, capture_output=True, cwd=tmp_path)  # fmt: skip
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.read_text().splitlines() if line.startswith("| ")}
    history = {h["epoch"]: h for h in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert rows["last epoch"][0].strip() == "3" and rows["last epoch"][2].strip() == "+0.00"
    # eager fp32 here as in training's validation: the last epoch's figure is the one training recorded
    assert float(rows["last epoch"][1]) == round(100 * history[3]["holdout_miou"], 2)
    assert rows["mean of the last 2"][0].strip() == "2–3" and rows["mean of the last 3"][0].strip() == "1–3"  # 9 clipped to 3
    singles = sorted(round(100 * history[e]["holdout_miou"], 2) for e in (1, 2, 3))
    assert rows["single epochs, median (lowest–highest)"][1].strip() == f"{singles[1]:.2f} ({singles[0]:.2f}–{singles[2]:.2f})"
    names = [line.split("|")[1].strip() for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    assert names == ["last epoch", "best single epoch", "single epochs, median (lowest–highest)", "mean of the last 2", "mean of the last 3"]
    two, three = (float(rows[k][1]) for k in ("mean of the last 2", "mean of the last 3"))
    chosen = [a["epoch"] for a in dabnet.load_model(saved).checkpoint_meta["averaged_from"]]
    # The better mean is saved; the table shows 2 decimals, so a tie there may be decided by the digits beyond.
    assert chosen in ([[2, 3]] if two > three else [[1, 2, 3]] if three > two else [[2, 3], [1, 2, 3]])


def test_speed_table_measures_backend_accuracy_where_the_weights_never_trained(tmp_path, holdout_run, repo_script):
    speed = repo_script("benchmarks/speed.py")
    _, run, _ = holdout_run(tmp_path)
    assert speed.accuracy_split(str(run / "best.pth")) == ("held-out CamVid 0006R0", "train", ["0006R0"])
    plain = dabnet.io.checkpoint.save_checkpoint(dabnet.io.checkpoint.make_checkpoint(dabnet.create_model("dabnet", 11)), tmp_path / "p.pth")
    assert speed.accuracy_split(str(plain)) == ("CamVid val", "val", [])


def test_recipe_table_names_the_run_the_bundled_weights_come_from(repo_script, monkeypatch):
    from types import SimpleNamespace

    from dabnet.commands.demo import bundled_weights_available

    recipes = repo_script("benchmarks/camvid_recipes.py")
    if bundled_weights_available():  # the weights that ship: camvid_v3's last 10 epochs averaged (MODEL_CARD.md)
        assert recipes.bundled_line([Path("elsewhere") / "camvid_v3"]) == (
            "Bundled now as `dabnet-camvid`: camvid_v3, the mean of epochs 691-700 (trained on every labelled frame: "
            "no held-out figure; [MODEL_CARD.md](MODEL_CARD.md)).")  # fmt: skip
        assert recipes.bundled_line([Path("elsewhere") / "not_camvid_v3"]) == ""
    # Weights of one epoch chosen on the held-out drive, as v2's were.
    meta = {"config": {"out": "/runs/camvid_holdout"}, "epoch": 212, "holdout_miou": 0.612349}
    monkeypatch.setattr(recipes, "bundled_weights_available", lambda: True)
    monkeypatch.setattr(recipes, "dabnet", SimpleNamespace(load_model=lambda name: SimpleNamespace(checkpoint_meta=meta)))
    assert recipes.bundled_line([Path("runs/other"), Path("runs/camvid_holdout")]) == (
        "Bundled now as `dabnet-camvid`: camvid_holdout, epoch 212 (61.23% on the held-out drive, eager fp32; "
        "[MODEL_CARD.md](MODEL_CARD.md)).")  # fmt: skip


@pytest.mark.slow
def test_camvid_progress_writes_the_row_rule_and_curve(tmp_path, make_camvid):
    from dabnet.commands import train as train_mod
    from dabnet.config import TrainConfig, build_config

    root = make_camvid(tmp_path / "cv", n=4)
    cfg = build_config(TrainConfig, "camvid_trainval", data_root=str(root), out=str(tmp_path / "v3"), epochs=3, val_every=2,
                       batch_size=2, crop_size=[32, 48], workers=0, warmup_iters=2, val_batch_size=4, check_data=False,
                       fused=False)  # fmt: skip
    train_mod.train(cfg, log=lambda *a: None)
    out = tmp_path / "docs" / "CAMVID_V3.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "camvid_progress.py"), str(tmp_path / "v3"), "--rule",
                    "the mean of the last 2 epochs", "--out", str(out)], check=True)  # fmt: skip
    text = out.read_text()
    assert "| v3 | trainval, 32x48, batch 2, adam 0.001 wd 0.0002, ce, enet c=1.1, bf16 autocast | none | 3 / 3 |" in text
    assert "**The weights that ship**, fixed before the run ends" in text and "the mean of the last 2 epochs" in text
    assert "(ep 3) |" in text and (out.parent / "camvid_v3_curve.png").stat().st_size > 1000


def test_finetune_benchmark_dataset_merges_classes_and_keeps_the_drives_apart(repo_script, make_camvid, tmp_path):
    from dabnet.data.datasets import build_dataset

    bench = repo_script("benchmarks/finetune_camvid4.py")
    root = make_camvid(tmp_path / "cv", n=6, sequences={"train": ["0001TP", "0006R0"], "val": ["0016E5"]})
    spec = bench.build_dataset(root, tmp_path / "c4", n_train=2)
    train, val = build_dataset("folder", spec, "train"), build_dataset("folder", spec, "val")
    assert train.classes == ["flat", "structure", "nature", "dynamic"] and len(train) == 2
    assert all(p.name.startswith("0001TP") for p, _ in train.pairs) and all(p.name.startswith("0006R0") for p, _ in val.pairs)
    assert [int(train.lut[c]) for c in range(12)] == [2, 1, 1, 0, 0, 2, 1, 1, 3, 3, 3, 255]


def test_finetune_benchmark_says_whether_the_start_weights_saw_the_validation_drive(repo_script, tmp_path):
    bench = repo_script("benchmarks/finetune_camvid4.py")
    model = dabnet.create_model("dabnet", 11, block_1=1, block_2=2)
    held = dabnet.save_checkpoint(dabnet.io.checkpoint.make_checkpoint(model, holdout_sequences=["0006R0"]), tmp_path / "held.pth")
    every = dabnet.save_checkpoint(dabnet.io.checkpoint.make_checkpoint(model, holdout_sequences=[]), tmp_path / "every.pth")
    assert bench.validation_drive_note(str(held)) == "which the starting weights never trained on"
    assert bench.validation_drive_note(str(every)).startswith("which the starting weights also trained on")


@pytest.mark.slow
def test_predict_throughput_table_has_every_path(tmp_path):
    import numpy as np
    from PIL import Image

    pytest.importorskip("cv2")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 48, 3), 60 * i, np.uint8)).save(folder / f"f{i}.png")
    ckpt = dabnet.save_checkpoint(dabnet.io.checkpoint.make_checkpoint(dabnet.create_model("dabnet", 11)), tmp_path / "m.pth")
    out = tmp_path / "PREDICT_SPEED.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "predict_throughput.py"), "--folder", str(folder), "--checkpoint",
                    str(ckpt), "--backend", "eager", "--repeats", "1", "--out", str(out)], check=True)  # fmt: skip
    text = out.read_text()
    assert "backend eager." in text and "3 frames of 48x32" in text and text.count("| predict ") == 6 and "| Segmenter.predict_stream alone (decoded frames) |" in text
    assert "| Segmenter.predict alone (decoded frames) |" in text and "| 100% |" in text
    assert "| colour mask, palette PNG, RLE |" in text and text.count("| overlay (blend + encode), zlib level") == 5
    assert "zlib level 2 with strategy RLE" in text


@pytest.mark.slow
def test_avx2_emulation_caps_onednn_and_reports_what_auto_keeps(tmp_path):
    pytest.importorskip("nncf")
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    ckpt = dabnet.save_checkpoint(dabnet.io.checkpoint.make_checkpoint(dabnet.create_model("dabnet", 11, block_1=1, block_2=2)), tmp_path / "m.pth")
    out = tmp_path / "AVX2.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "avx2_emulated.py"), "--folder", str(folder), "--checkpoint", str(ckpt),
                    "--frames", "2", "--repeats", "1", "--out", str(out)], check=True, env={**os.environ, "DABNET_CACHE": str(tmp_path / "cache")})  # fmt: skip
    text = out.read_text()
    agreement = float(text.split("int8 label agreement with fp32 on the calibration frames: **")[1].split("%")[0]) / 100
    verdict = "keeps int8" if agreement >= MIN_INT8_AGREEMENT else "drops int8 for fp32"
    assert f"`auto` {verdict} here." in text, text
    assert "jit_avx2_I8" in text or "brgconv_avx2" in text  # oneDNN's convolutions ran at the capped ISA
    assert "Convolution jit_avx512" not in text and "Convolution brgconv_avx512" not in text
    assert text.count("| openvino ") == 2 and "| eager fp32 |" in text and "| 1.00x |" in text


@pytest.mark.parametrize("agreement", [MIN_INT8_AGREEMENT + 0.005, MIN_INT8_AGREEMENT - 0.005])
def test_avx2_emulation_report_says_what_auto_does_with_int8_at_that_agreement(repo_script, agreement):
    bench = repo_script("benchmarks/avx2_emulated.py")
    keeps = agreement >= MIN_INT8_AGREEMENT
    result = {"agreement": agreement, "keeps_int8": keeps, "kernels": {"Convolution jit_avx2_I8": 3},
              "avx512_nodes": [], "ms": {"eager fp32": 20.0, "openvino int8": 10.0}}  # fmt: skip
    text = bench.report(result, "a CPU", "python3 benchmarks/avx2_emulated.py", (64, 48))
    assert f"**{100 * agreement:.2f}%**: `auto` {'keeps int8' if keeps else 'drops int8 for fp32'} here." in text, text
    assert "| openvino int8 | 10.00 | 100.0 | 2.00x |" in text and "No AVX-512 kernel ran." in text


def test_finetune_benchmark_runs_differ_only_in_init_from(repo_script, monkeypatch, tmp_path):
    import dabnet.commands.train

    bench = repo_script("benchmarks/finetune_camvid4.py")
    seen = []

    class Seen(Exception):
        pass

    def fake_train(cfg, **kwargs):
        seen.append(cfg)
        raise Seen

    monkeypatch.setattr(dabnet.commands.train, "train", fake_train)
    for init in ("dabnet-camvid", None):
        with pytest.raises(Seen):
            bench.run(tmp_path / "dataset.yaml", tmp_path / "run", 3, init)
    assert [c.init_from for c in seen] == ["dabnet-camvid", None]
    assert {k: v for k, v in vars(seen[0]).items() if k != "init_from"} == {k: v for k, v in vars(seen[1]).items() if k != "init_from"}


@pytest.mark.slow  # it converted a model to OpenVINO
def test_openvino_profile_sums_each_node_kind_of_the_labels_graph(repo_script):
    pytest.importorskip("openvino")
    import benchlib as script

    from dabnet.runtimes import prepare

    model = dabnet.create_model("dabnet", 11, block_1=1, block_2=2).eval()
    runner = prepare(model, "openvino", "fp32")
    x = torch.randn(1, 3, 64, 96).numpy()
    rows, wall = script.profile(runner, x, frames=3, warmup=1)
    kinds = {node_type for node_type, _, _, _ in rows}
    # the network up to the 1/8 logits, then the labels made from them on the host, a row of its own
    assert {"Convolution", "upsampled_argmax"} <= kinds and not {"Interpolate", "TopK"} & kinds and wall > 0
    assert all(ms >= 0 and n >= 1 for _, _, ms, n in rows) and [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
    text = script.table(rows, wall, top=3)
    assert text.count("\n| ") == 1 + 3 + 1 and "other kinds" in text  # header, 3 rows, the rest
    runner.host_upsample = False
    in_graph, _ = script.profile(runner, x, frames=3, warmup=1)
    assert {"Interpolate", "TopK"} <= {r[0] for r in in_graph} and "upsampled_argmax" not in {r[0] for r in in_graph}
    runner.host_upsample = True
    frame = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    u8_rows, _ = script.profile(runner, np.ascontiguousarray(frame.transpose(2, 0, 1)[None]), 3, 1, image_input=((1, 2, 3), (4, 5, 6)))
    assert {"Convolution", "upsampled_argmax"} <= {r[0] for r in u8_rows}  # the same network, fed uint8 frames
    seg = Segmenter.for_model(model, runner=runner, backend="openvino")
    for compared in (script.predict_against_float_path(seg, [frame], frames=2), script.predict_against_graph_upsample(seg, [frame], frames=2)):
        assert compared.count("\n| ") == 2 and "| 1.00x | 100.000% |" in compared  # Segmenter.predict, then the other path
        agree = float(compared.split("\n")[3].split("|")[-2].strip().rstrip("%"))
        assert agree > 99.9 and compared.endswith("over the 1 distinct frames.")  # fp32: the same labels but for float ties
    assert seg.run.host_upsample  # the comparison puts it back


@pytest.mark.slow  # int8: NNCF quantizes
def test_int8_roofline_counts_multiply_adds_and_bounds_the_frame(repo_script):
    pytest.importorskip("nncf")
    script = repo_script("benchmarks/int8_roofline.py")
    model = dabnet.create_model("dabnet", 11, block_1=1, block_2=2).eval()
    rows = script.multiply_adds(model, (64, 96))
    first = rows[0]
    assert first == ("3x3", 3, 32, (32, 48), 32 * 48 * 32 * 3 * 9)  # the first convolution, stride 2
    assert {r[0] for r in rows} == {"3x3", "1x1", "depth-wise"} and rows[-1][:3] == ("1x1", 259, 11)
    depthwise = [r for r in rows if r[0] == "depth-wise"][0]
    assert depthwise[-1] == depthwise[3][0] * depthwise[3][1] * depthwise[2] * 3  # 3x1 or 1x3, one input channel each
    rate = script.int8_rate(64, depth=2, side=16, frames=2)
    seg = Segmenter.from_checkpoint("dabnet-camvid", backend="openvino", precision="int8", log=None)  # the default CPU graph
    measured = script.graph_times(seg, (64, 96), frames=2)
    # No order between two timings: which is larger depends on the CPU (on AMX the int8 convolutions' counters summed
    # to twice the wall time). What holds everywhere: the parts are positive and add up to the wall time.
    assert measured["int8_conv"] > 0 and measured["eager"] > 0 and min(measured["float_conv"], measured["rest"]) >= 0
    assert measured["int8_conv"] + measured["float_conv"] + measured["rest"] == pytest.approx(measured["wall"])
    assert rate["macs"] == 2 * 16 * 16 * 64 * 64 * 9 and rate["ms"] > 0 and rate["gmac_s"] > 0
    graph = {"wall": 20.0, "int8_conv": 12.0, "float_conv": 1.0, "rest": 7.0, "eager": 60.0,
             "kernels": {"brgconv_avx512_I8": 12.0, "brgconv_avx512_bf16": 1.0}}  # fmt: skip
    total = sum(r[-1] for r in rows)
    int8_macs = total - rows[0][-1] - rows[-1][-1]
    fast = {"channels": 128, "side": 64, "macs": 1, "ms": 1.0, "gmac_s": int8_macs / 4e6}  # the int8 work in 4 ms
    slow = dict(fast, channels=64, gmac_s=fast["gmac_s"] / 2)
    text = script.report([((64, 96), rows, graph)], [slow, fast], {"model": "test cpu", "flags": ["avx2"]}, "cmd")
    assert "- int8 convolutions at the dense stack's rate: 4.00 ms" in text  # the best of the stacks
    assert "**12.00 ms per frame, 83 FPS, 5.0x eager fp32**" in text and "need 40% of it" in text  # 4 + 1 + 7; 60 / 12
    assert "| 60.00 (3.00x the default graph's time) |" in text and "## 64x96" in text
    assert f"{100 * 4 / 12:.0f}% of the best dense stack's rate" in text and "test cpu" in text


def test_int8_roofline_reads_overlapping_counters_as_shares_of_the_wall_time(repo_script, monkeypatch, ckpt):
    """Where OpenVINO's per-node counters add up to more than the wall time (nodes that overlap, as on AMX), the
    parts of the frame still add up to it, none is negative, and the bound is no slower than the frame measured."""
    script = repo_script("benchmarks/int8_roofline.py")
    rows = [("Convolution", "brgconv_avx512_amx_I8", 20.0, 30), ("Convolution", "brgconv_avx512_amx_bf16", 1.0, 2),
            ("GroupConvolution", "jit_avx512_I8", 2.0, 36), ("Eltwise", "jit_avx512_I8", 1.0, 40)]  # fmt: skip
    monkeypatch.setattr(script.benchlib, "profile", lambda *a, **k: (rows, 12.0))  # 24 ms of counters in a 12 ms frame
    seg = Segmenter.from_checkpoint(ckpt, backend="eager", log=None)
    graph = script.graph_times(seg, (64, 96), frames=2)
    assert graph["int8_conv"] == pytest.approx(11.0) and graph["float_conv"] == pytest.approx(0.5)  # half of each counter
    assert graph["rest"] == pytest.approx(0.5) and graph["counters"] == 24.0  # the Eltwise's half
    model = dabnet.create_model("dabnet", 11).eval()
    macs = script.multiply_adds(model, (64, 96))
    slow = {"channels": 128, "side": 64, "macs": 1, "ms": 1.0, "gmac_s": 1e-3}  # slower than the graph's own convolutions
    text = script.report([((64, 96), macs, graph)], [slow], {"model": "test cpu", "flags": ["amx_int8"]}, "cmd")
    assert "**12.00 ms per frame" in text and "add up to 24.00 ms, more than the wall time: nodes overlap" in text
    assert "| everything else (the wall time less the convolutions) | 0.50 |" in text
    assert "int8 convolutions (brgconv_avx512_amx_I8, jit_avx512_I8)" in text  # AMX's bf16 kernel is a float one


def test_hardware_names_the_isa_caps_that_emulate_a_smaller_cpu(monkeypatch):
    from dabnet.util.hardware import describe_hardware

    for key in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(key, raising=False)
    plain = describe_hardware(torch.device("cpu"))
    assert "capped" not in plain
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert describe_hardware(torch.device("cpu")) == plain + ", capped by ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2"


def test_distill_proxy_table_reads_each_arm_from_its_runs_metrics(tmp_path, repo_script):
    proxy = repo_script("benchmarks/distill_proxy.py")
    arms = {"proxy_A": [(5, {"holdout_miou": 0.44})], "proxy_BC": [(5, {"holdout_miou": 0.46, "holdout_trained_miou": 0.45})]}
    for folder, rows in arms.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "seconds": 100.0, **r}) + "\n" for e, r in rows))
    out = tmp_path / "PROXY.md"
    text = proxy.report(tmp_path, out)
    assert "| epoch | A: plain | B: distilled | C: distilled + EMA | D: C at lr 5e-5 | B - A | C - A | D - A |" in text
    assert "| 5 | 44.00 | 45.00 | 46.00 | – | +1.00 | +2.00 | – |" in text and out.read_text() == text
    assert "B: distilled +1.00 over the 1 common evaluations" in text
    argv = proxy.train_argv("BC", tmp_path)
    assert argv[:5] == ["dabnet", "train", "--config", "camvid_holdout", "--out"] and f"init_from={tmp_path / 'v2.safetensors'}" in argv
    assert "ema=0.998" in argv and "distill_flip=true" in argv
    assert proxy.train_argv("A", tmp_path)[-10:] == sum((["--set", s] for s in proxy.COMMON), [])
    d = proxy.train_argv("D", tmp_path)
    assert d[d.index("--out") + 1] == str(tmp_path / "proxy_D") and "lr=5e-5" in d and "lr=2e-4" not in d  # each option once
    sets = lambda argv: [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]  # noqa: E731
    assert [a for a in sets(d) if a != "lr=5e-5"] == [a for a in sets(argv) if a != "lr=2e-4"]  # else BC's: the same teacher maps


def test_distill_proxy_report_rows_the_arms_start_from_its_kept_figure(tmp_path, repo_script):
    import hashlib

    proxy = repo_script("benchmarks/distill_proxy.py")
    (tmp_path / "proxy_A").mkdir()
    iou = [0.9, 0.5, None, *[0.4] * 8]  # per class, as a run records it (None: a class absent from the drive)
    (tmp_path / "proxy_A" / "metrics.jsonl").write_text(json.dumps({"epoch": 5, "seconds": 1.0, "holdout_miou": 0.44, "holdout_iou": iou}) + "\n")
    assert "| 0 (v2, the start)" not in proxy.report(tmp_path, tmp_path / "P.md")  # no v2 weights, no start row
    (tmp_path / "v2.safetensors").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    (tmp_path / "proxy_start.json").write_text(json.dumps({"sha256": digest, "miou": 46.03, "iou": [85.0, 63.5, 20.0, *[40.0] * 8]}))
    text = proxy.report(tmp_path, tmp_path / "P.md")
    lines = text.splitlines()
    assert lines.index("| 0 (v2, the start) | 46.03 | 46.03 | 46.03 | 46.03 | – | – | – |") < lines.index("| 5 | 44.00 | – | – | – | – | – | – |")
    assert "A: plain -2.03 at epoch 5" in text
    assert "| class | start (v2) | A: plain (epoch 5) |" in text  # B, C and D have no run here: no column
    assert "| Sky | 85.0 | 90.0 (+5.0) |" in lines and "| Building | 63.5 | 50.0 (-13.5) |" in lines and "| Pole | 20.0 | – |" in lines


@pytest.mark.slow  # the script evaluates with loader workers
def test_distill_proxy_start_is_evaluated_once_per_weights(tmp_path, repo_script, make_camvid):
    from dabnet.commands.evaluate import run_evaluation
    from dabnet.config import EvalConfig
    from dabnet.io.checkpoint import make_checkpoint, save_safetensors

    proxy = repo_script("benchmarks/distill_proxy.py")
    root = make_camvid(tmp_path / "cv", n=3, sequences={"train": ["0001TP", "0006R0"], "val": ["0016E5"]})
    v2 = save_safetensors(make_checkpoint(dabnet.create_model("dabnet", 11)), tmp_path / "v2.safetensors")
    want = run_evaluation(EvalConfig(checkpoint=str(v2), data_root=str(root), split="trainval", sequences=["0006R0"], backend="eager",
                                     workers=0), log=lambda *a: None)  # fmt: skip
    assert proxy.start_miou(tmp_path, root) == pytest.approx(100 * want["miou"])
    kept = json.loads((tmp_path / "proxy_start.json").read_text())
    assert kept["iou"] == [None if v is None else pytest.approx(100 * v) for v in want["per_class_iou"].values()]
    (tmp_path / "proxy_start.json").write_text(json.dumps({**kept, "miou": 12.5}))
    assert proxy.start_miou(tmp_path, root) == 12.5  # kept: not evaluated again
    (tmp_path / "proxy_start.json").write_text(json.dumps({"sha256": kept["sha256"], "miou": 12.5}))  # kept before per-class figures
    assert proxy.start_figures(tmp_path, root)["iou"] == kept["iou"]  # evaluated again
    save_safetensors(make_checkpoint(dabnet.create_model("dabnet", 11)), v2)  # other weights: evaluated again
    assert proxy.start_miou(tmp_path, root) != 12.5 and json.loads((tmp_path / "proxy_start.json").read_text())["sha256"] != kept["sha256"]


def test_bench_scale_times_the_network_at_the_resized_frames(tmp_path):
    from dabnet.commands.bench import run_bench
    from dabnet.config import BenchConfig

    rows = run_bench(BenchConfig(models=["dabnet"], sizes=[(64, 96)], frames=1, warmup=0, no_paper_protocol=True, scale=1.5),
                     log=lambda *a: None)  # fmt: skip
    assert rows and all(r["size"] == "96x144" and r["frame_size"] == "64x96" and r["scale"] == 1.5 for r in rows)


def test_distill_proxy_applies_its_written_rule_and_builds_the_v4_run(tmp_path, repo_script):
    proxy = repo_script("benchmarks/distill_proxy.py")
    level = lambda v: {e: v for e in proxy.FINAL}  # noqa: E731
    curves = {"A: plain": level(45.0), "B: distilled": level(46.0), "C: distilled + EMA": level(46.15), "D: C at lr 5e-5": level(46.1)}
    arm, means = proxy.choose(curves)
    assert arm == "B: distilled" and means["C: distilled + EMA"] == pytest.approx(46.15)  # C and D add under 0.2 over B
    curves["C: distilled + EMA"] = level(46.3)
    assert proxy.choose(curves)[0] == "C: distilled + EMA"
    curves["D: C at lr 5e-5"] = level(46.45)
    assert proxy.choose(curves)[0] == "C: distilled + EMA"  # D, added late, must clear every arm by the margin
    curves["D: C at lr 5e-5"] = level(46.55)
    assert proxy.choose(curves)[0] == "D: C at lr 5e-5"
    curves["B: distilled"], curves["C: distilled + EMA"], curves["D: C at lr 5e-5"] = level(45.1), level(45.15), level(45.0)
    assert proxy.choose(curves)[0] == "A: plain"
    del curves["A: plain"][100]
    assert proxy.choose(curves) is None  # not before every arm has every final evaluation
    assert proxy.harms(45.9, 46.08) and not proxy.harms(46.08, 46.08) and not proxy.harms(40.0, None)
    a, c, d = (proxy.v4_argv(n, tmp_path) for n in ("A: plain", "C: distilled + EMA", "D: C at lr 5e-5"))
    assert a[:6] == ["dabnet", "train", "--config", "camvid_trainval", "--out", str(tmp_path / "camvid_v4")]
    assert f"init_from={tmp_path / 'v3.safetensors'}" in a and not any(s.startswith(("distill", "ema")) for s in a)
    assert f"distill_from={tmp_path / 'v3.safetensors'}" in c and "ema=0.998" in c and f"distill_cache={tmp_path}/teacher_v3_ensemble" in c
    assert "ema=0.998" not in proxy.v4_argv("B: distilled", tmp_path)
    sets = lambda argv: [argv[i + 1] for i, x in enumerate(argv) if x == "--set"]  # noqa: E731
    assert [x for x in sets(d) if x != "lr=5e-5"] == [x for x in sets(c) if x != "lr=2e-4"] and "lr=2e-4" not in d


def test_distill_proxy_starts_no_v4_run_when_the_chosen_arm_ends_below_its_start(tmp_path, repo_script):
    import hashlib

    proxy = repo_script("benchmarks/distill_proxy.py")
    for folder in ("proxy_A", "proxy_BC", "proxy_D"):
        (tmp_path / folder).mkdir()
        rows = [{"epoch": e, "seconds": 1.0, "holdout_miou": 0.45, "holdout_trained_miou": 0.45} for e in proxy.FINAL]
        (tmp_path / folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "v2.safetensors").write_bytes(b"w")
    (tmp_path / "proxy_start.json").write_text(json.dumps({"sha256": hashlib.sha256(b"w").hexdigest(), "miou": 46.0, "iou": [46.0] * 11}))
    text = proxy.report(tmp_path, tmp_path / "P.md")
    assert "## Decision: **no v4 run**" in text and "The rule picks A: plain, whose mean is below the start (46.00)" in text
    with pytest.raises(SystemExit, match="ends below its start .45.00 < 46.00.: by the written rule no v4 run"):
        proxy.main(["run", "v4", "--runs", str(tmp_path)])
    assert not (tmp_path / "v3.safetensors").exists() and not (tmp_path / "camvid_v4").exists()


def test_fps_table_rows_name_the_cpu_weights_backend_and_threads_and_keep_other_cpus(tmp_path):
    import fps_table
    from benchlib import write_section

    from dabnet.util.hardware import cpu_flags

    rows = fps_table.measure("dabnet-camvid", ["eager:fp32"], [1], frames=1, warmup=0)
    assert [(label, n) for label, n, _ in rows] == [("eager fp32", 1)]
    cpu = cpu_flags()
    lines = fps_table.lines_for(rows, cpu, fps_table.weights_version("dabnet-camvid"), frames=1)
    out = tmp_path / "FPS.md"
    out.write_text(f"{fps_table.TITLE}\n\n## Another CPU (avx2)\n\n| CPU | x |\n")
    write_section(out, fps_table.TITLE, lines[0], lines[1:])
    write_section(out, fps_table.TITLE, lines[0], lines[1:])  # a second run replaces its own section
    text = out.read_text()
    assert text.count("## ") == 2 and "## Another CPU (avx2)\n\n| CPU | x |" in text
    row = next(line for line in text.splitlines() if "| eager fp32 |" in line).split("|")[1:-1]
    ms = rows[0][2]
    assert row[0].strip() == cpu["model"] and row[2].strip().startswith("dabnet-camvid v3 (sha256 ")
    assert row[4].strip() == "1" and float(row[5]) == round(1000 / ms[(360, 480)], 1) and float(row[6]) == round(1000 / ms[(512, 1024)], 1)
