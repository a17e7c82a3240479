"""What the benchmark scripts share: OpenVINO's per-node profile of a runner, `dabnet
predict`'s end-to-end throughput, and how a training recipe is written in a table. Scripts import it as a sibling
(`import benchlib`): a script's own folder is on the path when it runs, and pytest's `pythonpath` names it."""

from __future__ import annotations

import hashlib
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from dabnet.commands.predict import predict_images, predict_video
from dabnet.inference.segmenter import Segmenter
from dabnet.io.checkpoint import resolve_checkpoint
from dabnet.io.images import read_image
from dabnet.models import pretrained_config
from dabnet.runtimes import predict_labels


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
                 f"logits (in {seg.run.inference_precision}, this plugin's precision for the graph's float layers) before its arg-max.\n\n"
                 + predict_against_graph_upsample(seg, images, frames) + "\n")  # fmt: skip
    if presets:
        text += ("\n## NNCF presets\n\n`auto` keeps int8 only above 98.5% agreement (`runtimes.MIN_INT8_AGREEMENT`); "
                 "the performance preset makes activations symmetric. The Subtract nodes are not activation zero points: they are the standalone BatchNorms (after each concatenation and at each DAB module's input; OpenVINO names them BatchNormInference), which stay either way.\n\n"
                 + compare_presets(seg, x, list(presets), frames) + "\n")  # fmt: skip
    return text


def model_alone(seg: Segmenter, frames: List) -> float:
    t0 = time.perf_counter()
    for f in frames:
        seg.predict(f)
    return len(frames) / (time.perf_counter() - t0)


def stream_alone(seg: Segmenter, frames: List) -> float:
    t0 = time.perf_counter()
    for _ in seg.predict_stream(enumerate(frames)):
        pass
    return len(frames) / (time.perf_counter() - t0)


def encoding_costs(seg: Segmenter, frames: List, repeats: int) -> List[str]:
    """Per-frame CPU cost and size of each picture predict writes, in the ways it could be written (the colour
    mask as RGB or as a palette PNG, the overlay at several zlib levels), timed on the frames' own labels."""
    from dabnet.io.images import PNG_LEVEL, PNG_STRATEGY, encode_png
    from dabnet.io.visualize import colorize, colour_table, overlay

    labels = [seg.predict(f) for f in frames]
    lut = colour_table(seg.palette)
    blend = lambda i: overlay(frames[i], colorize(labels[i], seg.palette))  # noqa: E731
    ways = {
        "label map, grey PNG, zlib's default strategy": lambda i: encode_png(labels[i], strategy=-1),
        "label map, grey PNG, RLE": lambda i: encode_png(labels[i]),
        "colour mask, RGB PNG (colorize + encode)": lambda i: encode_png(colorize(labels[i], seg.palette)),
        "colour mask, palette PNG, zlib's default strategy": lambda i: encode_png(labels[i], palette=lut, strategy=-1),
        "colour mask, palette PNG, RLE": lambda i: encode_png(labels[i], palette=lut),
        **{f"overlay (blend + encode), zlib level {lvl}, default strategy": (lambda i, lvl=lvl: encode_png(blend(i), lvl, strategy=-1))
           for lvl in (1, 2, 3, 6)},
        f"overlay (blend + encode), zlib level {PNG_LEVEL}, RLE": lambda i: encode_png(blend(i)),
    }  # fmt: skip
    times: Dict[str, List[float]] = {k: [] for k in ways}
    for _ in range(repeats):
        for k, fn in ways.items():
            t0 = time.perf_counter()
            for i in range(len(frames)):
                fn(i)
            times[k].append((time.perf_counter() - t0) * 1000 / len(frames))
    lines = [f"| picture | ms per frame (median of {repeats}) | KB per frame |", "|---|---:|---:|"]
    for k, fn in ways.items():
        kb = sum(len(fn(i)) for i in range(min(5, len(frames)))) / min(5, len(frames)) / 1024
        lines.append(f"| {k} | {statistics.median(times[k]):.2f} | {kb:.1f} |")
    lines.append("")
    lines.append(f"predict writes the colour mask as a palette PNG and everything at zlib level {PNG_LEVEL} with strategy "
                 f"{'RLE' if PNG_STRATEGY == 3 else PNG_STRATEGY} (`image_io.PNG_LEVEL`, `PNG_STRATEGY`).")  # fmt: skip
    return lines


