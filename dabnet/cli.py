"""The `dabnet` command line: builds each subcommand's options from its config dataclass (`dabnet.config`:
defaults, choices, ranges and help live there) and dispatches to its function in `dabnet.commands`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import shutil
import sys
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from . import config as C
from .util.options import one_line, options_help


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


def _command(target: str) -> Callable[[Any], int]:
    """The function `module:name` of dabnet.commands, imported when its command runs (so that `dabnet models` never
    imports the server). A command returns its exit status; a library function that returns its result instead (a
    dict of metrics) has succeeded when it returns: 0."""
    module, name = target.split(":")

    def run(cfg: Any) -> int:
        status = getattr(importlib.import_module(f"{__package__}.commands.{module}"), name)(cfg)
        return status if isinstance(status, int) and not isinstance(status, bool) else 0

    run.__name__ = run.__qualname__ = name
    run.target = target  # type: ignore[attr-defined]
    run.__doc__ = f"dabnet.commands.{module}.{name}, imported when run."
    return run


COMMANDS: Dict[str, Tuple[Type, Callable[[Any], int]]] = {
    "models": (C.ModelsConfig, _command("info:models_command")),
    "describe": (C.DescribeConfig, _command("info:describe_command")),
    "runtimes": (C.RuntimesConfig, _command("info:runtimes_command")),
    "demo": (C.DemoConfig, _command("demo:run_demo")),
    "train": (C.TrainCommand, _command("train:run_train")),
    "eval": (C.EvalConfig, _command("evaluate:run_evaluation")),
    "average": (C.AverageConfig, _command("average:average_command")),
    "predict": (C.PredictConfig, _command("predict:run_predict")),
    "export": (C.ExportConfig, _command("export:export_command")),
    "bench": (C.BenchConfig, _command("bench:run_bench")),
    "serve": (C.ServeConfig, _command("serve:serve")),
}
DATA_COMMANDS: Dict[str, Tuple[Type, Callable[[Any], int]]] = {
    "check": (C.DataCheckConfig, _command("data:data_check_command")),
    "stats": (C.DataStatsConfig, _command("data:data_stats_command")),
    "pack": (C.DataPackConfig, _command("data:data_pack_command")),
    "import": (C.DataImportConfig, _command("data:data_import_command")),
}


SETTABLE_TITLE = "every option of the run, by group: set one with --set KEY=VALUE or in the --config YAML"


class _ListedOptionsFormatter(argparse.RawDescriptionHelpFormatter, _HelpFormatter):
    """_HelpFormatter that prints the epilog as it is: the options a command takes through --set, laid out already."""


def _add_commands(sub, commands: Dict[str, Tuple[Type, Callable[[Any], int]]]) -> None:
    for name, (cls, fn) in commands.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        settable = getattr(cls, "settable", None)  # (options class, groups) of the options --set takes
        if settable is None:
            p = sub.add_parser(name, help=doc, description=doc, formatter_class=_HelpFormatter)
        else:
            width = max(shutil.get_terminal_size().columns - 2, 60)  # as argparse wraps its own text
            p = sub.add_parser(name, help=doc, description=doc, formatter_class=_ListedOptionsFormatter,
                               epilog=options_help(*settable, width=width, title=SETTABLE_TITLE))  # fmt: skip
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
