"""The `dabnet` command line: builds each subcommand's options from its config dataclass
(`dabnet.config`: defaults, choices and help live there) and calls library functions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from . import config as C
from .util.options import one_line


def _field_kind(hint: Any) -> Tuple[Any, bool]:
    """(element type, is a list) of a field's annotation (Optional[...] unwrapped)."""
    if typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) in (list, List):
        return typing.get_args(hint)[0], True
    return hint, False


def _choice_list(choices: List[str]) -> Type[argparse.Action]:
    """An argparse action for a list option whose values may also come comma-separated, each one checked."""

    class ChoiceList(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None) -> None:
            items = [v for value in values for v in str(value).split(",") if v]
            bad = [v for v in items if v not in choices]
            if bad or not items:
                raise argparse.ArgumentError(self, f"invalid choice: {(bad or [','.join(values)])[0]!r} (choose from {', '.join(choices)})")
            setattr(namespace, self.dest, items)

    return ChoiceList


def add_options(parser: argparse.ArgumentParser, cls: Type) -> None:
    """One argparse option (or positional) per field of `cls`, with the field's default, choices and help."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        if meta.get("hidden"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind, is_list = _field_kind(hints[f.name])
        help, choices = meta.get("help", ""), meta.get("choices")
        kw: Dict[str, Any] = {"help": help() if callable(help) else help}
        if choices is not None:
            kw["choices"] = choices() if callable(choices) else choices
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if kind is bool:
            kw["action"] = "store_true" if meta.get("flag_only") else argparse.BooleanOptionalAction
        elif meta.get("action"):
            kw["action"] = meta["action"]
        else:
            kw["type"] = meta.get("type", kind if kind in (int, float, str) else str)
            if is_list:
                kw["nargs"] = meta.get("nargs", "+")
                if "choices" in kw:  # `--save label color` or `--save label,color`
                    kw["metavar"] = kw.get("metavar") or "{" + ",".join(kw["choices"]) + "}"
                    kw["action"] = _choice_list(list(kw.pop("choices")))
        if meta.get("positional"):
            parser.add_argument(f.name, default=default, **kw)
            continue
        if meta.get("required"):
            kw["required"] = True
        else:
            kw["default"] = default
        parser.add_argument(meta.get("flag", "--" + f.name.replace("_", "-")), dest=f.name, **kw)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' where there is a value to show and the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if action.required or action.default in (None, [], False, argparse.SUPPRESS) or "default" in help:
            return help
        return super()._get_help_string(action)


def config_from(cls: Type, args: argparse.Namespace) -> Any:
    """The dataclass `cls` filled from parsed arguments (hidden fields keep their defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


# ----------------------------------------------------------------------------- commands


def _models(cfg: C.ModelsConfig) -> int:
    from .commands.bench import format_models_table, models_table

    rows = models_table(cfg.names or None, cfg.num_classes, cfg.size)
    print(json.dumps(rows, indent=2) if cfg.json else format_models_table(rows, cfg.size))
    return 0


def _runtimes(cfg: C.RuntimesConfig) -> int:
    from .runtimes import runtimes_table

    rows = runtimes_table()
    if cfg.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'backend':<12} {'precisions':<16} {'devices':<9} {'runs files':<11} {'exports':<12} summary")
    for r in rows:
        print(f"{r['backend']:<12} {','.join(r['precisions']):<16} {','.join(r['devices']):<9} {','.join(r['runs_files']) or '-':<11} "
              f"{r['export_format'] or '-':<12} {r['summary']}")  # fmt: skip
    return 0


def _describe(cfg: C.DescribeConfig) -> int:
    from .inference.spec import describe

    info = describe(cfg.checkpoint).summary()
    if cfg.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['source']}: {info['format']}, network {info['network']}, {info['num_classes']} classes"
          + (f", run by {info['runtime']}" if info["runtime"] else ""))  # fmt: skip
    print("classes: " + ", ".join(info["class_names"]))
    print(f"input: 0-255 RGB, mean {info['mean']}, std {info['std']}")
    if info["note"]:
        print(f"note: {info['note']}")
    for key, value in info["card"].items():  # the model card's key figures, from the file's own metadata
        print(f"{key}: {value}")
    return 0


def _demo(cfg: C.DemoConfig) -> int:
    from .commands.demo import run_demo

    run_demo(cfg)
    return 0


def _train(cmd: C.TrainCommand) -> int:
    from .commands.train import run_train

    return run_train(cmd)


def _average(cfg: C.AverageConfig) -> int:
    from .io.checkpoint import average_checkpoints, save_checkpoint
    from .util.files import check_output_file

    check_output_file(cfg.out, "--out", cfg.checkpoints)
    ckpt = average_checkpoints(cfg.checkpoints)
    epochs = ", ".join(str(c["epoch"]) for c in ckpt["averaged_from"])
    save_checkpoint(ckpt, cfg.out)
    print(f"averaged {len(cfg.checkpoints)} checkpoints (epochs {epochs}) -> {cfg.out}; "
          f"measure it with: dabnet eval --checkpoint {cfg.out}")  # fmt: skip
    return 0


