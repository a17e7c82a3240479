"""The `dabnet` command line: parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Tuple


def parse_size(text: str) -> Tuple[int, int]:
    """'512x1024' -> (512, 1024): height x width."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH (e.g. 512x1024), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def _cmd_models(args: argparse.Namespace) -> int:
    from .benchmark import format_models_table, models_table

    rows = models_table(args.names or None, args.num_classes, args.size)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_models_table(rows, args.size))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(checkpoint=args.checkpoint, out=args.out, threads=args.threads))
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .data.check import check_dataset, format_report, is_clean

    reports = check_dataset(args.dataset, args.root, args.splits or None, progress=not args.quiet)
    print(format_report(reports))
    clean = is_clean(reports)
    print("dataset is clean" if clean else "dataset has problems (see PROBLEM lines above)")
    return 0 if clean else 1


def _cmd_data_pack(args: argparse.Namespace) -> int:
    from .data.pack import pack_camvid

    res = pack_camvid(args.root, args.out, args.splits, args.quality)
    print(f"packed {res['images']} into {res['out']} ({res['mb']} MB)")
    return 0


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from .data.datasets import build_dataset
    from .data.stats import class_weights, compute_stats

    ds = build_dataset(args.dataset, args.root, args.split)
    stats = compute_stats(ds, progress=True)
    enet = class_weights(stats, "enet", args.enet_c)
    median = class_weights(stats, "median")
    if args.json:
        print(json.dumps({"dataset": ds.name, "images": stats.images, "mean": stats.mean, "std": stats.std,
                          "frequencies": dict(zip(ds.classes, stats.frequencies.tolist())),
                          "enet_weights": dict(zip(ds.classes, enet.tolist())), "enet_c": args.enet_c,
                          "median_frequency_weights": dict(zip(ds.classes, median.tolist()))}, indent=2))  # fmt: skip
        return 0
    print(f"{ds.name}: {stats.images} images; mean RGB {[round(v, 2) for v in stats.mean]}, std RGB {[round(v, 2) for v in stats.std]}")
    print(f"{'class':<16} {'pixels %':>9} {'ENet w (c=' + str(args.enet_c) + ')':>16} {'median-freq w':>14}")
    for name, p, w1, w2 in zip(ds.classes, stats.frequencies, enet, median):
        print(f"{name:<16} {100 * p:9.2f} {w1:16.3f} {w2:14.3f}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig, build_config
    from .train import train

    cfg = build_config(TrainConfig, args.config, args.set or [], out=args.out)
    summary = train(cfg, resume=args.resume, restart=args.restart)
    if "interrupted" in summary:
        import signal

        return 128 + int(getattr(signal, summary["interrupted"]))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .config import EvalConfig, build_config
    from .evaluate import run_evaluation

    cfg = build_config(
        EvalConfig, None, args.set or [], checkpoint=args.checkpoint, dataset=args.dataset, data_root=args.data_root,
        split=args.split, sequences=args.sequences, exclude_sequences=args.exclude_sequences, flip=args.flip or None, scales=args.scales, json=args.json, confusion_png=args.confusion_png,
        batch_size=args.batch_size, device=args.device,
    )  # fmt: skip
    run_evaluation(cfg)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .predict import Segmenter, expand_inputs, predict_images, predict_video

    images, videos, missing = expand_inputs(args.inputs)
    for item in missing:
        print(f"dabnet predict: nothing found at {item!r}", file=sys.stderr)
    if not images and not videos:
        print("dabnet predict: error: no input images or videos", file=sys.stderr)
        return 2
    seg = Segmenter.from_checkpoint(args.checkpoint, device=args.device, backend=args.backend, precision=args.precision,
                                    channels_last=args.channels_last)  # fmt: skip
    out = Path(args.out)
    failed = bool(missing)
    if images:
        failed |= bool(predict_images(seg, images, out, args.format, args.batch_size)["skipped"])
    for video in videos:
        predict_video(seg, video, out, args.max_frames)
    return 1 if failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import run_export

    res = run_export(args.checkpoint, args.format, args.out)
    print(f"exported {res['path']} ({res['format']}); checked against PyTorch at {res['checked_sizes']}: "
          f"max abs error {res['max_abs_error']:.2e} (< 1e-4)")  # fmt: skip
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import benchmark, plot_bench

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = benchmark(args.models, args.sizes, args.backends, args.precision, args.frames, args.warmup, args.device,
                     checkpoint=args.checkpoint, paper_protocol=not args.no_paper_protocol,
                     channels_last=args.channels_last)  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot_bench(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeConfig, serve

    serve(ServeConfig(checkpoint=args.checkpoint, backend=args.backend, host=args.host, port=args.port,
                      max_queue=args.max_queue, max_bytes=args.max_mb * 2**20, max_pixels=args.max_pixels,
                      timeout_s=args.timeout))  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `dabnet` subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="dabnet", description="Real-time semantic segmentation with DABNet.")
    parser.add_argument("--version", action="version", version=f"dabnet {__version__}")
    from .backends import BACKENDS, PRECISIONS

    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the registered networks with parameters and GMACs")
    p.add_argument("names", nargs="*", help="models to show (default: all)")
    p.add_argument("--size", type=parse_size, default=(512, 1024), help="input HxW for GMACs (default 512x1024)")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("demo", help="segment the bundled street frames and report the FPS")
    p.add_argument("--checkpoint", default=None, help="weights to use (default: the bundled ones)")
    p.add_argument("--out", default="dabnet-demo", help="output folder (default: ./dabnet-demo)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train a network (the paper's recipes ship as configs)")
    p.add_argument("--config", required=True, help="YAML path or shipped config name: camvid, camvid_paper, cityscapes, folder_example")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config option (repeatable)")
    p.add_argument("--out", default=None, help="run folder (default: the config's `out`)")
    p.add_argument("--resume", default=None, metavar="CKPT", help="resume from this checkpoint (default: OUT/last.pth when present)")
    p.add_argument("--restart", action="store_true", help="ignore OUT/last.pth and start from scratch")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="mIoU, per-class IoU and pixel accuracy of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", default="camvid", choices=["camvid", "cityscapes", "folder"])
    p.add_argument("--data-root", default="../shared/data/camvid")
    p.add_argument("--split", default="val")
    p.add_argument("--sequences", nargs="+", default=None, metavar="PREFIX",
                   help="only frames whose file names start with these (whole drives, e.g. 0006R0)")  # fmt: skip
    p.add_argument("--exclude-sequences", nargs="+", default=None, metavar="PREFIX", help="leave these sequences out")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped predictions")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="multi-scale testing, e.g. 0.75 1 1.25")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, metavar="FILE", help="write miou, per_class_iou, pixel_acc, images")
    p.add_argument("--confusion-png", default=None, metavar="FILE", help="draw the confusion matrix")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any eval option")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="segment images, folders, globs, videos or a webcam")
    p.add_argument("inputs", nargs="+", help="image files, folders, globs ('data/*.jpg'), videos, or a webcam index")
    p.add_argument("--checkpoint", default="dabnet-camvid", help="checkpoint, .onnx file or bundled name (default dabnet-camvid)")
    p.add_argument("--out", default="predictions")
    p.add_argument("--format", choices=["default", "cityscapes"], default="default",
                   help="cityscapes: labelId PNGs for the benchmark server instead of label/colour/overlay")  # fmt: skip
    p.add_argument("--backend", choices=BACKENDS, default="fold",
                   help="how to run the network (docs/SPEED.md compares them; int8 needs torchao)")  # fmt: skip
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16/fp16 autocast (fp16: CUDA only)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC tensors (default: on for CUDA, off for a CPU)")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-frames", type=int, default=0, help="stop videos/webcams after N frames (0: all)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export to ONNX (dynamic H, W) or TorchScript, checked against PyTorch")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="the paper's speed protocol (Table 5) on this machine")
    p.add_argument("--models", nargs="+", default=["dabnet", "enet", "espnet", "icnet", "segnet", "erfnet"])
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 512), (512, 1024), (1024, 2048)])
    p.add_argument("--backends", nargs="+", default=["eager"], choices=BACKENDS, metavar="BACKEND", help=" ".join(BACKENDS))
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="bf16/fp16 autocast (fp16: CUDA only)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC tensors (default: on for CUDA, off for a CPU)")  # fmt: skip
    p.add_argument("--frames", type=int, default=100, help="timed frames per measurement (the paper: 100)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--checkpoint", default=None, help="time these weights instead of fresh models")
    p.add_argument("--no-paper-protocol", action="store_true", help="skip the eager runs without no_grad")
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--plot", default=None, metavar="PNG", help="FPS against parameters")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("serve", help="HTTP API and web page for segmentation")
    p.add_argument("--checkpoint", default="dabnet-camvid")
    p.add_argument("--backend", choices=BACKENDS, default="fold")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-queue", type=int, default=16, help="waiting requests before 503")
    p.add_argument("--max-mb", type=int, default=20, help="request body limit in MiB (413 beyond)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="decoded image limit (413 beyond)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request before 504")
    p.set_defaults(func=_cmd_serve)

    data = sub.add_parser("data", help="inspect a dataset").add_subparsers(dest="data_command", required=True)
    datasets = ["camvid", "cityscapes", "folder"]
    p = data.add_parser("check", help="scan every image and mask; exit 0 only when the dataset is clean")
    p.add_argument("dataset", choices=datasets)
    p.add_argument("root", help="dataset root (for 'folder': the dataset YAML or its folder)")
    p.add_argument("--splits", nargs="*", help="splits to scan (default: train val test, or the YAML's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_data_check)
    p = data.add_parser("stats", help="channel mean/std, class frequencies and class weights of a split")
    p.add_argument("dataset", choices=datasets)
    p.add_argument("root")
    p.add_argument("--split", default="train", help="train, val, trainval (CamVid), test, or a YAML split")
    p.add_argument("--enet-c", type=float, default=1.02, help="c of the ENet weights 1/ln(c+p) (official code: 1.10)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_data_stats)
    p = data.add_parser("pack", help="compact CamVid copy (JPEG frames + PNG labels) to carry to a GPU machine")
    p.add_argument("root", help="CamVid root (SegNet layout)")
    p.add_argument("out", help="output folder, same layout (keep it git-ignored, e.g. data_packed/camvid)")
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (4:4:4 chroma)")
    p.set_defaults(func=_cmd_data_pack)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `dabnet` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Expected user errors (bad names, paths, checkpoints) read best without a traceback.
        print(f"dabnet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
