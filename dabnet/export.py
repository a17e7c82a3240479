"""Export to ONNX (dynamic H and W) and TorchScript; every export checks itself against PyTorch."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from .checkpoint import load_model
from .models.layers import MaxUnpool2x
from .files import check_output_file
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
    errors, scale, agreement = [], 0.0, 1.0
    for shape in sizes:
        xi = torch.randn(1, 3, *shape)
        with torch.inference_mode():
            ref = model(xi)
            out = runner(xi)
        errors.append(float((out - ref).abs().max()))
        scale = max(scale, float(ref.abs().max()))
        agreement = min(agreement, float((out.argmax(1) == ref.argmax(1)).float().mean()))
    # Max-unpooling puts each value where its pooling window's maximum was: two values within fp32 rounding
    # of each other swap places in another runtime, and the logits downstream of that window differ though
    # the graph is right. Such a network is checked on its labels.
    return _verdict(path, fmt, errors, list(sizes), scale, agreement if routes_by_argmax(model) else None)


MIN_LABEL_AGREEMENT = 0.99  # for networks that route by argmax (see _check_runner); a wrong graph agrees on ~1/classes


def routes_by_argmax(model: nn.Module) -> bool:
    """Whether `model` has max-unpooling, whose output depends on which element of a window is largest."""
    return any(isinstance(m, MaxUnpool2x) for m in model.modules())


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


def _verdict(path: Path, fmt: str, errors, sizes, logit_scale: float = 0.0, agreement: Optional[float] = None) -> Dict[str, Any]:
    """Pass when the largest difference is under TOLERANCE relative to the logits' size (fp32 rounding grows
    with it: a trained net's logits reach 100), or, where `agreement` is given, when the labels agree on at
    least MIN_LABEL_AGREEMENT of the pixels; otherwise delete what was written and raise."""
    worst = max(errors)
    allowed = TOLERANCE * max(1.0, logit_scale)
    on_labels = agreement is not None and agreement >= MIN_LABEL_AGREEMENT and np.isfinite(worst)
    if not on_labels and (not np.isfinite(worst) or worst >= allowed):
        for written in (path, path.with_suffix(".bin") if fmt == "openvino" else None):
            if written is not None and written.exists():
                written.unlink()
        raise ExportError(
            f"{fmt} export disagrees with PyTorch: max abs error {worst:.2e} >= {allowed:.1e} (1e-4 x the largest "
            f"logit, {logit_scale:.1f}); nothing was kept at {path}"
        )
    return {"path": str(path), "format": fmt, "max_abs_error": worst, "max_abs_logit": logit_scale, "tolerance": allowed,
            "checked_sizes": [list(s) for s in sizes], "label_agreement": agreement}  # fmt: skip


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
    inputs = [checkpoint] if Path(checkpoint).exists() else []  # a bundled name is no file to protect
    check_output_file(out, "--out", inputs)
    if fmt == "openvino":  # NAME.xml writes NAME.bin beside it
        check_output_file(Path(out).with_suffix(".bin"), "--out (its .bin)", inputs)
    return EXPORTERS[fmt](load_model(checkpoint), out)
