"""The options of the commands that describe what is installed or given: `dabnet models`, `runtimes`, `describe`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from ..util.options import Options, option
from .validate import NOT_A_PATH, SIDE, parse_size


@dataclass
class ModelsConfig(Options):
    """List the registered networks with parameters and GMACs."""

    names: List[str] = option(help="models to show (default: all)", factory=list, positional=True, nargs="*", **NOT_A_PATH)
    size: Tuple[int, int] = option((512, 1024), "input HxW for GMACs", type=parse_size, range=SIDE)
    num_classes: int = option(19, "classes of the networks counted", range="[1, 65535]")
    json: bool = option(False, "print JSON instead of a table", flag_only=True)


@dataclass
class RuntimesConfig(Options):
    """List the registered runtimes (--backend): precisions, devices, files they run, export formats."""

    json: bool = option(False, "print JSON instead of a table", flag_only=True)


@dataclass
class DescribeConfig(Options):
    """Say what a checkpoint, bundled name or exported file is (network, classes, colours, normalisation), with no backend."""

    checkpoint: str = option("", "checkpoint, exported file or bundled name (e.g. dabnet-camvid)", positional=True, io="in")
    json: bool = option(False, "print JSON instead of text", flag_only=True)
