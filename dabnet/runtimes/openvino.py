"""The `openvino` runtime: the network converted to OpenVINO (dynamic batch, height and width) and run
by its CPU plugin, in fp32, bf16 (CPUs with native bf16) or int8 (NNCF post-training quantization).

int8 keeps the first and last convolutions in float, as the `int8` runtime does: quantizing the
normalised RGB input and the logits cost most of the accuracy (bundled weights, CamVid val: all-int8
-0.44 mIoU points; first/last in float -0.18 with NNCF's MIXED preset, -0.14 with PERFORMANCE).
Converted and quantized models are kept as IR, and the networks compiled from them as OpenVINO blobs, in stores
checked by content (`util.store`, keyed by `runtimes.cache`: $DABNET_CACHE/openvino and openvino-compiled, else
under ~/.cache/dabnet), so that only a first start pays for them.
Needs `openvino` (and `nncf` for int8), which `pip install dabnet` brings.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..io.preprocessing import Normalize
from ..util.files import PathLike
from ..util.hardware import cpu_flags, cpu_has_bf16
from ..util.metrics import labels_from_logits
from ..util.store import DamagedEntry, Entry, Store, key_digest
from ..util.telemetry import telemetry_off
from . import cache
from .meta import META_KEYS, export_sizes, model_metadata
from .registry import ExportedFile, Runtime, register_runtime
from .runner import Runner
from .upsample import label_dtype, upsampled_argmax

OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": None}  # int8: float layers at the plugin's default
PLUGIN_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # the CPU plugin's names for them -> dabnet's


def _openvino():
    try:
        with telemetry_off():  # its import reports itself (util.telemetry)
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


def plugin_precision(hint: Optional[str] = None) -> str:
    """The precision ("f32", "bf16", "f16") the CPU plugin runs float layers in under INFERENCE_PRECISION_HINT
    `hint`, or without one its default: bf16 on CPUs with native bf16, else f32. A plain
    `core.compile_model(m, "CPU")`, as any user of an exported IR writes it, runs in the default."""
    return hint or core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


def default_precision() -> str:
    """The plugin's default precision here in dabnet's names (fp32, bf16): what a plain load of an IR runs in."""
    hint = plugin_precision()
    return PLUGIN_NAMES.get(hint, hint)


def _nncf():
    try:
        import logging

        with telemetry_off():  # its import would write a client id and a usage count under ~/intel
            import nncf

        nncf.set_log_level(logging.ERROR)  # its progress bars and notes would drown dabnet's output
    except ImportError as e:
        raise ImportError("OpenVINO int8 needs NNCF: pip install nncf (dabnet installs it by default)") from e
    return nncf


def convert(model: nn.Module):
    """`model` (eval mode) as an OpenVINO model with dynamic batch/H/W and dabnet's metadata in its rt_info."""
    ov = _openvino()
    example = torch.zeros(1, 3, *export_sizes(model)[0])
    with torch.no_grad(), telemetry_off():  # the converter would report each conversion (util.telemetry)
        ov_model = ov.convert_model(model.eval().cpu(), example_input=example, input=[ov.PartialShape([-1, 3, -1, -1])])
    ov_model.outputs[0].get_tensor().set_names({"logits"})
    for key, value in model_metadata(model).items():
        ov_model.set_rt_info(json.dumps(value), ["dabnet", key])
    return ov_model


def first_and_last_convolutions(ov_model) -> List[str]:
    """Names of the first and last Convolution of an OpenVINO model, in execution order."""
    convs = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    return sorted({convs[0], convs[-1]}) if convs else []


# MIXED (symmetric weights, asymmetric activations): asymmetric activations follow DABNet's PReLU outputs,
# which are far from symmetric, so int8 agrees with fp32 on more pixels than PERFORMANCE's symmetric ones
# (the measurement: docs/reports/SPEED.md).
QUANT_PRESET = "mixed"


