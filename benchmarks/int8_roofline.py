"""How close the default graph's int8 convolutions run to what this CPU's int8 units can do, and what that
bounds the frame rate to: the network's multiply-adds by kind of convolution (forward hooks), this CPU's
int8 rate on a convolution shaped for it (a stack of dense 3x3, 128 -> 128 channels, quantized by NNCF and
run by OpenVINO's CPU plugin as the default graph is), and the default graph's own convolution time
(OpenVINO's per-node counters, benchmarks/ov_profile.py).

    python benchmarks/int8_roofline.py --size 360x480 512x1024 --out docs/reports/INT8_ROOFLINE.md

The bound: the network's int8 multiply-adds at the best rate measured here, plus what the rest of the
graph takes today; against eager fp32 from the same frame, it bounds the speed-up too.
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
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

import benchlib  # noqa: E402

from dabnet.config import parse_size  # noqa: E402
from dabnet.inference.segmenter import Segmenter  # noqa: E402
from dabnet.inference.spec import weights_identity  # noqa: E402
from dabnet.util.hardware import cpu_flags  # noqa: E402

CONV_NODES = ("Convolution", "GroupConvolution")
SHAPES = ((64, 128), (128, 64), (256, 32))  # (channels, side) of the dense stacks: the best of them is the rate


def multiply_adds(model: nn.Module, size) -> list:
    """(kind, in channels, out channels, output size, multiply-adds) of each convolution of `model` at `size`."""
    rows = []

    def hook(conv, _inputs, out):
        k = conv.kernel_size[0] * conv.kernel_size[1]
        kind = "depth-wise" if conv.groups > 1 else ("1x1" if k == 1 else f"{conv.kernel_size[0]}x{conv.kernel_size[1]}")
        rows.append((kind, conv.in_channels, conv.out_channels, tuple(out.shape[2:]),
                     out.shape[2] * out.shape[3] * conv.out_channels * (conv.in_channels // conv.groups) * k))  # fmt: skip

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, *size))
    finally:
        for h in handles:
            h.remove()
    return rows


class DenseStack(nn.Module):
    """`depth` dense 3x3 convolutions, `channels` -> `channels`, each followed by a ReLU: the shape int8
    kernels run best (channels a multiple of 64), to find this CPU's int8 rate. Takes an RGB tensor (as the
    converter expects) and tiles its channels up to `channels`, a copy next to nothing beside the convolutions."""

    def __init__(self, channels: int = 128, depth: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(*[m for _ in range(depth) for m in (nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())])
        self.model_name, self.num_classes = "dense-stack", channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.body[0].in_channels
        return self.body(x.repeat(1, channels // 3 + 1, 1, 1)[:, :channels])


def int8_rate(channels: int = 128, depth: int = 8, side: int = 64, frames: int = 30) -> dict:
    """Multiply-adds per second of OpenVINO int8 on `DenseStack` (NNCF, the default graph's preset), batch 1."""
    from dabnet.runtimes.openvino import openvino_runner

    torch.manual_seed(0)
    model = DenseStack(channels, depth).eval()
    calibration = [torch.randn(1, 3, side, side) for _ in range(4)]
    runner = openvino_runner(model, "int8", calibration)
    request = runner.request("logits")
    x = calibration[0].numpy()
    for _ in range(5):
        request.infer([x])
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        request.infer([x])
        times.append(time.perf_counter() - t0)
    macs = depth * side * side * channels * channels * 9
    ms = statistics.median(times) * 1000
    return {"channels": channels, "side": side, "macs": macs, "ms": ms, "gmac_s": macs / ms / 1e6}


def graph_times(seg: Segmenter, size, frames: int) -> dict:
    """The default graph's convolution time and the rest, ms per frame (per-node counters, uint8 frames in), and
    eager fp32 (the official network in PyTorch) from the same frame to its label map, medians."""
    frame = benchlib.sample_images(size)[0]
    rows, wall = benchlib.profile(seg.run, np.ascontiguousarray(frame.transpose(2, 0, 1)[None]), frames, image_input=(seg.mean, seg.std))
    counted = sum(ms for *_, ms, _ in rows)
    # The counters are each node's own time. Where they add up to more than the wall time (nodes that overlap, as
    # on AMX CPUs), they are read as shares of it, so that the convolutions and the rest add up to the wall time on
    # every CPU; below it, the gap is the rest's.
    share = min(1.0, wall / counted) if counted > 0 else 1.0
    conv = defaultdict(float)
    for node_type, kernel, ms, _ in rows:
        if node_type in CONV_NODES:
            conv[kernel] += ms * share
    int8 = sum(ms for k, ms in conv.items() if is_int8_kernel(k))
    eager = Segmenter.for_model(seg.spec.build())
    eager.predict(frame)
    times = []
    for _ in range(max(3, frames // 5)):
        t0 = time.perf_counter()
        eager.predict(frame)
        times.append((time.perf_counter() - t0) * 1000)
    return {"wall": wall, "int8_conv": int8, "float_conv": sum(conv.values()) - int8, "rest": max(0.0, wall - sum(conv.values())),
            "kernels": dict(conv), "eager": statistics.median(times), "counters": counted}  # fmt: skip


def is_int8_kernel(kernel: str) -> bool:
    """Whether an OpenVINO kernel runs int8: the plugin ends its name with the precision it runs (jit_avx2_I8,
    brgconv_avx512_amx_I8; the float ones end in _f32 or _bf16, AMX's bf16 ones too)."""
    return kernel.endswith(("_I8", "_U8"))


def size_section(size, rows: list, rate: dict, graph: dict) -> str:
    """The network's multiply-adds at `size`, the default graph's times against `rate`, and the bound."""
    by_kind = defaultdict(int)
    for kind, *_, macs in rows:
        by_kind[kind] += macs
    total = sum(by_kind.values())
    float_macs = rows[0][-1] + rows[-1][-1]  # the first and last convolutions stay in float in the default graph
    int8_macs = total - float_macs
    achieved = int8_macs / graph["int8_conv"] / 1e6
    # The bound takes the faster of the two rates: the graph's own convolutions may beat the dense stacks.
    floor_conv = min(int8_macs / rate["gmac_s"] / 1e6, graph["int8_conv"])
    floor_frame = floor_conv + graph["float_conv"] + graph["rest"]
    int8_kernels = ", ".join(sorted(k for k in graph["kernels"] if is_int8_kernel(k)))
    counters = graph.get("counters", 0.0)
    overlap = ([f"The per-node counters add up to {counters:.2f} ms, more than the wall time: nodes overlap, so each "
                "counter is read as its share of the wall time.", ""] if counters > graph["wall"] else [])  # fmt: skip
    return "\n".join([
        f"## {size[0]}x{size[1]}", "",
        "| convolution | multiply-adds (M) | share |", "|---|---:|---:|",
        *[f"| {k} | {v / 1e6:.1f} | {100 * v / total:.1f}% |" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])],
        f"| all | {total / 1e6:.1f} | |", "",
        f"In int8 in the default graph: {int8_macs / 1e6:.1f} M (the first and the last convolution, {float_macs / 1e6:.1f} M, stay in float).", "",
        "| default graph (per-node counters, uint8 frames in) | ms per frame |", "|---|---:|",
        f"| int8 convolutions ({int8_kernels}) | {graph['int8_conv']:.2f} |",
        f"| float convolutions | {graph['float_conv']:.2f} |",
        f"| everything else (the wall time less the convolutions) | {graph['rest']:.2f} |",
        f"| wall time per frame | {graph['wall']:.2f} ({1000 / graph['wall']:.1f} FPS) |",
        f"| eager fp32, frame to label map (the official network in PyTorch) | {graph['eager']:.2f} ({graph['eager'] / graph['wall']:.2f}x the default graph's time) |", "",
        *overlap,
        f"The int8 convolutions run at {achieved:.0f} G multiply-adds/s, {100 * achieved / rate['gmac_s']:.0f}% of the best dense stack's rate.", "",
        f"- int8 convolutions at the dense stack's rate: {floor_conv:.2f} ms",
        f"- with today's float convolutions and the rest of the graph: **{floor_frame:.2f} ms per frame, "
        f"{1000 / floor_frame:.0f} FPS, {graph['eager'] / floor_frame:.1f}x eager fp32** at most on this CPU with this network.",
        f"- 100 FPS is 10 ms per frame: the int8 multiply-adds alone need {100 * floor_conv / 10:.0f}% of it here.", "",
    ])  # fmt: skip


def report(sections: list, rates: list, cpu: dict, command: str, weights: str = "") -> str:
    """The whole page: the CPU's int8 rate, then one section per (size, rows, graph) of `sections`."""
    rate = max(rates, key=lambda r: r["gmac_s"])
    head = [
        "# int8 roofline of the default CPU graph", "",
        f"Generated by `{command}` on **{cpu['model']}** (flags: {' '.join(cpu['flags'])}), {torch.get_num_threads()} threads, batch 1."
        + (f" Weights: {weights}." if weights else ""), "",
        "The bound: the network's int8 multiply-adds at the best rate this CPU reached on convolutions shaped for its "
        "int8 units, plus what the rest of the default graph takes today. A frame cannot take less here without a "
        "faster int8 unit (AMX) or a network with fewer multiply-adds.", "",
        "## This CPU's int8 rate", "",
        "Stacks of 8 dense 3x3 convolutions (NNCF int8, OpenVINO, LATENCY hint, medians); the best is the rate used below.", "",
        "| channels | size | multiply-adds (M) | ms | G multiply-adds/s |", "|---:|---:|---:|---:|---:|",
        *[f"| {r['channels']} -> {r['channels']} | {r['side']}x{r['side']} | {r['macs'] / 1e6:.0f} | {r['ms']:.2f} | {r['gmac_s']:.0f} |" for r in rates], "",
    ]  # fmt: skip
    return "\n".join(head) + "\n" + "\n".join(size_section(size, rows, rate, graph) for size, rows, graph in sections)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="dabnet-camvid")
    ap.add_argument("--size", type=parse_size, nargs="+", default=[(360, 480), (512, 1024)])
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    seg = Segmenter.from_checkpoint(args.checkpoint, backend="auto", log=None)
    if seg.run.backend != "openvino":
        sys.exit(f"auto runs {seg.backend} here, not OpenVINO: no int8 graph to bound")
    rates = [int8_rate(channels, side=side, frames=args.frames) for channels, side in SHAPES]
    sections = [(size, multiply_adds(seg.spec.build(), size), graph_times(seg, size, args.frames)) for size in args.size]
    command = f"python benchmarks/int8_roofline.py --size {' '.join(f'{h}x{w}' for h, w in args.size)} --frames {args.frames}"
    text = report(sections, rates, cpu_flags(), command, weights_identity(args.checkpoint))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