def _eval(cfg: C.EvalConfig) -> int:
    from .commands.evaluate import run_evaluation

    run_evaluation(cfg)
    return 0


def _predict(cfg: C.PredictConfig) -> int:
    from .commands.predict import run_predict

    return run_predict(cfg)


def _export(cfg: C.ExportConfig) -> int:
    from .commands.export import check_summary, run_export

    res = run_export(cfg.checkpoint, cfg.format, cfg.out)
    print(f"exported {res['path']} ({res['format']}); checked against PyTorch at {res['checked_sizes']}: {check_summary(res)}")
    return 0


def _bench(cfg: C.BenchConfig) -> int:
    from .commands.bench import run_bench

    run_bench(cfg)
    return 0


def _serve(cfg: C.ServeConfig) -> int:
    from .commands.serve import serve

    serve(cfg)
    return 0


def _data_check(cfg: C.DataCheckConfig) -> int:
    from .data.check import check_dataset, format_report, is_clean

    reports = check_dataset(cfg.dataset, cfg.root, cfg.splits or None, progress=not cfg.quiet)
    print(format_report(reports))
    clean = is_clean(reports)
    print("dataset is clean" if clean else "dataset has problems (see PROBLEM lines above)")
    return 0 if clean else 1


def _data_stats(cfg: C.DataStatsConfig) -> int:
    from .data.stats import stats_report

    print(stats_report(cfg.dataset, cfg.root, cfg.split, cfg.enet_c, cfg.json))
    return 0


def _data_pack(cfg: C.DataPackConfig) -> int:
    from .data.pack import pack_camvid

    res = pack_camvid(cfg.root, cfg.out, cfg.splits, cfg.quality)
    print(f"packed {res['images']} into {res['out']} ({res['mb']} MB)")
    return 0


def _data_import(cfg: C.DataImportConfig) -> int:
    from .data.check import check_dataset, format_report, is_clean
    from .data.importers import finetune_command, import_annotations

    res = import_annotations(cfg.format, cfg.source, cfg.images, cfg.out, cfg.val_fraction, cfg.classes, cfg.overwrite)
    print(f"imported {res['images']} image(s), {len(res['classes'])} classes ({', '.join(res['classes'])}) -> {res['yaml']}")
    reports = check_dataset("folder", res["yaml"], progress=False)  # what training will read, checked now
    print(format_report(reports))
    clean = is_clean(reports)
    batch = C.build_config(C.TrainConfig, "finetune").batch_size
    print(f"dataset is clean; train on it with: {finetune_command(res, cfg.out, batch)}" if clean else "dataset has problems (see PROBLEM lines above)")
    return 0 if clean else 1


COMMANDS: Dict[str, Tuple[Type, Callable[[Any], int]]] = {
    "models": (C.ModelsConfig, _models),
    "describe": (C.DescribeConfig, _describe),
    "runtimes": (C.RuntimesConfig, _runtimes),
    "demo": (C.DemoConfig, _demo),
    "train": (C.TrainCommand, _train),
    "eval": (C.EvalConfig, _eval),
    "average": (C.AverageConfig, _average),
    "predict": (C.PredictConfig, _predict),
    "export": (C.ExportConfig, _export),
    "bench": (C.BenchConfig, _bench),
    "serve": (C.ServeConfig, _serve),
}
DATA_COMMANDS: Dict[str, Tuple[Type, Callable[[Any], int]]] = {
    "check": (C.DataCheckConfig, _data_check),
    "stats": (C.DataStatsConfig, _data_stats),
    "pack": (C.DataPackConfig, _data_pack),
    "import": (C.DataImportConfig, _data_import),
}


def _add_commands(sub, commands: Dict[str, Tuple[Type, Callable[[Any], int]]]) -> None:
    for name, (cls, fn) in commands.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=doc, formatter_class=_HelpFormatter)
        add_options(p, cls)
        p.set_defaults(func=fn, config_cls=cls)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `dabnet` subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="dabnet", description="Real-time semantic segmentation with DABNet.")
    parser.add_argument("--version", action="version", version=f"dabnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_commands(sub, COMMANDS)
    data = sub.add_parser("data", help="inspect, summarise or pack a dataset")
    _add_commands(data.add_subparsers(dest="data_command", required=True), DATA_COMMANDS)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `dabnet` console script."""
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from(args.config_cls, args)
        C.check_io(cfg)
        return int(args.func(cfg) or 0)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        # Expected user errors (bad names, paths, checkpoints, a missing extra) read best without a traceback.
        print(f"dabnet {args.command}: error: {one_line(user_message(e), 2000)}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder, a full disk: which file, and what to do
        from .util.files import os_error_message

        print(f"dabnet {args.command}: error: {one_line(os_error_message(e), 2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs are written atomically: nothing half-written is left behind
        print(f"dabnet {args.command}: interrupted", file=sys.stderr)
        return 130


def user_message(e: BaseException) -> str:
    """The error's own message; for one re-raised from a DataLoader worker, only the original message
    (PyTorch wraps it in 'Caught X in DataLoader worker process N' and the worker's traceback)."""
    text = str(e)
    if "in DataLoader worker process" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        return last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last
    return text


if __name__ == "__main__":
    sys.exit(main())