def quantize(ov_model, calibration: Iterable[torch.Tensor], keep_float: Optional[Sequence[str]] = None, preset: str = QUANT_PRESET):
    """NNCF post-training int8 (MIXED preset: symmetric weights, asymmetric activations), calibrated on
    `calibration` (normalised NCHW training batches); `keep_float` (default: first and last convolutions)
    stays in float."""
    nncf = _nncf()
    batches = [np.ascontiguousarray(c.detach().float().cpu().numpy()) for c in calibration]
    if not batches:
        raise ValueError("int8 calibration needs at least one image")
    names = list(first_and_last_convolutions(ov_model) if keep_float is None else keep_float)
    # NNCF's progress bars have no switch: dabnet's output stays clean; and it would report each quantization
    with contextlib.redirect_stdout(io.StringIO()), telemetry_off():
        return nncf.quantize(ov_model, nncf.Dataset(batches), preset=nncf.QuantizationPreset(preset), subset_size=len(batches),
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


def final_upsample(ov_model) -> Optional[Tuple[Any, Any]]:
    """(low-resolution logits, output size H, W) when `ov_model` ends in a bilinear upsampling (half-pixel,
    no antialias) of its logits over H and W alone, as DABNet does; else None."""
    node = ov_model.get_results()[0].input_value(0).get_node()
    if node.get_type_name() != "Interpolate" or node.get_input_size() < 3:
        return None
    attrs = node.get_attributes()
    if (attrs.get("mode") not in ("linear", "linear_onnx") or attrs.get("shape_calculation_mode") != "sizes" or attrs.get("antialias")
            or attrs.get("coordinate_transformation_mode") not in ("half_pixel", "pytorch_half_pixel")
            or any(attrs.get("pads_begin", [])) or any(attrs.get("pads_end", []))):  # fmt: skip
        return None
    axes = node.input_value(2 if node.get_type_info().version_id == "opset11" else 3) if node.get_input_size() > 2 else None
    axes_node = axes.get_node() if axes is not None else None
    rank = node.get_input_partial_shape(0).rank
    if axes_node is None or axes_node.get_type_name() != "Constant" or not rank.is_static or rank.get_length() != 4:
        return None
    if sorted(int(a) % 4 for a in axes_node.get_data().ravel()) != [2, 3]:
        return None
    return node.input_value(0), node.input_value(1)


def with_low_labels(ov_model):
    """`ov_model` cut before its final bilinear upsampling (see `final_upsample`): outputs the low-resolution
    logits and the size they were upsampled to, from which `upsampled_argmax` makes the labels on the host
    without ever making the full-resolution logits."""
    ov = _openvino()
    low, size = final_upsample(ov_model)
    ops = ov.opset13
    low, size = ops.result(low), ops.result(ops.convert(size, "i32"))
    low.output(0).get_tensor().set_names({"low_logits"})
    size.output(0).get_tensor().set_names({"size"})
    return ov.Model([low, size], ov_model.get_parameters(), "low_labels")


def with_image_input(ov_model, mean: Sequence[float], std: Sequence[float]):
    """A copy of `ov_model` that takes RGB uint8 NCHW images: the conversion to float and (x - mean) / std
    run inside OpenVINO, next to the first convolution, instead of as separate passes over the frame."""
    from openvino.preprocess import PrePostProcessor

    ov = _openvino()
    ppp = PrePostProcessor(ov_model.clone())  # the processor rewrites the model it is given
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NCHW"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))  # per-channel mean and scale need to know where C is
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean([float(m) for m in mean]).scale([float(s) for s in std])
    return ppp.build()


def _norm_key(mean: Sequence[float], std: Sequence[float]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) as hashable floats: the key of the uint8-input graphs compiled for them."""
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


class OpenVINORunner(Runner):
    """An OpenVINO model compiled for the CPU: `NCHW tensor -> fp32 logits`, and `labels(x)` for the
    class map alone. Each is compiled on first use, so a caller that needs only one pays for one."""

    def __init__(self, ov_model, precision: str = "fp32", threads: int = 0, blob_cache: Optional[Tuple[Store, str]] = None) -> None:
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
        # (store, key of the model): each compiled network is kept there as a blob, so a second start skips compiling
        self.blob_cache = blob_cache
        self.precision = precision
        self.ov_model, self.config = ov_model, config
        self.checkpoint_meta = read_metadata(ov_model)
        self.model_name = self.checkpoint_meta.get("model_name", "model") + " (openvino)"
        self.num_classes = int(self.checkpoint_meta.get("num_classes", ov_model.outputs[0].get_partial_shape()[1].get_length()))
        # labels from the low-resolution logits (upsampled_argmax) where the graph ends in a bilinear upsampling;
        # False makes them inside the graph (upsample + arg-max), as before: benchmarks compare the two
        self.host_upsample = final_upsample(ov_model) is not None
        # A compiled model may be shared by threads, an infer request may not: each thread gets its own requests
        # (and throughput queues) of the models compiled once for all of them.
        self._lock = threading.Lock()
        self._compiled: Dict[Any, Any] = {}
        self._local = threading.local()

    @property
    def inference_precision(self) -> str:
        """The precision the plugin runs this runner's float layers in: its hint, else (int8) the plugin's default."""
        return plugin_precision(self.config.get("INFERENCE_PRECISION_HINT"))

    @property
    def runs_as(self) -> str:
        """int8's float layers (the first and last convolutions, the rest between the quantized ones) run in the
        plugin's default precision, which the name "openvino int8" does not say; fp32 and bf16 are pinned."""
        return f"float layers in {self.inference_precision}" if self.precision == "int8" else ""

    def compiled(self, output: str = "logits", image_input: Optional[Tuple[Sequence[float], Sequence[float]]] = None, **config):
        """The network compiled for the CPU with `output` "logits" or "labels", taking normalised float input, or
        uint8 images when `image_input` is (mean, std); `config` adds to the runner's settings (a hint, PERF_COUNT).
        With `host_upsample`, the labels graph stops at the low-resolution logits (`labels_of` finishes it)."""
        if output == "logits":
            model = self.ov_model
        else:
            model = with_low_labels(self.ov_model) if self.host_upsample else with_labels(self.ov_model)
        if image_input is not None:
            model = with_image_input(model, *image_input)
        config = {**self.config, **config}
        if self.blob_cache is None:
            return core().compile_model(model, "CPU", config)
        store, base = self.blob_cache
        settings = {"output": output, "image_input": image_input, "host_upsample": self.host_upsample, "config": config}
        name = f"{base[:40]}-{output}-{key_digest(base, settings, cache.package_versions(('openvino',)))}"

        def build(folder: Path) -> Dict[str, Any]:
            blob = core().compile_model(model, "CPU", config).export_model()
            (folder / "compiled.blob").write_bytes(blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob))
            return {"model": base, **settings}

        def load(entry: Entry):
            try:
                return core().import_model(entry.files["compiled.blob"], "CPU", config)
            except RuntimeError as e:
                raise DamagedEntry(f"OpenVINO cannot import it: {str(e).strip().splitlines()[0][:120]}", "compiled.blob") from None

        return store.get(name, build, load, key=settings)

    def _shared(self, output: str, image_input, **config):
        """`compiled(output, image_input, **config)`, compiled once for every thread."""
        key = (output, image_input, self.host_upsample, tuple(sorted(config.items())))
        with self._lock:
            if key not in self._compiled:
                self._compiled[key] = self.compiled(output, image_input, **config)
            return self._compiled[key]

    def release_memory(self) -> None:
        """Each compiled network lets go of its intermediate buffers, which OpenVINO keeps sized for the largest
        input it has run (one 4096x4096 image holds hundreds of MB after it is answered). Only while nothing runs."""
        with self._lock:
            for compiled in self._compiled.values():
                with contextlib.suppress(AttributeError, RuntimeError):  # OpenVINO before 2024.3 has no release_memory
                    compiled.release_memory()

    def _thread_cache(self, name: str) -> Dict[Any, Any]:
        cache = getattr(self._local, name, None)
        if cache is None:
            cache = {}
            setattr(self._local, name, cache)
        return cache

    def request(self, output: str = "logits", image_input: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None):
        """This thread's infer request of `compiled(output, image_input)`, compiled on first use."""
        requests = self._thread_cache("requests")
        key = (output, image_input, self.host_upsample)
        if key not in requests:
            requests[key] = self._shared(output, image_input).create_infer_request()
        return requests[key]

    @staticmethod
    def outputs(request) -> Tuple[np.ndarray, ...]:
        """Copies of a finished request's outputs (what `labels_of` takes)."""
        return tuple(t.data.copy() for t in request.output_tensors)

    def labels_of(self, outputs: Tuple[np.ndarray, ...]) -> np.ndarray:
        """NxHxW class indices from the `outputs` of a labels graph: as they are, or made from the
        low-resolution logits and the size when the graph stops before the upsampling."""
        if len(outputs) == 1:
            return outputs[0]
        low, size = outputs
        if not len(low):
            return np.zeros((0, *size.tolist()), label_dtype(low.shape[1]))
        return np.stack([upsampled_argmax(one, size.tolist()) for one in low])

    def _infer(self, x: torch.Tensor, output: str) -> Tuple[np.ndarray, ...]:
        request = self.request(output)
        request.infer([np.ascontiguousarray(x.detach().cpu().float().numpy())])
        return self.outputs(request)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._infer(x, "logits")[0])

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """NxHxW class indices (uint8 up to 256 classes): the arg-max of the upsampled logits, made from the
        low-resolution ones where the graph allows (`host_upsample`), else inside OpenVINO."""
        return torch.from_numpy(self.labels_of(self._infer(x, "labels")))

    def image_label_stream(self, items: Iterable[Tuple[Any, Optional[np.ndarray]]],
                           normalize: Normalize) -> Iterator[Tuple[Any, Optional[np.ndarray]]]:  # fmt: skip
        """(key, HxW class indices) for each (key, HxWx3 RGB uint8 image) of `items`, in their order, several
        frames in flight at once on OpenVINO's throughput streams (one per core or so, each on its own
        threads): a folder or a video keeps every core busy. An item whose image is None passes through as
        (key, None) at its turn. One stream at a time per thread; threads have queues of their own."""
        norm = _norm_key(normalize.mean, normalize.std)
        streams = self._thread_cache("streams")
        queue = streams.get((norm, self.host_upsample))
        if queue is None:
            compiled = self._shared("labels", norm, PERFORMANCE_HINT="THROUGHPUT")
            queue = _openvino().AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            streams[(norm, self.host_upsample)] = queue
        done: Dict[int, Optional[Tuple[np.ndarray, ...]]] = {}
        keys: Dict[int, Any] = {}
        queue.set_callback(lambda request, i: done.__setitem__(i, self.outputs(request)))

        def ready() -> Iterator[Tuple[Any, Optional[np.ndarray]]]:
            nonlocal turn
            while turn in done:  # the upsampling (if any) runs here, beside the frames still in flight
                outputs = done.pop(turn)
                yield keys.pop(turn), None if outputs is None else self.labels_of(outputs)[0]
                turn += 1

        turn = 0
        try:
            for i, (key, image) in enumerate(items):
                keys[i] = key
                if image is None:
                    done[i] = None
                else:  # waits while every request is busy
                    queue.start_async([np.ascontiguousarray(image.transpose(2, 0, 1)[None])], userdata=i)
                yield from ready()
            queue.wait_all()
            yield from ready()
            if keys:
                raise RuntimeError(f"OpenVINO returned no labels for {len(keys)} frame(s) of the stream")
        finally:
            queue.wait_all()  # nothing is left running into the next stream's callback

    def image_labels(self, images: np.ndarray, normalize: Normalize) -> torch.Tensor:
        """NxHxW class indices of NxHxWx3 RGB uint8 `images`: conversion and normalisation run inside OpenVINO,
        so no float copy of the frame is made in Python; the labels as `labels` makes them."""
        request = self.request("labels", _norm_key(normalize.mean, normalize.std))
        request.infer([np.ascontiguousarray(images.transpose(0, 3, 1, 2))], share_inputs=True)
        return torch.from_numpy(self.labels_of(self.outputs(request)))


