"""Export to ONNX (dynamic H and W) and TorchScript; every export checks itself against PyTorch."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import load_model

PathLike = Union[str, os.PathLike]
TOLERANCE = 1e-4
_META_KEYS = ("model_name", "num_classes", "class_names", "palette", "mean", "std", "val_miou", "source")


class ExportError(RuntimeError):
    """An export that failed or whose outputs disagree with PyTorch."""


def _check_sizes(model: nn.Module) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    # One size the network needs no padding for, and one odd size that exercises the dynamic axes.
    m = getattr(model, "size_multiple", 8)
    return (45 * m, 60 * m) if m <= 8 else (12 * m, 15 * m), (97, 131)


def _metadata(model: nn.Module) -> Dict[str, str]:
    meta = dict(getattr(model, "checkpoint_meta", {}))
    meta.update(model_name=model.model_name, num_classes=model.num_classes)
    return {k: json.dumps(meta[k]) for k in _META_KEYS if k in meta}


def export_onnx(model: nn.Module, path: PathLike, opset: int = 17, check: bool = True) -> Dict[str, Any]:
    """ONNX with dynamic batch, height and width; checked with ONNX Runtime at two sizes
    (`check=False` only for timing untrained networks, whose huge logits make the check moot)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    size, odd = _check_sizes(model)
    x = torch.randn(1, 3, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        torch.onnx.export(
            model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=opset,
            dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
            dynamo=False,
        )  # fmt: skip
    proto = onnx.load(str(path))
    for k, v in _metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    if not check:
        return {"path": str(path), "format": "onnx", "max_abs_error": None, "checked_sizes": []}
    runner = OrtModel(path)
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
    size, odd = _check_sizes(model)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, torch.randn(1, 3, *size))
    except Exception as e:
        raise ExportError(f"{model.model_name} cannot be traced to TorchScript ({type(e).__name__}); use --format onnx") from e
    extra = {"dabnet.json": json.dumps({k: json.loads(v) for k, v in _metadata(model).items()})}
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


class OrtModel:
    """An exported ONNX model run by ONNX Runtime, with the metadata Segmenter needs."""

    def __init__(self, path: PathLike, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        self.checkpoint_meta = {k: json.loads(v) for k, v in props.items()}
        self.model_name = self.checkpoint_meta.get("model_name", Path(path).stem) + " (onnxruntime)"
        self.num_classes = int(self.checkpoint_meta.get("num_classes", self.session.get_outputs()[0].shape[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"input": x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def to(self, *args, **kwargs) -> "OrtModel":  # Segmenter moves models; ONNX Runtime runs on the CPU
        return self

    def eval(self) -> "OrtModel":
        return self
