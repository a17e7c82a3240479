"""The `torchscript` runtime: the network traced to TorchScript (with the class names, colours and
normalisation in the file's extra files), run by PyTorch's TorchScript interpreter, and `dabnet export
--format torchscript`."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from ..util.files import PathLike
from .meta import export_sizes, model_metadata
from .registry import ExportedFile, Runtime, register_runtime
from .runner import Runner

EXTRA_FILE = "dabnet.json"


def trace(model: nn.Module, device: str = "cpu") -> torch.jit.ScriptModule:
    """`model` (eval mode) traced at a padding-free size; a network that cannot be traced says which format to use."""
    size = export_sizes(model)[0]
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
            return torch.jit.trace(model.eval().to(device), torch.randn(1, 3, *size, device=device))
    except Exception as e:
        raise ValueError(f"{model.model_name} cannot be traced to TorchScript ({type(e).__name__}); use --format onnx") from e


class ScriptRunner(Runner):
    """A TorchScript module: `NCHW tensor -> fp32 logits`, with the description saved beside it."""

    def __init__(self, module: torch.jit.ScriptModule, meta: Dict[str, Any], device: str = "cpu") -> None:
        self.module, self.device, self.checkpoint_meta = module, torch.device(device), meta
        self.model_name = meta.get("model_name", "model") + " (torchscript)"
        self.num_classes = int(meta.get("num_classes", 0))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x.to(self.device)).float()


def write_torchscript(model: nn.Module, path: PathLike) -> Path:
    """Trace `model` and save it with its metadata; no check."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Saved to memory, then written by Python: torch.jit.save into a file aborts the whole process (a C++ error
    # thrown in a destructor) when a write fails, where Python's write raises an OSError (a full disk) to report.
    buf = io.BytesIO()
    torch.jit.save(trace(model), buf, _extra_files={EXTRA_FILE: json.dumps(model_metadata(model))})
    path.write_bytes(buf.getvalue())
    return path


def open_torchscript(path: PathLike) -> ExportedFile:
    """A TorchScript file read once (with the description `write_torchscript` saved beside it; empty for a foreign
    file), run on the device asked for."""
    extra = {EXTRA_FILE: ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra[EXTRA_FILE]) if extra[EXTRA_FILE] else {}
    return ExportedFile(Path(path), "torchscript", meta, lambda precision, device: ScriptRunner(module.to(device).eval(), meta, device))


def _prepare(model: nn.Module, precision: str = "fp32", device: str = "cpu", channels_last: Optional[bool] = None,
             calibration=None) -> Callable[[torch.Tensor], torch.Tensor]:  # fmt: skip
    return ScriptRunner(trace(model, device), model_metadata(model), device)


register_runtime(Runtime(
    "torchscript", "the network traced to TorchScript", _prepare, devices=("cpu", "cuda"), runner=ScriptRunner,
    open=open_torchscript, export_format="torchscript", export=lambda model, path: write_torchscript(model, path),
))  # fmt: skip
