"""The runtime registry: every way of running a network declares itself here once, and the backend names,
the command line's choices and help, the export formats, the exported-file suffixes and the benchmark's
rows all come from it. A new runtime is one module that calls `register_runtime` plus one import line in
`runtimes/__init__.py` (or, outside the package, one `register_runtime` call before use)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..util.registry import Registry
from .runner import Runner


@dataclass(frozen=True)
class ExportedFile:
    """An exported model file, read once by its runtime's `open`: its description (`metadata`: classes, colours,
    normalisation) at once, and `make(precision, device)` to run what was read, without reading it again.
    `precisions` are those it runs in as it is (a quantized file: its own); empty means every precision of its
    runtime that needs no calibration (a float file cannot become int8 without the network it came from)."""

    path: Path
    runtime: str
    metadata: Dict[str, Any]
    make: Callable[[str, str], Runner] = field(repr=False, compare=False)
    precisions: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Runtime:
    """One way of running a network.

    `prepare(model, precision=, device=, channels_last=, calibration=)` turns a network into a `Runner`;
    `open(path)` reads an exported file of one of `suffixes` once, as an `ExportedFile` (its description at
    once, compiled only when run); `export(model, path)` writes such a file (`export_format` names it on the
    command line; `export_files(path)` lists every file it writes). `calibrated` lists the precisions that
    quantize on calibration batches; `runner` is the class of its runners, which says whether the runtime makes
    the labels itself (`computes_labels`). `default_precision()` is the precision the runtime's own API runs an
    exported file in when nobody names one, on this machine (OpenVINO's CPU plugin: bf16 on CPUs with native bf16)."""

    name: str
    summary: str
    prepare: Callable[..., Runner]
    precisions: Tuple[str, ...] = ("fp32",)
    devices: Tuple[str, ...] = ("cpu",)
    calibrated: Tuple[str, ...] = ()
    channels_last: bool = False
    runner: type = Runner
    suffixes: Tuple[str, ...] = ()
    open: Optional[Callable[[Path], ExportedFile]] = None
    export_format: Optional[str] = None
    export: Optional[Callable[[nn.Module, Path], Path]] = None
    export_files: Callable[[Path], Tuple[Path, ...]] = lambda path: (path,)
    default_precision: Callable[[], str] = lambda: "fp32"

    def precision_for(self, precision: str) -> str:
        """`precision` checked against this runtime's; the default fp32 means the runtime's own where it has no fp32."""
        if precision == "fp32" and "fp32" not in self.precisions:
            return self.precisions[0]
        if precision not in self.precisions:
            others = [r.name for r in RUNTIMES.values() if precision in r.precisions]
            hint = f"; {precision} runs with --backend {' or '.join(others)}" if others else ""
            raise ValueError(f"the {self.name} backend runs {', '.join(self.precisions)}, not {precision}{hint}")
        return precision

    @property
    def computes_labels(self) -> bool:
        """Whether its runners make the class map themselves (their own `labels`), not the logits' arg-max."""
        return self.runner.labels is not Runner.labels

    def label_for(self, precision: str) -> str:
        """How a runner of this runtime is named: 'fold', 'eager bf16', 'openvino int8'."""
        precision = self.precision_for(precision)
        return self.name if precision == "fp32" or len(self.precisions) == 1 else f"{self.name} {precision}"

    def check_device(self, device: str) -> None:
        """A ValueError naming the devices this runtime runs on, unless `device` is one of them."""
        kind = torch.device(device).type
        if kind not in self.devices:
            raise ValueError(f"the {self.name} backend runs on {' or '.join(self.devices)} (--device {self.devices[0]}), not {kind}")


AUTO = "auto"  # not a runtime: runtimes.auto picks one per device


def _check_runtime(name: str, runtime: Runtime) -> None:
    """A runtime joins only with its own exported suffixes and format, and with what its export and files need."""
    for other in RUNTIMES.values():
        clash = set(runtime.suffixes) & set(other.suffixes)
        if clash:
            raise ValueError(f"runtime {runtime.name!r}: suffix {sorted(clash)[0]} is {other.name!r}'s already")
        if runtime.export_format and runtime.export_format == other.export_format:
            raise ValueError(f"runtime {runtime.name!r}: export format {runtime.export_format!r} is {other.name!r}'s already")
    if runtime.suffixes and runtime.open is None:
        raise ValueError(f"runtime {runtime.name!r}: files of {', '.join(runtime.suffixes)} need an `open`")
    if runtime.export is not None and (runtime.open is None or not runtime.export_format):
        raise ValueError(f"runtime {runtime.name!r}: an `export` needs an `export_format` and an `open` (the export is checked through it)")


RUNTIMES: Registry[Runtime] = Registry("backend", summary=lambda r: r.summary, reserved=(AUTO,), check=_check_runtime)
_RUNTIMES = RUNTIMES  # the name tests patch


def register_runtime(runtime: Runtime) -> Runtime:
    """Add a runtime (a name taken already, or an exported suffix or format claimed by another, is an error)."""
    return RUNTIMES.register(runtime.name, runtime)


def unregister_runtime(name: str) -> None:
    """Remove a runtime (tests register toy ones)."""
    RUNTIMES.unregister(name)


def get_runtime(name: str) -> Runtime:
    """The runtime registered as `name`; the error names the closest ones."""
    return RUNTIMES.get(name)


def backend_names() -> List[str]:
    """What --backend accepts: auto and every registered runtime."""
    return [AUTO, *RUNTIMES]


def export_formats() -> List[str]:
    """What `dabnet export --format` accepts."""
    return [r.export_format for r in RUNTIMES.values() if r.export_format]


def runtime_for_export(fmt: str) -> Runtime:
    """The runtime that writes export format `fmt`."""
    for r in RUNTIMES.values():
        if r.export_format == fmt:
            return r
    raise ValueError(f"unknown export format {fmt!r}; choose {', '.join(export_formats())}")


def exported_suffixes() -> Tuple[str, ...]:
    """Suffixes of the exported files some runtime runs as they are."""
    return tuple(s for r in RUNTIMES.values() for s in r.suffixes)


def runtime_for_file(path: Any) -> Optional[Runtime]:
    """The runtime that runs `path` as it is (an exported model), or None for anything else (checkpoints,
    bundled names, networks)."""
    if not isinstance(path, (str, Path)) and not hasattr(path, "__fspath__"):
        return None
    name = str(path).lower()
    return next((r for r in RUNTIMES.values() if name.endswith(tuple(s.lower() for s in r.suffixes))), None)


def runtimes_table() -> List[Dict[str, Any]]:
    """One row per registered runtime: what `dabnet runtimes` prints."""
    return [{"backend": r.name, "precisions": list(r.precisions), "devices": list(r.devices), "runs_files": list(r.suffixes),
             "export_format": r.export_format, "labels_inside": r.computes_labels, "calibrated": list(r.calibrated),
             "summary": r.summary} for r in RUNTIMES.values()]  # fmt: skip


def backend_help() -> str:
    """The --backend help: each runtime's one-line summary."""
    return "how to run the network: auto picks the fastest accurate one for the device and says why; " + "; ".join(
        f"{r.name}: {r.summary}" for r in RUNTIMES.values()
    )
