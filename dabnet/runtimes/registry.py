"""The runtime registry: every way of running a network declares itself here once, and the backend names,
the command line's choices and help, the export formats, the exported-file suffixes and the benchmark's
rows all come from it. A new runtime is one module that calls `register_runtime` plus one import line in
`runtimes/__init__.py` (or, outside the package, one `register_runtime` call before use)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

Runner = Callable[[torch.Tensor], torch.Tensor]  # NCHW normalised float -> fp32 logits; may have .labels(x)


@dataclass(frozen=True)
class Runtime:
    """One way of running a network.

    `prepare(model, precision=, device=, channels_last=, calibration=)` turns a network into a runner;
    `load(path, precision)` runs an exported file of one of `suffixes` as it is, and `read_metadata(path)`
    reads that file's description (classes, colours, normalisation) without compiling anything; `export(model,
    path)` writes such a file (`export_format` names it on the command line; `export_files(path)` lists
    every file it writes). `calibrated` lists the precisions that quantize on calibration batches,
    `computes_labels` says that its runners have `labels(x)` (the arg-max inside the runtime)."""

    name: str
    summary: str
    prepare: Callable[..., Runner]
    precisions: Tuple[str, ...] = ("fp32",)
    devices: Tuple[str, ...] = ("cpu",)
    calibrated: Tuple[str, ...] = ()
    channels_last: bool = False
    computes_labels: bool = False
    suffixes: Tuple[str, ...] = ()
    load: Optional[Callable[..., Runner]] = None  # (path, precision) -> runner; (path, precision, device) where devices has a GPU
    read_metadata: Optional[Callable[[Path], Dict[str, Any]]] = None
    export_format: Optional[str] = None
    export: Optional[Callable[[nn.Module, Path], Path]] = None
    export_files: Callable[[Path], Tuple[Path, ...]] = lambda path: (path,)

    def precision_for(self, precision: str) -> str:
        """`precision` checked against this runtime's; the default fp32 means the runtime's own where it has no fp32."""
        if precision == "fp32" and "fp32" not in self.precisions:
            return self.precisions[0]
        if precision not in self.precisions:
            others = [r.name for r in _RUNTIMES.values() if precision in r.precisions]
            hint = f"; {precision} runs with --backend {' or '.join(others)}" if others else ""
            raise ValueError(f"the {self.name} backend runs {', '.join(self.precisions)}, not {precision}{hint}")
        return precision

    def check_device(self, device: str) -> None:
        """A ValueError naming the devices this runtime runs on, unless `device` is one of them."""
        kind = torch.device(device).type
        if kind not in self.devices:
            raise ValueError(f"the {self.name} backend runs on {' or '.join(self.devices)} (--device {self.devices[0]}), not {kind}")


_RUNTIMES: Dict[str, Runtime] = {}
AUTO = "auto"  # not a runtime: `choose_auto` picks one per device


def register_runtime(runtime: Runtime) -> Runtime:
    """Add a runtime (a name taken already, or an exported suffix or format claimed by another, is an error)."""
    if runtime.name in _RUNTIMES or runtime.name == AUTO:
        raise ValueError(f"a runtime named {runtime.name!r} is registered already")
    for other in _RUNTIMES.values():
        clash = set(runtime.suffixes) & set(other.suffixes)
        if clash:
            raise ValueError(f"runtime {runtime.name!r}: suffix {sorted(clash)[0]} is {other.name!r}'s already")
        if runtime.export_format and runtime.export_format == other.export_format:
            raise ValueError(f"runtime {runtime.name!r}: export format {runtime.export_format!r} is {other.name!r}'s already")
    if runtime.suffixes and runtime.load is None:
        raise ValueError(f"runtime {runtime.name!r}: files of {', '.join(runtime.suffixes)} need a `load`")
    if runtime.export is not None and (runtime.load is None or not runtime.export_format):
        raise ValueError(f"runtime {runtime.name!r}: an `export` needs an `export_format` and a `load` (the export is checked through it)")
    _RUNTIMES[runtime.name] = runtime
    return runtime


def unregister_runtime(name: str) -> None:
    """Remove a runtime (tests register toy ones)."""
    _RUNTIMES.pop(name, None)


def get_runtime(name: str) -> Runtime:
    """The runtime registered as `name`; the error lists the others."""
    if name not in _RUNTIMES:
        raise ValueError(f"unknown backend {name!r}; choose {', '.join(backend_names())}")
    return _RUNTIMES[name]


def list_runtimes() -> List[Runtime]:
    """Registered runtimes in registration order."""
    return list(_RUNTIMES.values())


def backend_names() -> List[str]:
    """What --backend accepts: auto and every registered runtime."""
    return [AUTO, *_RUNTIMES]


def export_formats() -> List[str]:
    """What `dabnet export --format` accepts."""
    return [r.export_format for r in _RUNTIMES.values() if r.export_format]


def runtime_for_export(fmt: str) -> Runtime:
    """The runtime that writes export format `fmt`."""
    for r in _RUNTIMES.values():
        if r.export_format == fmt:
            return r
    raise ValueError(f"unknown export format {fmt!r}; choose {', '.join(export_formats())}")


def exported_suffixes() -> Tuple[str, ...]:
    """Suffixes of the exported files some runtime runs as they are."""
    return tuple(s for r in _RUNTIMES.values() for s in r.suffixes)


def runtime_for_file(path: Any) -> Optional[Runtime]:
    """The runtime that runs `path` as it is (an exported model), or None for anything else (checkpoints,
    bundled names, networks)."""
    if not isinstance(path, (str, Path)) and not hasattr(path, "__fspath__"):
        return None
    name = str(path).lower()
    return next((r for r in _RUNTIMES.values() if name.endswith(tuple(s.lower() for s in r.suffixes))), None)


def runtimes_table() -> List[Dict[str, Any]]:
    """One row per registered runtime: what `dabnet runtimes` prints."""
    return [{"backend": r.name, "precisions": list(r.precisions), "devices": list(r.devices), "runs_files": list(r.suffixes),
             "export_format": r.export_format, "labels_inside": r.computes_labels, "calibrated": list(r.calibrated),
             "summary": r.summary} for r in _RUNTIMES.values()]  # fmt: skip


def backend_help() -> str:
    """The --backend help: each runtime's one-line summary."""
    return "how to run the network: auto picks the fastest accurate one for the device and says why; " + "; ".join(
        f"{r.name}: {r.summary}" for r in _RUNTIMES.values()
    )
