"""docs/reports/SPEED.md: DABNet's CPU backends against eager fp32, and the paper's speed table (Table 5)
protocol for the comparison networks, all measured on this machine in one run.

    python benchmarks/speed.py --checkpoint dabnet-camvid --data-root ../shared/data/camvid

Backend accuracy is measured with the trained weights on their held-out drive (else CamVid val; mIoU
change against eager fp32), through `dabnet eval --backend B --precision P`. Every timing is a median
over interleaved frames (see `dabnet.commands.bench.benchmark`). Pause anything else running on the machine first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Tuple

import torch

from benchlib import weights_version
from dabnet.commands.bench import benchmark, measure_matmul_peak, plot_bench
from dabnet.commands.evaluate import run_evaluation
from dabnet.config import EvalConfig
from dabnet.io.checkpoint import load_model
from dabnet.runtimes.cache import package_versions
from dabnet.util.hardware import cpu_flags, cpu_has_bf16

ROOT = Path(__file__).resolve().parents[1]
# DABNet's dense 3x3 convolutions (in, out, H, W at 512x1024 input): stem, block 1, block 2.
CONV_SHAPES = [(32, 32, 256, 512), (64, 32, 128, 256), (128, 64, 64, 128)]


def conv_throughput(frames: int = 10) -> list:
    """fp32 against int8 throughput of one compiled 3x3 convolution (+ReLU) at DABNet's shapes:
    how much int8 can gain on this CPU at best."""
    import statistics

    import torch._inductor.config as inductor_config

    from dabnet.runtimes.int8 import quantize_int8

    inductor_config.freezing = True
    rows = []
    for cin, cout, h, w in CONV_SHAPES:
        net = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU()).eval()
        x = torch.randn(1, cin, h, w)
        runs = {"fp32": torch.compile(net), "int8": torch.compile(quantize_int8(net, [x]))}
        times = {k: [] for k in runs}
        with torch.no_grad():
            for f in runs.values():
                f(x), f(x)
            for _ in range(frames):
                for k, f in runs.items():
                    t0 = time.perf_counter()
                    f(x)
                    times[k].append(time.perf_counter() - t0)
        gop = 2 * cin * cout * 9 * h * w / 1e9
        rows.append({"shape": f"{cin}->{cout} @ {h}x{w}", **{k: gop / statistics.median(v) for k, v in times.items()}})
    return rows


def accuracy_split(checkpoint: str) -> Tuple[str, str, list]:
    """Where backends' accuracy is measured: the weights' held-out drives (never trained on) when they
    have any, else CamVid val. Returns (description, split, sequences)."""
    meta = load_model(checkpoint).checkpoint_meta  # packaged weights name them; a run's checkpoint has its config
    held = list(meta.get("holdout_sequences") or (meta.get("config") or {}).get("holdout") or [])
    return (f"held-out CamVid {', '.join(held)}", "train", held) if held else ("CamVid val", "val", [])


def backend_miou(checkpoint: str, labels, data_root: str, where: Tuple[str, str, list]) -> dict:
    """mIoU of each backend label (NAME or NAME:PRECISION) on `where` (`accuracy_split`), through `dabnet eval`'s code."""
    name, split, sequences = where
    out = {}
    for label in labels:
        backend, _, precision = label.partition(":")
        cfg = EvalConfig(checkpoint=checkpoint, data_root=data_root, split=split, sequences=sequences, workers=0, device="cpu",
                         backend=backend, precision=precision or "fp32")  # fmt: skip
        out[label] = run_evaluation(cfg, log=lambda *a: None)["miou"]
        print(f"  {label}: {name} mIoU {100 * out[label]:.2f}%")
    return out


def default_backends() -> list:
    """Every backend and precision that runs on this CPU (bf16 only where it is native)."""
    labels = ["eager", "fold", "compile", "int8", "onnxruntime", "openvino:fp32", "openvino:int8", "auto"]
    if cpu_has_bf16():
        labels[1:1] = ["eager:bf16"]
        labels[4:4] = ["compile:bf16"]
        labels.insert(labels.index("openvino:int8"), "openvino:bf16")
    return labels


def pipeline_sections(checkpoint: str, folder: Path, size, frames: int, repeats: int) -> list:
    """`dabnet predict` end to end on a folder and a video (benchmarks/predict_throughput.py), and the per-node
    profile of the default graph with the float-input graph it replaced (benchmarks/ov_profile.py)."""
    import tempfile

    import benchlib

    from dabnet.inference.segmenter import Segmenter

    seg = Segmenter.from_checkpoint(checkpoint, backend="auto", log=None)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    with tempfile.TemporaryDirectory(prefix="dabnet-speed-") as work:
        lines = ["", f"## `dabnet predict` end to end (backend {seg.backend}, {folder.name} folder)", "",
                 *benchlib.end_to_end(seg, paths, repeats, Path(work))]  # fmt: skip
    if seg.run.backend == "openvino":
        report = benchlib.profile_report(seg, size, frames).replace("\n## ", "\n### ")
        lines += ["", f"## Per-node profile of the default graph ({size[0]}x{size[1]})", "", report]
    return lines


