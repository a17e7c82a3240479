"""Export to ONNX (dynamic H and W) and TorchScript; every export checks itself against PyTorch."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
from torch import nn

from .checkpoint import load_model
from .runtimes.onnx import OrtRunner, PathLike, export_sizes, model_metadata, write_onnx

TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An export that failed or whose outputs disagree with PyTorch."""


def export_onnx(model: nn.Module, path: PathLike, opset: int = 17, check: bool = True) -> Dict[str, Any]:
    """ONNX with dynamic batch, height and width; checked with ONNX Runtime at two sizes
    (`check=False` only for timing untrained networks, whose huge logits make the check moot)."""
    path = write_onnx(model, path, opset)
    if not check:
        return {"path": str(path), "format": "onnx", "max_abs_error": None, "checked_sizes": []}
    runner = OrtRunner(path)
    size, odd = export_sizes(model)
    errors, scale = [], 0.0
    for shape in (size, odd):
        xi = torch.randn(1, 3, *shape)
        with torch.inference_mode():
            ref = model(xi)
        errors.append(float((runner(xi) - ref).abs().max()))
        scale = max(scale, float(ref.abs().max()))
    return _verdict(path, "onnx", errors, [size, odd], scale)


def export_torchscript(model: nn.Module, path: PathLike) -> Dict[str, Any]:
    """A traced TorchScript module, checked against eager PyTorch at a second, odd size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    size, odd = export_sizes(model)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, torch.randn(1, 3, *size))
    except Exception as e:
        raise ExportError(f"{model.model_name} cannot be traced to TorchScript ({type(e).__name__}); use --format onnx") from e
    extra = {"dabnet.json": json.dumps(model_metadata(model))}
    torch.jit.save(traced, str(path), _extra_files=extra)
    loaded = torch.jit.load(str(path))
    errors = []
    for shape in (size, odd):
        xi = torch.randn(1, 3, *shape)
        with torch.inference_mode():
            try:
                errors.append(float((loaded(xi) - model(xi)).abs().max()))
            except Exception as e:
                raise ExportError(f"the traced {model.model_name} fails at {shape}: {e}") from e
    return _verdict(path, "torchscript", errors, [size, odd])


def _verdict(path: Path, fmt: str, errors, sizes, logit_scale: float = 0.0) -> Dict[str, Any]:
    worst = max(errors)
    if not np.isfinite(worst) or worst >= TOLERANCE:
        raise ExportError(
            f"{fmt} export {path} disagrees with PyTorch: max abs error {worst:.2e} >= {TOLERANCE:.0e} "
            f"(largest logit {logit_scale:.1f}; untrained networks have far larger logits and rounding differences)"
        )
    return {"path": str(path), "format": fmt, "max_abs_error": worst, "max_abs_logit": logit_scale,
            "checked_sizes": [list(s) for s in sizes]}  # fmt: skip


def run_export(checkpoint: PathLike, fmt: str, out: PathLike) -> Dict[str, Any]:
    """`dabnet export`: load any checkpoint (or bundled name) and export it."""
    model = load_model(checkpoint)
    if fmt == "onnx":
        return export_onnx(model, out)
    if fmt == "torchscript":
        return export_torchscript(model, out)
    raise ValueError(f"unknown export format {fmt!r}; choose onnx or torchscript")
