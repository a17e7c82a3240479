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
    return _check_runner(model, OrtRunner(path), path, "onnx")


def _check_runner(model: nn.Module, runner, path: Path, fmt: str) -> Dict[str, Any]:
    """Compare an exported file's runner with PyTorch at a padding-free and an odd size."""
    sizes = export_sizes(model)
    errors, scale = [], 0.0
    for shape in sizes:
        xi = torch.randn(1, 3, *shape)
        with torch.inference_mode():
            ref = model(xi)
        errors.append(float((runner(xi) - ref).abs().max()))
        scale = max(scale, float(ref.abs().max()))
    return _verdict(path, fmt, errors, list(sizes), scale)


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
    errors, scale = [], 0.0
    for shape in (size, odd):
        xi = torch.randn(1, 3, *shape)
        with torch.inference_mode():
            try:
                ref = model(xi)
                errors.append(float((loaded(xi) - ref).abs().max()))
                scale = max(scale, float(ref.abs().max()))
            except Exception as e:
                path.unlink(missing_ok=True)
                raise ExportError(f"the traced {model.model_name} fails at {shape}: {e}") from e
    return _verdict(path, "torchscript", errors, [size, odd], scale)


def _verdict(path: Path, fmt: str, errors, sizes, logit_scale: float = 0.0) -> Dict[str, Any]:
    """Pass when the largest difference is under TOLERANCE relative to the logits' size (fp32 rounding grows
    with it: a trained net's logits reach 100); otherwise delete what was written and raise."""
    worst = max(errors)
    allowed = TOLERANCE * max(1.0, logit_scale)
    if not np.isfinite(worst) or worst >= allowed:
        for written in (path, path.with_suffix(".bin") if fmt == "openvino" else None):
            if written is not None and written.exists():
                written.unlink()
        raise ExportError(
            f"{fmt} export disagrees with PyTorch: max abs error {worst:.2e} >= {allowed:.1e} (1e-4 x the largest "
            f"logit, {logit_scale:.1f}); nothing was kept at {path}"
        )
    return {"path": str(path), "format": fmt, "max_abs_error": worst, "max_abs_logit": logit_scale, "tolerance": allowed,
            "checked_sizes": [list(s) for s in sizes]}  # fmt: skip


def export_openvino(model: nn.Module, path: PathLike) -> Dict[str, Any]:
    """OpenVINO IR (NAME.xml + NAME.bin, metadata in its rt_info), checked with OpenVINO fp32 at two sizes."""
    from .runtimes.openvino import OpenVINORunner, export_ir

    path = export_ir(model.eval(), path)
    return _check_runner(model, OpenVINORunner(path, "fp32"), path, "openvino")


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript, "openvino": export_openvino}


def run_export(checkpoint: PathLike, fmt: str, out: PathLike) -> Dict[str, Any]:
    """`dabnet export`: load any checkpoint (or bundled name) and export it."""
    if fmt not in EXPORTERS:
        raise ValueError(f"unknown export format {fmt!r}; choose {', '.join(EXPORTERS)}")
    return EXPORTERS[fmt](load_model(checkpoint), out)
