"""Making runners: `prepare` runs a network with a named runtime, `load_exported` runs an exported file as it is.
Each looks its runtime up once and names the runner it returns."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from .registry import AUTO, ExportedFile, Runtime, exported_suffixes, get_runtime, runtime_for_file
from .runner import Runner, as_runner


def _named(made, runtime: Runtime, precision: str) -> Runner:
    """What a runtime made, as a Runner that says which runtime and precision it is, and what else decides what
    runs where the name does not say it (`Runner.runs_as`: OpenVINO int8's float layers)."""
    runner = as_runner(made)
    runner.backend, runner.precision, runner.label = runtime.name, precision, runtime.label_for(precision)
    if runner.runs_as:
        runner.label += f" ({runner.runs_as})"
    return runner


Calibration = Union[Iterable[torch.Tensor], Callable[[], Iterable[torch.Tensor]], None]


def prepare(
    model: nn.Module,
    backend: str = "eager",
    precision: str = "fp32",
    device: str = "cpu",
    channels_last: Optional[bool] = None,
    calibration: Calibration = None,
) -> Runner:
    """`model` (eval mode) run by the runtime `backend` at `precision`. `calibration` is what a quantizing precision
    calibrates on: normalised NCHW train batches, or a function that makes them (called only when needed).
    `auto` is `runtimes.auto.prepare_auto`'s, which checks and falls back."""
    if backend == AUTO:
        raise ValueError("prepare runs a named backend; use runtimes.prepare_auto (or Segmenter) for auto")
    runtime = get_runtime(backend)
    precision = runtime.precision_for(precision)
    runtime.check_device(device)
    batches = None
    if precision in runtime.calibrated:
        batches = list(calibration() if callable(calibration) else calibration or [])
        if not batches:
            raise ValueError(f"the {backend} backend in {precision} needs calibration batches (normalised training images)")
    return _named(runtime.prepare(model.eval(), precision=precision, device=str(device), channels_last=channels_last,
                               calibration=batches), runtime, precision)  # fmt: skip


def open_exported(path: Union[str, Path]) -> ExportedFile:
    """An exported file read once by the runtime its suffix names."""
    runtime = runtime_for_file(path)
    if runtime is None:
        raise ValueError(f"{path} is no exported model this installation runs (those end in {', '.join(exported_suffixes())})")
    return runtime.open(Path(path))


def load_exported(source: Union[str, Path, ExportedFile], precision: str = "fp32", device: str = "cpu") -> Runner:
    """A runner for an exported file (a path, or one `open_exported` read already), which carries its own
    description (`checkpoint_meta`), on `device`."""
    file = source if isinstance(source, ExportedFile) else open_exported(source)
    runtime = get_runtime(file.runtime)
    runtime.check_device(str(device))
    precision = exported_precision(file, runtime, precision)
    return _named(file.make(precision, str(device)), runtime, precision)


def exported_precision(file: ExportedFile, runtime: Runtime, precision: str) -> str:
    """`precision` checked against what `file` runs in as it is: the default fp32 means the file's own where it has
    no fp32 (a quantized file); a precision that would need the network (int8 quantizes on calibration frames) or
    that the file's own precision rules out is refused in one line that says what to run instead."""
    precision = runtime.precision_for(precision)
    honoured = file.precisions or tuple(p for p in runtime.precisions if p not in runtime.calibrated) or runtime.precisions
    if precision == "fp32" and precision not in honoured:
        return honoured[0]
    if precision in honoured:
        return precision
    if precision in runtime.calibrated:
        how = (f"{precision} quantizes the network on calibration frames, which needs the checkpoint {file.path.name} was "
               f"exported from: --checkpoint CHECKPOINT --backend {runtime.name} --precision {precision}")  # fmt: skip
    elif set(honoured) <= set(runtime.calibrated):
        how = f"it was quantized to {honoured[0]} when it was written"
    else:
        how = f"the file holds {' or '.join(honoured)} only"
    raise ValueError(f"{file.path} runs as exported in {' or '.join(honoured)}, not {precision}: {how}; "
                     f"or give --precision {honoured[0]}")  # fmt: skip
