"""The `openvino` runtime: the network converted to OpenVINO (dynamic batch, height and width) and run
by its CPU plugin, in fp32, bf16 (CPUs with native bf16) or int8 (NNCF post-training quantization).

int8 keeps the first and last convolutions in float, as the `int8` runtime does: quantizing the
normalised RGB input and the logits cost most of the accuracy (bundled weights, CamVid val: all-int8
-0.44 mIoU points; first/last in float -0.18 with NNCF's MIXED preset, -0.14 with PERFORMANCE).
Converted and quantized models are cached as IR in $DABNET_CACHE/openvino (else
~/.cache/dabnet/openvino), keyed by the weights, the versions of dabnet, OpenVINO and NNCF, the
calibration data and the CPU, so that only a first start pays for them.
Needs `openvino` (and `nncf` for int8), which `pip install dabnet` brings.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .. import files
from ..data.datasets import PathLike
from ..metrics import labels_from_logits
from ..precision import cpu_flags, cpu_has_bf16
from .onnx import META_KEYS, export_sizes, model_metadata

OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": None}  # int8: float parts at the plugin's default


def _openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError("the openvino backend needs OpenVINO: pip install openvino (dabnet installs it by default)") from e
    return ov


_CORE: List[Any] = []


def core():
    """One OpenVINO Core for the process: compiled models must not outlive the Core that made them."""
    if not _CORE:
        _CORE.append(_openvino().Core())
    return _CORE[0]


def _nncf():
    try:
        import logging

        import nncf

        nncf.set_log_level(logging.ERROR)  # its progress bars and notes would drown dabnet's output
    except ImportError as e:
        raise ImportError("OpenVINO int8 needs NNCF: pip install nncf (dabnet installs it by default)") from e
    return nncf


def convert(model: nn.Module):
    """`model` (eval mode) as an OpenVINO model with dynamic batch/H/W and dabnet's metadata in its rt_info."""
    ov = _openvino()
    example = torch.zeros(1, 3, *export_sizes(model)[0])
    with torch.no_grad():
        ov_model = ov.convert_model(model.eval().cpu(), example_input=example, input=[ov.PartialShape([-1, 3, -1, -1])])
    ov_model.outputs[0].get_tensor().set_names({"logits"})
    for key, value in model_metadata(model).items():
        ov_model.set_rt_info(json.dumps(value), ["dabnet", key])
    return ov_model


def first_and_last_convolutions(ov_model) -> List[str]:
    """Names of the first and last Convolution of an OpenVINO model, in execution order."""
    convs = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    return sorted({convs[0], convs[-1]}) if convs else []


# MIXED (symmetric weights, asymmetric activations). With the v2 CamVid weights PERFORMANCE (symmetric
# activations too) agreed with fp32 on only 97.8% of the calibration pixels (auto fell back to bf16), MIXED
# on 98.8%; held-out 0006R0 mIoU fp32 46.08, MIXED 46.03, PERFORMANCE 46.16; 360x480 labels 20.6 vs 21.5 ms.
QUANT_PRESET = "mixed"


def quantize(ov_model, calibration: Iterable[torch.Tensor], keep_float: Optional[Sequence[str]] = None):
    """NNCF post-training int8 (MIXED preset: symmetric weights, asymmetric activations), calibrated on
    `calibration` (normalised NCHW training batches); `keep_float` (default: first and last convolutions)
    stays in float."""
    nncf = _nncf()
    batches = [np.ascontiguousarray(c.detach().float().cpu().numpy()) for c in calibration]
    if not batches:
        raise ValueError("int8 calibration needs at least one image")
    names = list(first_and_last_convolutions(ov_model) if keep_float is None else keep_float)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars have no switch; keep dabnet's output clean
        return nncf.quantize(ov_model, nncf.Dataset(batches), preset=nncf.QuantizationPreset(QUANT_PRESET), subset_size=len(batches),
                             ignored_scope=nncf.IgnoredScope(names=names, validate=False))  # fmt: skip


def read_metadata(ov_model) -> Dict[str, Any]:
    """dabnet's metadata from an OpenVINO model's rt_info (empty for a foreign model)."""
    return {k: json.loads(ov_model.get_rt_info(["dabnet", k]).astype(str)) for k in META_KEYS if ov_model.has_rt_info(["dabnet", k])}


