"""Where the default CPU graph spends its time: OpenVINO's per-node counters (PERF_COUNT) for the `auto`
backend's labels graph (the network + the arg-max, what predict runs), summed per node type and kernel:
the graph that takes RGB uint8 frames (what `Segmenter.predict` runs) beside the one that takes normalised
float input (what it ran before, and what eval and bench's inference protocol still run), and
`Segmenter.predict` against the float path with its Python-side normalisation, interleaved.

    python benchmarks/ov_profile.py --size 360x480 --frames 50            # prints the table
    python benchmarks/ov_profile.py --size 360x480 --out docs/OV_PROFILE.md  # and writes it
    python benchmarks/ov_profile.py --presets mixed performance              # NNCF presets side by side

Batch 1, one CPU stream with the LATENCY hint, the cached IR `Segmenter.from_checkpoint(..., backend="auto")`
uses; medians per node over `--frames` runs after warm-up. The wall time per frame is measured in the same
run; the counters' sum is lower (it leaves out the runtime's own overhead between nodes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dabnet.config import parse_size  # noqa: E402
from dabnet.inference.segmenter import Segmenter  # noqa: E402
from dabnet.inference.spec import weights_identity  # noqa: E402
from dabnet.io.images import read_image  # noqa: E402
from dabnet.runtimes import predict_labels  # noqa: E402
from dabnet.util.hardware import cpu_flags  # noqa: E402


def profile(runner, x: np.ndarray, frames: int, warmup: int = 10, image_input=None):
    """(rows of (node type, kernel, ms per frame, count), wall ms per frame) of an OpenVINO runner's labels graph
    (taking uint8 frames normalised inside when `image_input` is (mean, std)); with `host_upsample`, the labels
    made from the graph's low-resolution logits are a row of their own and part of the wall time."""
    request = runner.compiled("labels", image_input, PERF_COUNT=True).create_infer_request()
    for _ in range(warmup):
        request.infer([x])
    per_node = defaultdict(list)
    walls = []
    for _ in range(frames):
        t0 = time.perf_counter()
        request.infer([x])
        t1 = time.perf_counter()
        runner.labels_of(runner.outputs(request))
        walls.append((time.perf_counter() - t0) * 1000)
        if runner.host_upsample:
            per_node[("host", "upsampled_argmax", "NumPy (host)")].append((walls[-1] - (t1 - t0) * 1000))
        for info in request.profiling_info:
            if info.status.name == "EXECUTED":
                per_node[(info.node_name, info.node_type, info.exec_type)].append(info.real_time.total_seconds() * 1000)
    by_kind = defaultdict(lambda: [0.0, 0])
    for (_, node_type, exec_type), times in per_node.items():
        by_kind[(node_type, exec_type)][0] += statistics.median(times)
        by_kind[(node_type, exec_type)][1] += 1
    rows = sorted(((t, k, ms, n) for (t, k), (ms, n) in by_kind.items()), key=lambda r: -r[2])
    return rows, statistics.median(walls)


def table(rows, wall: float, top: int) -> str:
    total = sum(r[2] for r in rows)
    lines = [f"Wall time per frame (median): **{wall:.2f} ms**; sum of the node counters: {total:.2f} ms.", "",
             "| node type | kernel | nodes | ms per frame | share of the counters |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for node_type, kernel, ms, n in rows[:top]:
        lines.append(f"| {node_type} | {kernel} | {n} | {ms:.3f} | {100 * ms / total:.1f}% |")
    rest = rows[top:]
    if rest:
        lines.append(f"| ({len(rest)} other kinds) | | {sum(r[3] for r in rest)} | {sum(r[2] for r in rest):.3f} | "
                     f"{100 * sum(r[2] for r in rest) / total:.1f}% |")  # fmt: skip
    return "\n".join(lines)


def interleaved(paths: dict, images, frames: int) -> str:
    """Each of `paths` (name -> frame -> label map) on the same frames, call by call in turn, medians against the
    first; and how often each one's labels agree with the first's."""
    times = {k: [] for k in paths}
    same = {k: 0 for k in paths}
    total = 0
    for i in range(frames + 10):
        image = images[i % len(images)]
        out = {}
        for k, run in paths.items():
            t0 = time.perf_counter()
            out[k] = run(image)
            if i >= 10:
                times[k].append((time.perf_counter() - t0) * 1000)
        if i < len(images):
            first = next(iter(out.values()))
            total += first.size
            for k, labels in out.items():
                same[k] += int((labels == first).sum())
    new = statistics.median(times[next(iter(paths))])
    lines = ["| frame to label map | ms (median) | FPS | time vs the first | labels as the first's |", "|---|---:|---:|---:|---:|"]
    for k, ts in times.items():
        ms = statistics.median(ts)
        lines.append(f"| {k} | {ms:.2f} | {1000 / ms:.1f} | {ms / new:.2f}x | {100 * same[k] / max(total, 1):.3f}% |")
    return "\n".join(lines) + f"\n\nLabel agreement over the {min(len(images), frames + 10)} distinct frames."


def predict_against_float_path(seg: Segmenter, images, frames: int) -> str:
    """`Segmenter.predict` on uint8 frames against the float path it replaced (normalised in PyTorch, then the
    float-input labels graph), interleaved call by call."""
    return interleaved({"Segmenter.predict (uint8 frame into the graph)": lambda f: seg.predict(f),
                        "before: normalised in PyTorch, float graph": lambda f: predict_labels(seg.run, seg.preprocess([f]))[0].numpy()},
                       images, frames)  # fmt: skip


def predict_against_graph_upsample(seg: Segmenter, images, frames: int) -> str:
    """`Segmenter.predict` with the labels made from the low-resolution logits on the host against the graph's own
    x8 upsample + arg-max (what it ran before), interleaved call by call."""

    def graph_path(frame):
        seg.run.host_upsample = False
        try:
            return seg.predict(frame)
        finally:
            seg.run.host_upsample = True

    return interleaved({"Segmenter.predict (labels from the 1/8 logits, upsampled_argmax)": lambda f: seg.predict(f),
                        "before: upsample + arg-max inside the graph": graph_path}, images, frames)  # fmt: skip


def compare_presets(seg: Segmenter, x: np.ndarray, presets, frames: int) -> str:
    """NNCF presets side by side: label agreement with fp32 on the calibration frames, the labels graph's
    wall time (interleaved frame by frame, medians) and the time its zero-point nodes take."""
    from dabnet.runtimes import calibration_batches
    from dabnet.runtimes.openvino import openvino_runner

    model = seg.spec.build()
    calibration = calibration_batches(seg.mean, seg.std)
    runners = {p: openvino_runner(model, "int8", calibration, preset=p) for p in presets}
    xt = torch.from_numpy(x)
    times = {p: [] for p in presets}
    for i in range(frames + 10):
        for p, r in runners.items():
            t0 = time.perf_counter()
            r.labels(xt)
            if i >= 10:
                times[p].append((time.perf_counter() - t0) * 1000)
    base = statistics.median(times[presets[0]])
    lines = ["| NNCF preset | label agreement with fp32 (calibration pixels) | labels ms (median, interleaved) | vs "
             f"{presets[0]} | Subtract + PowerStatic ms (counters) |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for p, r in runners.items():
        rows, _ = profile(r, x, 20)
        zero_points = sum(ms for t, _, ms, _ in rows if t in ("Subtract", "PowerStatic"))
        ms = statistics.median(times[p])
        lines.append(f"| {p} | {100 * r.info['agreement']:.2f}% | {ms:.2f} | {base / ms:.2f}x | {zero_points:.2f} |")
    return "\n".join(lines)


def sample_images(size) -> list:
    """The bundled demo frames (CamVid), resized to `size` (H, W) where they differ."""
    from PIL import Image

    from dabnet.commands.demo import sample_frames

    images = [read_image(p) for p in sample_frames()]
    return [im if im.shape[:2] == tuple(size) else np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.BILINEAR)) for im in images]


