"""The checks and declarations every command's options share: what a file option does with its file (`check_io`),
the rules no single declaration states (`require`, `check_device`, the network's own arguments), and the ranges
used by several commands (an image side, an inference scale, test-time scales). Each field's own type, choices and
range are declared beside it, in its command's module, and checked by `dabnet.util.options` when a config is made."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..util.options import ConfigError, one_line, shown


def _input_paths(value: Any) -> List[Path]:
    """The paths an input option names: files, folders, glob matches, bundled weights' files."""
    import glob

    from ..io.checkpoint import resolve_checkpoint

    paths = []
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if not isinstance(item, str) or not item:
            continue
        if Path(item).exists():
            paths.append(Path(item))
        elif any(c in item for c in "*?["):
            paths += [Path(p) for p in glob.glob(item)]
        else:
            try:
                paths.append(resolve_checkpoint(item))  # a bundled name; anything else names no file
            except FileNotFoundError:
                pass
    return [p for p in paths if p.exists()]


# What a dataset or a folder of images holds: an output file of these kinds inside an input folder is refused.
_READ_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".yaml", ".yml")


# What an option that names a file or folder does with it (every option that can hold a string declares one;
# tests/test_cli.py holds every command to that): "in" (a file or folder the command reads), "out" (a file it writes),
# "out_dir" (a folder it fills), "own_dir" (a folder of the command's own files: it writes only files it names there
# and keeps the rest, as predict's manifest and train's run folder do, so it may sit beside or hold its inputs), or
# "not_a_path" (a name, choice, address or value).
IO_ROLES = ("in", "out", "out_dir", "own_dir", "not_a_path")


def check_io(cfg: Any) -> None:
    """No output of a command lands on what it reads: an output file is never one of its input files, nor an
    existing image, mask or dataset file inside an input folder; an output folder and an input never hold one another. Every
    command's output options go through here (their fields say io="out" or "out_dir"), before any work."""
    from ..util.files import OutputError

    inputs: List[Tuple[str, Path]] = []
    outputs: List[Tuple[str, Path, str]] = []
    for f in dataclasses.fields(cfg):
        io, value = f.metadata.get("io"), getattr(cfg, f.name)
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        if io == "in":
            inputs += [(flag, p.resolve()) for p in _input_paths(value)]
        elif io in ("out", "out_dir") and value:
            outputs.append((flag, Path(value).resolve(), io))
    for flag, out, io in outputs:
        for what, p in inputs:
            if io == "out" and out.exists() and out.is_file() and (p == out or (p.is_file() and os.path.samefile(p, out))):
                raise OutputError(f"{flag} {out} is also read by this command ({what}): it would be overwritten; choose another {flag}")
            if io == "out" and out.exists() and p.is_dir() and p in out.parents and out.suffix.lower() in _READ_SUFFIXES:
                raise OutputError(f"{flag} {out} is a file inside {p} ({what}), which this command reads: it would be "
                                  f"overwritten; choose another {flag}")  # fmt: skip
            if io == "out_dir" and (p == out or out in p.parents or (p.is_dir() and p in out.parents)):
                raise OutputError(f"{flag} {out} and {p} ({what}), which this command reads, hold one another: its "
                                  f"outputs could overwrite or mix with what it reads; choose a folder apart for {flag}")  # fmt: skip


def parse_size(text: str) -> Tuple[int, int]:
    """'512x1024' -> (512, 1024): height x width."""
    import argparse

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH (e.g. 512x1024), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


DEVICE_HELP = "auto (the GPU when there is one and the backend runs there, else the CPU), cpu, cuda or cuda:N"


def list_model_names() -> List[str]:
    """The registered networks (called when a parser or a check needs them: registries grow at run time)."""
    from ..models import list_models

    return list_models()


def require(ok: bool, option: str, value: Any, valid: str) -> None:
    """A ConfigError naming the option, the value given (cut to 80 characters) and what is valid, unless `ok`."""
    if not ok:
        raise ConfigError(f"{option}={shown(value)} is not valid: {valid}")


def check_device(device: str) -> None:
    """auto, cpu, cuda or cuda:N, and CUDA only where this PyTorch build and machine have it."""
    import torch

    ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    require(ok, "device", device, "auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
        raise ConfigError(f"device={device!r} is not available: this PyTorch ({torch.__version__}) is {build}; use device=cpu")


# Submodules a network built from model_kwargs may have: ten times the largest registered one; building more only to
# check them takes minutes (block_1: 1000000000 never ends), and no such network is meant.
MAX_MODULES = 5_000


class _TooLarge(Exception):
    pass


def check_model_kwargs(model: str, kwargs: Dict[str, Any]) -> None:
    """The network builds with these arguments (on the meta device: no memory), with at most MAX_MODULES submodules."""
    import threading

    import torch
    from torch.nn.modules.module import register_module_module_registration_hook

    from ..models import create_model

    me, count = threading.get_ident(), [0]

    def counted(module: Any, name: str, submodule: Any) -> None:
        if threading.get_ident() == me:
            count[0] += 1
            if count[0] > MAX_MODULES:
                raise _TooLarge

    hook = register_module_module_registration_hook(counted)
    try:
        with torch.device("meta"):
            create_model(model, 2, **kwargs)
    except _TooLarge:
        raise ConfigError(f"model_kwargs={shown(kwargs)} is not valid for {model}: the network would have more than "
                          f"{MAX_MODULES:,} modules; the registered ones have a few hundred") from None  # fmt: skip
    except (TypeError, ValueError, KeyError, IndexError, AssertionError, OverflowError, RuntimeError) as e:
        raise ConfigError(f"model_kwargs={shown(kwargs)} is not valid for {model}: {one_line(e)}") from None
    finally:
        hook.remove()


def path_is(test: str, path: str) -> bool:
    """Path(path).is_dir() or .is_file() or .exists(), False for a name no file can have (too long, a NUL byte)."""
    try:
        return getattr(Path(path), test)()
    except (OSError, ValueError):
        return False


def nonempty(option: str, valid: str) -> Any:
    """A `check` refusing empty strings (in a list too): a name or path that is empty names nothing."""

    def check(value: Any) -> None:
        require(all(v for v in (value if isinstance(value, list) else [value])), option, value, valid)

    return check


def host_names(names: List[str]) -> None:
    """Each of serve's allowed hosts is a host name (example.org) or *."""
    for name in names:
        require(0 < len(name) <= 253 and not any(c in name for c in "/ @\t\n"), "allowed_hosts", name, "host names (example.org) or *")


def one_of(option: str, choices: Sequence[str]) -> Any:
    """A `check` holding each item of a list to `choices` (where the parser takes the list as it is)."""

    def check(value: Any) -> None:
        for item in value:
            require(item in choices, option, item, "one of " + ", ".join(choices))

    return check


# Ranges that several commands declare (each option's own range is declared beside it).
SCALE = dict(range="[0.1, 4]", valid="a factor in [0.1, 4] (1: images as they are; e.g. 1.5)")  # an inference resize
SCALES = dict(range="(0, 8]", length=(1, 16))  # test-time or teacher scales: each one a forward pass at scale^2 the pixels
SIDE = "[1, 16384]"  # an image side, in pixels
NOT_A_PATH = dict(io="not_a_path")