def with_labels(ov_model):
    """`ov_model` with its logits replaced by the class index per pixel (uint8 up to 256 classes, else
    int32): the arg-max runs inside OpenVINO on the layout it already has, and 1/44 of the bytes of
    fp32 logits leave the graph."""
    ov = _openvino()
    ops = ov.opset13
    logits = ov_model.get_results()[0].input_value(0)
    n = logits.get_partial_shape()[1]
    topk = ops.topk(logits, ops.constant(np.int64(1)), 1, "max", "none", "i32")
    labels = ops.squeeze(topk.output(1), ops.constant(np.int64(1)))
    if n.is_static and n.get_length() <= 256:
        labels = ops.convert(labels, "u8")
    labels.output(0).get_tensor().set_names({"labels"})
    return ov.Model([labels], ov_model.get_parameters(), "labels")


class OpenVINORunner:
    """An OpenVINO model compiled for the CPU: `NCHW tensor -> fp32 logits`, and `labels(x)` for the
    class map alone. Each is compiled on first use, so a caller that needs only one pays for one."""

    def __init__(self, ov_model, precision: str = "fp32", threads: int = 0, blob_cache: Optional[PathLike] = None) -> None:
        if precision not in OV_PRECISIONS:
            raise ValueError(f"the openvino backend runs {', '.join(OV_PRECISIONS)}; got {precision!r}")
        if precision == "bf16" and not cpu_has_bf16():
            raise ValueError("bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); use fp32 or int8 here")
        if isinstance(ov_model, (str, os.PathLike)):
            ov_model = core().read_model(str(ov_model))
        config: Dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if OV_PRECISIONS[precision]:
            config["INFERENCE_PRECISION_HINT"] = OV_PRECISIONS[precision]
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if blob_cache:  # OpenVINO keeps the compiled network there: a second start skips compilation
            config["CACHE_DIR"] = str(blob_cache)
        self.precision = precision
        self.ov_model, self.config = ov_model, config
        self.checkpoint_meta = read_metadata(ov_model)
        self.model_name = self.checkpoint_meta.get("model_name", "model") + " (openvino)"
        self.num_classes = int(self.checkpoint_meta.get("num_classes", ov_model.outputs[0].get_partial_shape()[1].get_length()))
        self._requests: Dict[str, Any] = {}

    def request(self, output: str = "logits"):
        """The infer request of the network with `output` "logits" or "labels", compiled on first use."""
        if output not in self._requests:
            model = self.ov_model if output == "logits" else with_labels(self.ov_model)
            self._requests[output] = core().compile_model(model, "CPU", self.config).create_infer_request()
        return self._requests[output]

    def _infer(self, x: torch.Tensor, output: str) -> torch.Tensor:
        request = self.request(output)
        request.infer([np.ascontiguousarray(x.detach().cpu().float().numpy())])
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._infer(x, "logits")

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """NxHxW class indices (uint8 up to 256 classes), the arg-max computed inside OpenVINO."""
        return self._infer(x, "labels")


