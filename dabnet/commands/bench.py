"""Model complexity (parameters, MACs), `dabnet models`, and the speed benchmark behind `dabnet bench`."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import BenchConfig
from ..models import create_model, list_models, model_description
from ..runtimes import resolve_device
from ..util.files import atomic_output, check_output_file
from ..util.state import KEEP, scoped, setting


def count_params(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: Tuple[int, int] = (512, 1024), batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass, counted by `torch.utils.flop_counter` (FLOPs / 2)."""
    device = next(model.parameters()).device
    x = torch.empty(batch, 3, size[0], size[1], device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_complexity(name: str, num_classes: int = 19, size: Tuple[int, int] = (512, 1024)) -> Dict[str, object]:
    """Parameters and GMACs of a registered model, measured on the meta device (no compute)."""
    with torch.device("meta"):
        model = create_model(name, num_classes)
    return {
        "model": name,
        "params": count_params(model),
        "gmacs": count_macs(model, size) / 1e9,
        "description": model_description(name),
    }


def models_table(names: Optional[Sequence[str]] = None, num_classes: int = 19, size: Tuple[int, int] = (512, 1024)) -> List[Dict[str, object]]:
    """Complexity rows for `names` (default: every registered model)."""
    return [model_complexity(n, num_classes, size) for n in (names or list_models())]


def format_models_table(rows: List[Dict[str, object]], size: Tuple[int, int]) -> str:
    """A plain-text table of `models_table` rows."""
    head = f"{'model':<20} {'params':>12} {'GMACs@' + f'{size[0]}x{size[1]}':>16}  description"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<20} {r['params']:>12,} {r['gmacs']:>16.2f}  {r['description']}")
    return "\n".join(lines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(seconds: float = 2.0, n: int = 1024, device: str = "cpu") -> float:
    """Achieved fp32 matmul rate (GFLOP/s) on this machine: the ceiling that convolutions approach."""
    dev = torch.device(device)
    # A fixed size: on CUDA let cuDNN pick its fastest algorithms, for this measurement only.
    with setting(torch.backends.cudnn, "benchmark", True if dev.type == "cuda" else KEEP):
        a = torch.randn(n, n, device=dev)
        b = torch.randn(n, n, device=dev)
        torch.mm(a, b)
        best, t_end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            _sync(dev)
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(dev)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def _runner(model: nn.Module, label: str, precision: str, device: str, channels_last: Optional[bool], normalize):
    """((row backend, precision, protocol), runner) for a backend label: NAME, NAME+cl (channels_last)
    or NAME:PRECISION (e.g. openvino:int8); `auto` is what it picks here, through the same policy, int8
    agreement check and fallback as predict (runtimes.auto)."""
    from ..runtimes import AUTO, calibration_batches, get_runtime, prepare, prepare_auto

    label, _, prec = label.partition(":")
    prec = prec or precision
    b, cl = (label[:-3], True) if label.endswith("+cl") else (label, channels_last)
    calibration = lambda: calibration_batches(normalize.mean, normalize.std)  # noqa: E731  read only if it quantizes
    if b == AUTO:
        runner = prepare_auto(model, device, normalize, calibration)
        return (f"auto ({runner.backend})", runner.precision, "inference"), runner
    runner = prepare(model, b, prec, device, channels_last=cl, calibration=calibration)
    if cl and get_runtime(b).channels_last:
        label = f"{b}+cl"
    return (label, runner.precision, "inference"), runner


def _time_ms(run, x, dev: torch.device) -> float:
    """Milliseconds of one call: between CUDA events on a GPU (its own clock; the events are recorded
    once the queue is empty), wall clock around the call elsewhere."""
    _sync(dev)
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(x)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    run(x)
    return (time.perf_counter() - t0) * 1000


def benchmark(
    models: Sequence[str] = ("dabnet",),
    sizes: Sequence[Tuple[int, int]] = ((512, 1024),),
    backends: Sequence[str] = ("eager",),
    precision: str = "fp32",
    frames: int = 100,
    warmup: int = 10,
    device: str = "cpu",
    num_classes: int = 19,
    checkpoint: Optional[str] = None,
    paper_protocol: bool = True,
    channels_last: Optional[bool] = None,
    labels: bool = False,
    batch: int = 1,
    log=print,
) -> List[Dict[str, object]]:
    """Time each (model, size, backend) at `batch` (1: the paper's Table 5 protocol): warm-up, then
    `frames` timed forward passes; backends are interleaved frame by frame so that a noisy machine
    affects them alike. `paper_protocol` adds eager runs without no_grad (as the paper timed);
    `channels_last` is passed to `dabnet.runtimes.prepare` (rows then name the backend `NAME+cl`);
    a backend written `NAME+cl` runs channels_last on its own, beside the others, and `NAME:PRECISION`
    at its own precision (e.g. `openvino:int8`). `labels` also times each backend from RGB uint8 frames
    to the label map (protocol `labels`: normalisation, network and arg-max, as `Segmenter.predict` runs them;
    OpenVINO does all three inside its graph)
    FPS count images: `batch` * 1000 / median ms."""
    from ..inference.spec import describe
    from ..io.checkpoint import load_model
    from ..io.preprocessing import Normalize
    from ..runtimes import predict_image_labels

    dev = torch.device(device)
    rows: List[Dict[str, object]] = []
    for name in models:
        model = load_model(checkpoint) if checkpoint else create_model(name, num_classes)
        model = model.eval().to(dev)
        spec = describe(model)
        normalize = Normalize(spec.mean, spec.std, dev)
        params = count_params(model)
        runners = {}  # prepared once for all sizes: quantizing or converting per size would only repeat work
        for label in backends:
            try:
                key, runner = _runner(model, label, precision, device, channels_last, normalize)
                runners[key] = runner
                if labels:
                    runners[key[:2] + ("labels",)] = lambda images, r=runner: predict_image_labels(r, images, normalize)
            except Exception as e:  # e.g. max-unpooling nets cannot be traced for ONNX
                log(f"{model.model_name:<10} {label:<12} skipped: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
        if paper_protocol:
            runners[("eager", "fp32", "paper (autograd on)")] = lambda t, m=model: m(t)
        for size in sizes:
            x = torch.randn(batch, 3, size[0], size[1], device=dev)
            images = [np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8) for i in range(batch)]
            feed = {k: images if k[2] == "labels" else x for k in runners}
            macs = model_complexity(model.model_name, model.num_classes, size)["gmacs"] if not checkpoint else count_macs(model, size) / 1e9
            times: Dict[tuple, List[float]] = {k: [] for k in runners}
            for _ in range(warmup):
                for key, run in runners.items():
                    run(feed[key])
            for _ in range(frames):
                for key, run in runners.items():
                    times[key].append(_time_ms(run, feed[key], dev))
            for (b, prec, protocol), ts in times.items():
                med = statistics.median(ts)
                row = {"model": model.model_name, "size": f"{size[0]}x{size[1]}", "backend": b, "precision": prec,
                       "protocol": protocol, "ms_median": round(med, 3), "ms_mean": round(statistics.fmean(ts), 3),
                       "fps": round(batch * 1000 / med, 2), "batch": batch, "params": params, "gmacs": round(macs, 3),
                       "frames": frames, "device": str(dev)}  # fmt: skip
                rows.append(row)
                log(format_bench_row(row))
    return rows


def format_bench_row(r: Dict[str, object]) -> str:
    batch = f" x{r['batch']}" if r.get("batch", 1) != 1 else ""
    return (f"{r['model']:<10} {r['size'] + batch:>9} {r['backend']:<12} {r['precision']:<5} {r['protocol']:<20} "
            f"{r['ms_median']:>9.1f} ms {r['fps']:>8.1f} FPS {r['params']:>11,} {r['gmacs']:>8.2f} GMACs")  # fmt: skip


def plot_bench(rows: List[Dict[str, object]], path: str, miou: Optional[Dict[str, float]] = None,
               fmt: Optional[str] = None) -> None:  # fmt: skip
    """FPS against parameters (or against mIoU where given), one point per model, log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    for r in rows:
        if r["protocol"] != "inference":
            continue
        xv = 100 * miou[r["model"]] if miou and r["model"] in miou else r["params"] / 1e6
        ax.scatter(xv, r["fps"], s=30)
        ax.annotate(f"{r['model']} {r['backend']} {r['size']}", (xv, r["fps"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("mIoU (%)" if miou else "parameters (M)")
    if not miou:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("frames per second (batch 1)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, format=fmt)  # fmt: the format of the final name when `path` is a temp file
    plt.close(fig)


def run_bench(cfg: BenchConfig, log=print) -> List[Dict[str, object]]:
    """`dabnet bench`: time, then write the JSON and the plot when asked."""
    import json

    # matplotlib adds .png to a name without a suffix; say the name it writes, and check both before timing
    plot = None if not cfg.plot else cfg.plot if Path(cfg.plot).suffix else cfg.plot + ".png"
    for option, path in (("--json", cfg.json), ("--plot", plot)):
        if path:
            check_output_file(path, option)
    if cfg.scale != 1.0:
        log(f"scale {cfg.scale:g}: frames of " + ", ".join(f"{h}x{w}" for h, w in cfg.sizes) + " run the network at "
            + ", ".join(f"{h}x{w}" for h, w in cfg.network_sizes))  # fmt: skip
    devices = {resolve_device(cfg.device, b, cfg.checkpoint) for b in cfg.backends}
    device = next(iter(devices)) if len(devices) == 1 else "cpu"
    if len(devices) > 1:  # auto, with backends of which some run on the GPU and some do not
        log(f"device auto -> cpu: {', '.join(cfg.backends)} do not all run on the GPU; give --device to choose")
    with scoped(torch.get_num_threads, torch.set_num_threads, cfg.threads or KEEP):  # --threads: for this bench only
        rows = benchmark(cfg.models, cfg.network_sizes, cfg.backends, cfg.precision, cfg.frames, cfg.warmup, device,
                         checkpoint=cfg.checkpoint, paper_protocol=not cfg.no_paper_protocol,
                         channels_last=cfg.channels_last, labels=cfg.labels, batch=cfg.batch, log=log)  # fmt: skip
    frames = {f"{n[0]}x{n[1]}": f"{f[0]}x{f[1]}" for f, n in zip(cfg.sizes, cfg.network_sizes)}
    for row in rows:
        row.update(scale=cfg.scale, frame_size=frames.get(str(row["size"]), row["size"]))
    if cfg.json:
        with atomic_output(cfg.json, fsync=False) as tmp:
            tmp.write_text(json.dumps(rows, indent=2))
        log(f"wrote {cfg.json}")
    if plot:
        with atomic_output(plot, fsync=False) as tmp:
            plot_bench(rows, str(tmp), fmt=Path(plot).suffix.lstrip(".").lower())
        log(f"wrote {plot}")
    return rows