def dabnet_lines(rows, miou, accuracy, backends, peak, checkpoint) -> list:
    """The DABNet backends table: speed against eager fp32, share of the fp32 peak, mIoU change."""

    def base(size):
        return next(r["ms_median"] for r in rows if r["size"] == size and r["backend"] == "eager" and r["precision"] == "fp32" and r["protocol"] == "inference")

    lines = [
        f"## DABNet ({checkpoint}), CPU backends",
        "",
        f"| size | backend | precision | protocol | ms (median) | FPS | vs eager fp32 | peak % | {accuracy[0]} mIoU | change |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = base(r["size"]) / r["ms_median"]
        frac = 100 * 2 * r["gmacs"] / (r["ms_median"] / 1000) / peak
        m = miou.get(_label_of(r, backends)) if r["protocol"] == "inference" else None
        change = "" if m is None or "eager" not in miou else f"{100 * (m - miou['eager']):+.2f}"
        lines.append(f"| {r['size']} | {r['backend']} | {r['precision']} | {r['protocol']} | {r['ms_median']:.1f} | {r['fps']:.1f} | "
                     f"{ratio:.2f}x | {frac:.0f}% | {'' if m is None else f'{100 * m:.2f}%'} | {change} |")  # fmt: skip
    return lines + [
        "",
        "`paper (autograd on)` is the paper's protocol: the forward pass without `no_grad`, so the",
        "FPS it reports include autograd's bookkeeping; `inference` runs under `torch.inference_mode()`.",
        "int8 rows count int8 operations against the fp32 peak. `auto (openvino)` is the default backend",
        "(`dabnet.runtimes.choose_auto`); its mIoU is `dabnet eval --backend auto`. `change` is the mIoU",
        f"change against eager fp32, in points, on all {accuracy[0]} images at 360x480 (`dabnet eval",
        "--backend B --precision P`; the weights' held-out drive when they have one: never trained on).",
        "`+cl` rows run channels_last.",
    ]


def labels_lines(to_labels, eager_inference_ms: float) -> list:
    """Frame to label map (protocol `labels`) beside the same backends' logits."""
    eager_labels_run = next(r["ms_median"] for r in to_labels if r["size"] == "512x1024" and r["backend"] == "eager" and r["protocol"] == "inference")
    lines = [
        "",
        "## Image to label map",
        "",
        "What `dabnet predict`, `serve` and the demo run per frame after decoding: from the RGB uint8 frame to",
        "the label map (protocol `labels`: normalisation, network and arg-max; eager normalises in PyTorch and",
        "takes the arg-max of its logits; `auto` has OpenVINO normalise inside its graph and stop at the 1/8 logits,",
        "and `upsampled_argmax` makes the labels from them), beside the same backends' logits from a normalised",
        "tensor (`inference`), interleaved in one run.",
        "",
        f"Eager fp32 at 512x1024 took {eager_inference_ms:.0f} ms in the table above and {eager_labels_run:.0f} ms in this "
        "one, a few minutes apart: this machine's speed drifts between runs, so compare ratios within one table.",
        "",
        "| size | backend | precision | protocol | ms (median) | FPS | vs eager fp32 (same protocol) |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in to_labels:
        ref = next(q["ms_median"] for q in to_labels if q["size"] == r["size"] and q["backend"] == "eager" and q["protocol"] == r["protocol"])
        lines.append(f"| {r['size']} | {r['backend']} | {r['precision']} | {r['protocol']} | {r['ms_median']:.1f} | {r['fps']:.1f} | "
                     f"{ref / r['ms_median']:.2f}x |")  # fmt: skip
    return lines


def conv_lines(convs, cpu, gmacs: float, peak: float) -> list:
    """How much int8 can gain on this CPU: one compiled 3x3 convolution, fp32 against int8."""
    vnni = any(f in cpu["flags"] for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return [
        "",
        "## How much int8 can gain here: one 3x3 convolution at DABNet's shapes",
        "",
        "Compiled fp32 against compiled int8 (the `int8` backend's lowering), batch 1, median of 10:",
        "",
        "| conv (in->out @ HxW) | fp32 GFLOP/s | int8 GOP/s | int8 / fp32 |",
        "|---|---:|---:|---:|",
        *[f"| {c['shape']} | {c['fp32']:.0f} | {c['int8']:.0f} | {c['int8'] / c['fp32']:.2f}x |" for c in convs],
        "",
        f"This CPU {'has' if vnni else 'has no'} VNNI/AMX int8 dot-product instructions. With DABNet's "
        f"{2 * gmacs:.1f} GFLOP at 512x1024 and the fp32 peak above, fp32 cannot go below {1000 * 2 * gmacs / peak:.0f} ms a frame.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="dabnet-camvid")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "camvid"))
    ap.add_argument("--backends", nargs="+", default=default_backends(), help="NAME or NAME:PRECISION (openvino:int8)")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--table5-frames", type=int, default=5)
    ap.add_argument("--pipeline-repeats", type=int, default=3, help="repeats of the end-to-end predict rows (0: leave them out)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "reports" / "SPEED.md"))
    args = ap.parse_args()
    t0 = time.time()
    cpu, versions = cpu_flags(), package_versions()
    peak = measure_matmul_peak()
    print(f"{cpu['model']} ({' '.join(cpu['flags'])}): fp32 matmul peak {peak:.1f} GFLOP/s")
    timed = args.backends + [f"{b}+cl" for b in args.backends if b in ("eager", "fold")]  # NHWC, interleaved too
    rows = benchmark(["dabnet"], [(512, 1024), (360, 480)], timed, frames=args.frames, warmup=3,
                     checkpoint=args.checkpoint)  # fmt: skip
    # From the uint8 frame to the label map, as `dabnet predict` and the demo run.
    to_labels = benchmark(["dabnet"], [(512, 1024), (360, 480)], ["eager", "auto"], frames=args.frames, warmup=3,
                          checkpoint=args.checkpoint, paper_protocol=False, labels=True)  # fmt: skip
    accuracy = accuracy_split(args.checkpoint)
    miou = backend_miou(args.checkpoint, args.backends, args.data_root, accuracy)
    convs = conv_throughput() if "int8" in args.backends else []
    table5 = benchmark(["dabnet", "enet", "espnet", "erfnet", "icnet", "segnet"], [(256, 512), (512, 1024)], ["eager"],
                       frames=args.table5_frames, warmup=1)  # fmt: skip
    folder = Path(args.data_root) / "val"
    pipeline = pipeline_sections(args.checkpoint, folder, (360, 480), 5 * args.frames, args.pipeline_repeats) if args.pipeline_repeats and folder.is_dir() else []
    docs = Path(args.out).parent
    plot_bench([r for r in table5 if r["size"] == "512x1024"], str(docs / "speed_cpu.png"))
    (docs / "speed_cpu.json").write_text(
        json.dumps({"matmul_peak_gflops": peak, "dabnet": rows, "to_labels": to_labels, "table5": table5, "miou": miou, "conv_int8_vs_fp32": convs}, indent=2)
    )
    eager_ms = next(r["ms_median"] for r in rows if r["size"] == "512x1024" and r["backend"] == "eager" and r["precision"] == "fp32" and r["protocol"] == "inference")
    lines = [
        "# Speed on this machine",
        "",
        f"Generated by `python benchmarks/speed.py` ({(time.time() - t0) / 60:.0f} minutes) on **{cpu['model']}** "
        f"(flags: {' '.join(cpu['flags']) or 'none of AVX2/AVX512/VNNI/BF16/AMX'}; PyTorch capability {cpu['capability']}), "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, OpenVINO {versions['openvino']}, NNCF "
        f"{versions['nncf']}, no GPU; weights {weights_version(args.checkpoint)}. Batch 1, median over interleaved frames after warm-up. "
        f"Measured fp32 matmul peak of this machine: **{peak:.0f} GFLOP/s** (1024x1024 sgemm, best of 2 s); "
        "'peak %' is the rate a run reaches counting 2 FLOPs per MAC of `dabnet models`, against that peak.",
        "",
        *dabnet_lines(rows, miou, accuracy, args.backends, peak, args.checkpoint),
        *labels_lines(to_labels, eager_ms),
        *pipeline,
        "",
        "## The paper's Table 5 protocol, comparison networks (eager fp32, fresh weights)",
        "",
        "| model | size | protocol | ms (median) | FPS | params | GMACs |",
        "|---|---|---|---:|---:|---:|---:|",
        *[f"| {r['model']} | {r['size']} | {r['protocol']} | {r['ms_median']:.1f} | {r['fps']:.2f} | {r['params']:,} | {r['gmacs']:.2f} |" for r in table5],
    ]
    if convs:
        lines += conv_lines(convs, cpu, rows[0]["gmacs"], peak)
    lines += ["", "![FPS against parameters at 512x1024](speed_cpu.png)", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


def _label_of(row: dict, labels) -> str:
    """The --backends label a benchmark row came from (for its mIoU)."""
    if row["backend"].startswith("auto"):
        return "auto"
    for label in labels:
        name, _, prec = label.partition(":")
        if name == row["backend"] and (prec or "fp32") == row["precision"]:
            return label
        if name == row["backend"] and name == "int8":
            return label
    return ""


if __name__ == "__main__":
    main()
