"""docs/PREDICT_SPEED.md: `dabnet predict` end to end on a folder and on a video, against the model alone.

    python benchmarks/predict_throughput.py --folder ../shared/data/camvid/val

The model alone is `Segmenter.predict` on the decoded frames (uint8 in, labels out), one frame after another,
and `Segmenter.predict_stream` (several frames in flight on OpenVINO's throughput streams: what predict runs
on a folder or a video file). End to end is the whole command on the folder (decode, network, encode, write; start-up left out by
timing inside the process), with and without the decode/encode threads, writing every output or the
label maps alone; the video rows segment the same frames as an MJPG clip into an overlay mp4. All rows run
in one process, interleaved, medians of `--repeats`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

from dabnet.commands.predict import predict_images, predict_video
from dabnet.inference.segmenter import Segmenter
from dabnet.inference.spec import weights_identity
from dabnet.io.images import read_image
from dabnet.util.hardware import describe_hardware

ROOT = Path(__file__).resolve().parents[1]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=ROOT.parent / "shared" / "data" / "camvid" / "val")
    ap.add_argument("--checkpoint", default="dabnet-camvid")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "PREDICT_SPEED.md")
    args = ap.parse_args()
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    seg = Segmenter.from_checkpoint(args.checkpoint, backend=args.backend)
    with tempfile.TemporaryDirectory(prefix="dabnet-predict-speed-") as work:
        table = end_to_end(seg, paths, args.repeats, Path(work))
    lines = ["# `dabnet predict` end to end", "",
             f"Generated by `python benchmarks/predict_throughput.py --folder {args.folder} --repeats {args.repeats}` on "
             f"{describe_hardware(torch.device('cpu'))}, torch {torch.__version__}, backend {seg.backend}. "
             f"Weights: {weights_identity(args.checkpoint)}.", ""] + table  # fmt: skip
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
