"""The `onnxruntime` runtime: a network written to ONNX (dynamic batch, height and width, with the
class names, colours and normalisation in its metadata) and run by ONNX Runtime on the CPU."""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from ..util.files import PathLike
from .meta import META_KEYS, export_sizes, model_metadata
from .registry import ExportedFile, Runtime, register_runtime
from .runner import Runner


def write_onnx(model: nn.Module, path: PathLike, opset: int = 17) -> Path:
    """Write `model` (eval mode) as ONNX with dynamic batch/H/W and its metadata; no check."""
    import onnx

    blocker = next((m.onnx_blocker for m in model.modules() if getattr(m, "onnx_blocker", None)), None)
    if blocker:
        raise ValueError(f"{model.model_name} cannot be written to ONNX with dynamic sizes: it has {blocker}. Use "
                         "--format openvino or torchscript, or the openvino, fold or eager backend")  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, 3, *export_sizes(model)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        torch.onnx.export(
            model.eval(), (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=opset,
            dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
            dynamo=False,
        )  # fmt: skip
    proto = onnx.load(str(path))
    for k, v in model_metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)
    onnx.save(proto, str(path))
    return path


class OrtRunner(Runner):
    """An ONNX model run by ONNX Runtime: `NCHW tensor -> fp32 logits`, with the file's metadata. `model` is a path
    or the file's bytes (read once by `open_onnx`)."""

    def __init__(self, model: Union[PathLike, bytes], threads: int = 0, name: str = "model") -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        self.checkpoint_meta = {k: json.loads(v) for k, v in props.items()}
        stem = name if isinstance(model, bytes) else Path(model).stem
        self.model_name = self.checkpoint_meta.get("model_name", stem) + " (onnxruntime)"
        self.num_classes = int(self.checkpoint_meta.get("num_classes", self.session.get_outputs()[0].shape[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"input": x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def onnx_runner(model: nn.Module) -> OrtRunner:
    """`model` exported to a temporary ONNX file and loaded by ONNX Runtime; the file is removed once
    the session holds the graph."""
    folder = tempfile.mkdtemp(prefix="dabnet-ort-")
    try:
        return OrtRunner(write_onnx(model.cpu(), Path(folder) / "model.onnx"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def onnx_metadata(proto) -> Dict[str, Any]:
    """dabnet's metadata from an ONNX model's metadata_props, without building a session."""
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props if p.key in META_KEYS}
    dims = proto.graph.output[0].type.tensor_type.shape.dim if proto.graph.output else []
    if "num_classes" not in meta and len(dims) > 1 and dims[1].dim_value:
        meta["num_classes"] = int(dims[1].dim_value)  # a foreign file: the logits' channels
    return meta


def _prepare(model: nn.Module, precision: str = "fp32", device: str = "cpu", channels_last: Optional[bool] = None,
             calibration: Optional[Sequence[torch.Tensor]] = None) -> OrtRunner:  # fmt: skip
    return onnx_runner(model.eval())


def open_onnx(path: Path) -> ExportedFile:
    """An ONNX file read once: its bytes give the description now and the session when run."""
    import onnx

    data = Path(path).read_bytes()
    meta = onnx_metadata(onnx.load_from_string(data))
    return ExportedFile(Path(path), "onnxruntime", meta, lambda precision, device: OrtRunner(data, name=Path(path).stem))


register_runtime(Runtime(
    "onnxruntime", "the ONNX export run by ONNX Runtime", _prepare, runner=OrtRunner, suffixes=(".onnx",),
    open=open_onnx, export_format="onnx",
    export=lambda model, path: write_onnx(model, path),
))  # fmt: skip