def end_to_end(seg: Segmenter, paths: List[Path], repeats: int, work: Path) -> List[str]:
    """The table of every path (images/s end to end, FPS of model time, share of Segmenter.predict's rate),
    interleaved over `repeats`, then what each output costs."""
    import cv2

    frames = [read_image(p) for p in paths]
    seg.predict(frames[0])  # warm-up
    clip = work / "clip.avi"
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    quiet = lambda *a, **k: None  # noqa: E731

    def timed(run, count: int) -> Callable[[], Tuple[float, float]]:
        def go() -> Tuple[float, float]:
            t0 = time.perf_counter()
            model_fps = run()
            return count / (time.perf_counter() - t0), model_fps

        return go

    def folder(workers: int, save) -> Callable[[], Tuple[float, float]]:
        return timed(lambda: predict_images(seg, paths, work / f"f{workers}{len(save)}", log=quiet, save=save, workers=workers)["fps"], len(paths))

    def video(workers: int) -> Callable[[], Tuple[float, float]]:
        return timed(lambda: predict_video(seg, clip, work / f"v{workers}", log=quiet, workers=workers)["fps"], len(frames))

    alone = "Segmenter.predict alone (decoded frames)"
    rows: Dict[str, Callable[[], Tuple[float, float]]] = {
        alone: lambda: (model_alone(seg, frames),) * 2,
        "Segmenter.predict_stream alone (decoded frames)": lambda: (stream_alone(seg, frames),) * 2,
        "predict folder, label+color+overlay, --workers 0": folder(0, ("label", "color", "overlay")),
        "predict folder, label+color+overlay, --workers 2": folder(2, ("label", "color", "overlay")),
        "predict folder, --save label, --workers 0": folder(0, ("label",)),
        "predict folder, --save label, --workers 2": folder(2, ("label",)),
        "predict video (overlay mp4), --workers 0": video(0),
        "predict video (overlay mp4), --workers 2": video(2),
    }
    results: Dict[str, List[Tuple[float, float]]] = {k: [] for k in rows}
    for _ in range(repeats):
        for name, fn in rows.items():
            results[name].append(fn())
    base = statistics.median(v for v, _ in results[alone])
    lines = [f"{len(paths)} frames of {w}x{h}, interleaved, medians of {repeats}; 'FPS of model time' is what predict's",
             "progress bar shows: frames over the time predict waits for the network (with throughput streams the network",
             "also runs while predict decodes and encodes, so this can exceed the network's own rate).", "",
             "| path | images/s end to end (median) | all | FPS of model time | vs Segmenter.predict |", "|---|---:|---|---:|---:|"]  # fmt: skip
    for name, vals in results.items():
        med = statistics.median(v for v, _ in vals)
        model = statistics.median(m for _, m in vals)
        lines.append(f"| {name} | {med:.1f} | {', '.join(f'{v:.1f}' for v, _ in vals)} | {model:.1f} | {100 * med / base:.0f}% |")
    lines += ["", "### What each output costs", "", "The CPU time the pictures take beside the network, one thread, on the same frames:", ""]
    return lines + encoding_costs(seg, frames[:30], repeats)


def weights_version(checkpoint: str) -> str:
    """'NAME vVERSION (sha256 PREFIX)' for bundled weights, else the file's name and digest prefix."""
    path = resolve_checkpoint(checkpoint)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    cfg = pretrained_config(checkpoint)
    name = f"{checkpoint} {cfg.version}" if cfg is not None and cfg.version else path.name
    return f"{name} (sha256 {digest})"


def write_section(path: Path, title: str, heading: str, body: List[str]) -> None:
    """Put this machine's section (`## heading`, then `body`) into the report at `path`, keeping the other machines'
    sections (CPUs differ: a bf16 or int8 win on one is a loss on another)."""
    sections = {}
    if path.exists():
        for chunk in path.read_text().split("\n## ")[1:]:
            head, _, text = chunk.partition("\n")
            sections[head.strip()] = text.strip("\n")
    sections[heading] = "\n".join(body).strip("\n")
    text = "\n\n".join([title, "One section per machine, each generated on it by the command it names."]
                       + [f"## {h}\n\n{b}" for h, b in sections.items()])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def describe_recipe(cfg: Dict[str, Any]) -> str:
    """The recipe in one cell: data, crop, batch, optimiser, loss and the switches beyond the official recipe."""
    held = f" without {'+'.join(cfg.get('holdout') or [])}" if cfg.get("holdout") else ""
    precision = cfg.get("precision", cfg.get("amp", "fp32"))
    parts = [f"{cfg['train_split']}{held}", "x".join(map(str, cfg["crop_size"])), f"batch {cfg['batch_size']}",
             f"{cfg['optimizer']} {cfg['lr']:g} wd {cfg['weight_decay']:g}", f"{cfg['loss']}, {cfg['class_weights']} c={cfg['enet_c']}"]  # fmt: skip
    if precision not in ("fp32", "none"):
        parts.append(f"{precision} autocast")
    return ", ".join(parts)