def cached_ir(model: nn.Module, int8: bool, calibration: Optional[Sequence[torch.Tensor]], cache_dir: Optional[PathLike] = None,
              preset: str = QUANT_PRESET) -> Entry:  # fmt: skip
    """The IR of `model` (float, or int8 quantized on `calibration`) as a checked cache entry (model.xml and
    model.bin): converted once, then read from the store (`runtimes.cache.model_store`); `read_ir` makes the model."""
    kind = f"int8-{preset}" if int8 else "float"
    key = cache.cache_key(model, kind, calibration, code=[sys.modules[__name__]])

    def build(folder: Path) -> Dict[str, Any]:
        ov_model = convert(model)
        info: Dict[str, Any] = {"versions": cache.package_versions(), "cpu": cpu_flags()}
        if int8:
            ov_model = quantize(ov_model, calibration or [], preset=preset)
            info["agreement"] = label_agreement(model, OpenVINORunner(ov_model, "int8"), calibration or [])
        _openvino().save_model(ov_model, str(folder / "model.xml"), compress_to_fp16=False)
        return info

    def load(entry: Entry) -> Entry:
        if {"model.xml", "model.bin"} - set(entry.files):
            raise DamagedEntry("it holds no model.xml and model.bin")
        return entry

    return cache.model_store("openvino", cache_dir).get(f"{model.model_name}-{kind}-{key}", build, load,
                                                        key={"model": model.model_name, "kind": kind})  # fmt: skip


