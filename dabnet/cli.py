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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `dabnet` subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="dabnet", description="Real-time semantic segmentation with DABNet.")
    parser.add_argument("--version", action="version", version=f"dabnet {__version__}")
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
