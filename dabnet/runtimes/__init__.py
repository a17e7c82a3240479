"""Runtimes: each way of running a network is one module that registers a `Runtime` (runtimes.registry) whose
runners follow one protocol (runtimes.runner); `prepare` makes a runner, `auto` (runtimes.auto) picks one per
device; may import io, models and util.

- `eager`, `fold`, `compile` (runtimes.pytorch): PyTorch as trained, with BatchNorm folded, or compiled.
- `torchscript` (runtimes.torchscript): the traced network; exports .pt files.
- `int8` (runtimes.int8): static int8 quantization (torchao PT2E), calibrated on batches you pass.
- `onnxruntime` (runtimes.onnx): the ONNX export run by ONNX Runtime; runs .onnx files.
- `openvino` (runtimes.openvino): OpenVINO's CPU plugin in fp32, bf16 or int8 (NNCF); runs .xml IR.
"""

from ..util.hardware import cpu_has_bf16
from ..util.precision import PRECISIONS

# One import per runtime module: importing it registers its runtimes, in this order.
from . import pytorch, torchscript, int8, onnx, openvino  # noqa: F401  isort: skip
from .auto import MIN_INT8_AGREEMENT, choose_auto, prepare_auto, resolve_device
from .calibration import calibration_batches, calibration_frames
from .prepare import load_exported, open_exported, prepare
from .pytorch import fold_batchnorm
from .registry import (
    AUTO,
    RUNTIMES,
    ExportedFile,
    Runtime,
    backend_help,
    backend_names,
    export_formats,
    exported_suffixes,
    get_runtime,
    register_runtime,
    runtime_for_export,
    runtime_for_file,
    runtimes_table,
)
from .runner import FunctionRunner, Runner, as_runner, predict_image_labels, predict_labels, predict_logits

__all__ = ["AUTO", "MIN_INT8_AGREEMENT", "PRECISIONS", "RUNTIMES", "ExportedFile", "FunctionRunner", "Runner", "Runtime",
           "as_runner", "backend_help", "backend_names", "calibration_batches", "calibration_frames", "choose_auto",
           "cpu_has_bf16", "export_formats", "exported_suffixes", "fold_batchnorm", "get_runtime", "load_exported",
           "open_exported", "predict_image_labels", "predict_labels", "predict_logits", "prepare", "prepare_auto", "register_runtime",
           "resolve_device", "runtime_for_export", "runtime_for_file", "runtimes_table"]