def read_ir(entry: Entry):
    """The OpenVINO model of a cached IR, made from the very bytes the store checked."""
    ov = _openvino()
    weights = ov.Tensor(np.frombuffer(entry.files["model.bin"], np.uint8).copy())
    return core().read_model(entry.files["model.xml"].decode(), weights)


def label_agreement(model: nn.Module, runner, batches: Iterable[torch.Tensor]) -> float:
    """Share of pixels where `runner` predicts the class that `model` (eager fp32) does."""
    same = total = 0
    with torch.inference_mode():
        for x in batches:
            a, b = labels_from_logits(model.eval().cpu()(x.float().cpu())), labels_from_logits(runner(x))
            same, total = same + int((a == b).sum()), total + a.numel()
    return same / max(total, 1)


def openvino_runner(
    model: nn.Module, precision: str = "fp32", calibration: Optional[Sequence[torch.Tensor]] = None,
    cache_dir: Optional[PathLike] = None, preset: str = QUANT_PRESET,
) -> OpenVINORunner:  # fmt: skip
    """`model` run by OpenVINO at `precision` (fp32, bf16, int8); int8 quantizes on `calibration` with NNCF's
    `preset` (mixed: asymmetric activations; performance: symmetric)."""
    if precision == "int8" and not calibration:
        raise ValueError("OpenVINO int8 needs calibration batches (normalised training images)")
    if precision not in OV_PRECISIONS:
        raise ValueError(f"the openvino backend runs {', '.join(OV_PRECISIONS)}; got {precision!r}")
    entry = cached_ir(model, precision == "int8", calibration if precision == "int8" else None, cache_dir, preset)
    # the blobs' key cites the IR's own content, so a blob is never used with an IR it was not compiled from
    base = f"{entry.folder.name}-{key_digest(entry.digests)[:8]}"
    runner = OpenVINORunner(read_ir(entry), precision, blob_cache=(cache.model_store("openvino-compiled", cache_dir), base))
    runner.info = entry.info
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