def package_versions() -> Dict[str, str]:
    """Installed versions of dabnet, OpenVINO and NNCF ("none" when absent): part of a cached IR's key."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("dabnet", "openvino", "nncf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "none"
    return out


def _source_digest(model: nn.Module) -> str:
    """Digest of the code that builds the graph (the network's module, dabnet's layers, this runtime):
    a changed forward in a development install must not be served from an IR of the old one."""
    import inspect

    from ..models import layers

    h = hashlib.sha256()
    for obj in (type(model), layers, sys.modules[__name__]):
        try:
            h.update(Path(inspect.getfile(obj)).read_bytes())
        except (OSError, TypeError):  # no source file (e.g. a class defined at the prompt)
            h.update(type(obj).__qualname__.encode())
    return h.hexdigest()[:16]


def cache_key(model: nn.Module, kind: str, calibration: Optional[Sequence[torch.Tensor]] = None) -> str:
    """What a cached IR depends on: the weights, the network and its code, the versions, the
    calibration and the CPU."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": model.model_name, "kwargs": getattr(model, "model_kwargs", {}), "classes": model.num_classes,
                         "kind": kind, "versions": package_versions(), "cpu": cpu_flags(), "code": _source_digest(model)},
                        sort_keys=True, default=str).encode())  # fmt: skip
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for batch in calibration or []:
        h.update(batch.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def cached_ir(model: nn.Module, int8: bool, calibration: Optional[Sequence[torch.Tensor]], cache_dir: Optional[PathLike] = None) -> Path:
    """The IR of `model` (float, or int8 quantized on `calibration`), converted once and then read from the cache."""
    kind = f"int8-{QUANT_PRESET}" if int8 else "float"
    folder = Path(cache_dir or files.cache_dir()) / "openvino" / f"{model.model_name}-{kind}-{cache_key(model, kind, calibration)}"
    xml = folder / "model.xml"
    if _whole(folder):
        return xml
    if folder.exists():  # truncated or damaged (a disk that filled, a copy cut short): rebuilt, not used as is
        warnings.warn(f"the cached OpenVINO model {folder} is incomplete; rebuilding it", stacklevel=2)
        shutil.rmtree(folder, ignore_errors=True)
    ov = _openvino()
    ov_model = convert(model)
    info: Dict[str, Any] = {"versions": package_versions(), "cpu": cpu_flags()}
    if int8:
        ov_model = quantize(ov_model, calibration or [])
        info["agreement"] = label_agreement(model, OpenVINORunner(ov_model, "int8"), calibration or [])
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
        info["sizes"] = {name: (tmp / name).stat().st_size for name in IR_FILES}  # what _whole checks
        (tmp / "info.json").write_text(json.dumps(info, indent=1))
        try:
            os.replace(tmp, folder)  # atomic: a reader sees no IR or a whole one
        except OSError:  # another process cached it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml


IR_FILES = ("model.xml", "model.bin")


def _whole(folder: Path) -> bool:
    """Whether a cached IR folder holds both files at the sizes recorded when it was written."""
    try:
        sizes = json.loads((folder / "info.json").read_text())["sizes"]
        return all((folder / name).stat().st_size == sizes[name] for name in IR_FILES)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def label_agreement(model: nn.Module, runner, batches: Iterable[torch.Tensor]) -> float:
    """Share of pixels where `runner` predicts the class that `model` (eager fp32) does."""
    same = total = 0
    with torch.inference_mode():
        for x in batches:
            a, b = labels_from_logits(model.eval().cpu()(x.float().cpu())), labels_from_logits(runner(x))
            same, total = same + int((a == b).sum()), total + a.numel()
    return same / max(total, 1)


def ir_info(xml: PathLike) -> Dict[str, Any]:
    """What `cached_ir` recorded beside an IR (int8: its label agreement with fp32 on the calibration frames)."""
    info = Path(xml).with_name("info.json")
    return json.loads(info.read_text()) if info.is_file() else {}


def openvino_runner(
    model: nn.Module, precision: str = "fp32", calibration: Optional[Sequence[torch.Tensor]] = None,
    cache_dir: Optional[PathLike] = None,
) -> OpenVINORunner:  # fmt: skip
    """`model` run by OpenVINO at `precision` (fp32, bf16, int8); int8 quantizes on `calibration`."""
    if precision == "int8" and not calibration:
        raise ValueError("OpenVINO int8 needs calibration batches (normalised training images)")
    if precision not in OV_PRECISIONS:
        raise ValueError(f"the openvino backend runs {', '.join(OV_PRECISIONS)}; got {precision!r}")
    xml = cached_ir(model, precision == "int8", calibration if precision == "int8" else None, cache_dir)
    runner = OpenVINORunner(xml, precision, blob_cache=xml.parent / "compiled")
    runner.info = ir_info(xml)
    return runner


def export_ir(model: nn.Module, path: PathLike) -> Path:
    """Write `model` as OpenVINO IR (PATH.xml + PATH.bin) with its metadata in the rt_info."""
    ov = _openvino()
    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is written as NAME.xml (+ NAME.bin); got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(convert(model), str(path), compress_to_fp16=False)
    return path