def profile_report(seg: Segmenter, size, frames: int, top: int = 15, presets=()) -> str:
    """The per-node tables of the uint8-input and the float-input labels graphs, Segmenter.predict against the
    float path, and (with `presets`) NNCF presets side by side, as markdown sections (## headings)."""
    images = sample_images(size)
    frame = images[0]
    rows, wall = profile(seg.run, np.ascontiguousarray(frame.transpose(2, 0, 1)[None]), frames, image_input=(seg.mean, seg.std))
    x = np.ascontiguousarray(seg.preprocess([frame]).numpy())
    float_rows, float_wall = profile(seg.run, x, frames)
    text = (f"Backend `{seg.backend}` ({seg.backend_reason}), batch 1, {size[0]}x{size[1]}, labels graph (network + arg-max; the host's upsampled_argmax where the graph stops at the low-resolution logits).\n\n"
            "## uint8 frames in (conversion and normalisation inside the graph: what Segmenter.predict runs)\n\n"
            + table(rows, wall, top) + "\n\n## normalised float in (the graph predict ran before; eval and bench's inference protocol)\n\n"
            + table(float_rows, float_wall, top) + "\n\n## Segmenter.predict against the float path, interleaved\n\n"
            + predict_against_float_path(seg, images, frames) + "\n")  # fmt: skip
    if seg.run.host_upsample:
        text += ("\n## Labels from the low-resolution logits against the graph's own upsample + arg-max, interleaved\n\n"
                 "The graph stops at the 1/8 logits; `dabnet.runtimes.upsample.upsampled_argmax` gives each pixel the label its "
                 "cells share and interpolates (fp32) only where they differ. The graph's own path upsamples all the "
                 "logits (in bf16 on this plugin's int8 graph) before its arg-max.\n\n"
                 + predict_against_graph_upsample(seg, images, frames) + "\n")  # fmt: skip
    if presets:
        text += ("\n## NNCF presets\n\n`auto` keeps int8 only above 98.5% agreement (`runtimes.MIN_INT8_AGREEMENT`); "
                 "the performance preset makes activations symmetric. The Subtract nodes are not activation zero points: they are the standalone BatchNorms (after each concatenation and at each DAB module's input; OpenVINO names them BatchNormInference), which stay either way.\n\n"
                 + compare_presets(seg, x, list(presets), frames) + "\n")  # fmt: skip
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="dabnet-camvid")
    ap.add_argument("--size", type=parse_size, default=(360, 480))
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--presets", nargs="*", default=[], help="also compare these NNCF presets (e.g. mixed performance)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table as markdown")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seg = Segmenter.from_checkpoint(args.checkpoint, backend="auto", log=None)
    if not hasattr(seg.run, "ov_model"):
        sys.exit(f"auto runs {seg.backend} here, not OpenVINO: nothing to profile")
    cpu = cpu_flags()
    head = (f"# OpenVINO per-node profile of the default graph\n\nGenerated by `python benchmarks/ov_profile.py --size "
            f"{args.size[0]}x{args.size[1]} --frames {args.frames}{' --presets ' + ' '.join(args.presets) if args.presets else ''}` on **{cpu['model']}** (flags: {' '.join(cpu['flags'])}), "
            f"{torch.get_num_threads()} threads. Weights: {weights_identity(args.checkpoint)}.\n")  # fmt: skip
    text = head + "\n" + profile_report(seg, args.size, args.frames, args.top, args.presets)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