def _prepare(model: nn.Module, precision: str = "fp32", device: str = "cpu", channels_last: Optional[bool] = None,
             calibration: Optional[Sequence[torch.Tensor]] = None) -> OpenVINORunner:  # fmt: skip
    return openvino_runner(model.eval(), precision, list(calibration) if calibration is not None else None)


def _export(model: nn.Module, path: Path) -> Path:
    return export_ir(model.eval(), path)


def open_ir(path: Path) -> ExportedFile:
    """An IR read once (reading compiles nothing): its description now, compiled for the precision asked when run."""
    ov_model = core().read_model(str(path))
    meta = read_metadata(ov_model)
    channels = ov_model.outputs[0].get_partial_shape()[1]
    if "num_classes" not in meta and channels.is_static:
        meta["num_classes"] = channels.get_length()  # a foreign IR: the logits' channels
    quantized = any(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops())  # NNCF's int8 (cached_ir)
    return ExportedFile(Path(path), "openvino", meta, lambda precision, device: OpenVINORunner(ov_model, precision),
                        precisions=("int8",) if quantized else ())  # fmt: skip


register_runtime(Runtime(
    "openvino", "OpenVINO's CPU plugin in fp32, bf16 or int8 (NNCF), labels from the low-resolution logits", _prepare,
    precisions=tuple(OV_PRECISIONS), calibrated=("int8",), runner=OpenVINORunner, suffixes=(".xml",),
    open=open_ir, export_format="openvino",
    export=_export, export_files=lambda path: (path, path.with_suffix(".bin")),
    default_precision=default_precision,
))  # fmt: skip
