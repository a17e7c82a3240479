"""`Segmenter`: a model loaded once, run by one of the runtimes, turning RGB images into label maps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..data.classes import default_palette
from ..io.images import PathLike, read_image
from ..io.preprocessing import MIN_SIDE, ImageTypeError, Normalize, as_rgb_array, edge_pad_images
from ..models import pretrained_config
from ..runtimes import (
    AUTO,
    Runner,
    as_runner,
    calibration_batches,
    load_exported,
    predict_image_labels,
    prepare,
    prepare_auto,
    resolve_device,
)
from ..util.state import trim_heap
from .spec import ModelSpec, describe


def pass_pixels(height: int, width: int) -> int:
    """The pixels one pass over an image sees: sides under MIN_SIDE are padded to it, so a 1-pixel-high strip costs
    16 rows (what `max_pixels` bounds, and what admission counts)."""
    return max(MIN_SIDE, height) * max(MIN_SIDE, width)


def tile_cores(height: int, width: int, max_pixels: int, margin: int) -> Tuple[int, int]:
    """(rows, columns) of the centre of each tile an image over `max_pixels` is cut into (each seen with `margin`
    pixels of context on its inner sides): squares, except that a side fitting in one square is taken whole and
    the other stretched to fill the budget, so a thin strip runs as a few long passes, not thousands of padded ones."""
    square = max(8, (int(max_pixels**0.5) - 2 * margin) // 8 * 8)  # multiples of 8: tiles start on the output grid
    if height <= square < width:
        return height, max(square, (max_pixels // max(height, MIN_SIDE) - 2 * margin) // 8 * 8)
    if width <= square < height:
        return max(square, (max_pixels // max(width, MIN_SIDE) - 2 * margin) // 8 * 8), width
    return square, square


def label_map_dtype(num_classes: int) -> np.dtype:
    """The dtype of the label maps of a `num_classes`-class model: uint8 up to 256 classes, uint16 beyond (a class
    id never wraps around; both write as PNG, 8- or 16-bit)."""
    if num_classes > 65536:
        raise ValueError(f"{num_classes} classes: label maps hold at most 65536 (16-bit PNG)")
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)


def _rebuild(source: str, options: dict) -> "Segmenter":
    """A Segmenter made again from its file or bundled name and options (how one unpickles)."""
    return Segmenter.from_checkpoint(source, log=None, **options)


def _prepared(spec: ModelSpec, device: torch.device, backend: str, precision: str, channels_last: Optional[bool],
              log: Optional[Callable[[str], None]]) -> Tuple[Any, Runner]:  # fmt: skip
    """(model, runner) for what `describe` found: an exported file's runner is both (it carries its metadata); a network
    is built and run by `backend`, `auto` choosing one and saying what through `log`."""
    if spec.exported:  # runs as exported: what its runtime cannot honour is refused, not ignored
        if channels_last is not None:
            raise ValueError(f"--channels-last sets the layout of a PyTorch network; {spec.source} runs as exported by "
                             f"{spec.runtime}: drop the option")  # fmt: skip
        runner = load_exported(spec.weights or spec.source, precision, str(device))
        return runner, runner
    model = spec.build()
    calibration = lambda: calibration_batches(spec.mean, spec.std)  # noqa: E731  read only if the runtime quantizes
    if backend != AUTO:
        return model, prepare(model, backend, precision, str(device), channels_last, calibration)
    if channels_last is not None:
        raise ValueError("--channels-last chooses a PyTorch backend's layout, but --backend auto picks the backend "
                         "(and its layout) itself: give --backend fold or eager with it, or drop it")  # fmt: skip
    runner = prepare_auto(model, str(device), Normalize(spec.mean, spec.std, device), calibration)
    if log:
        log(f"backend auto -> {runner.label}: {runner.reason}")
    return model, runner


class Segmenter:
    """Load a model once and segment RGB images: `predict(HxWx3 uint8) -> HxW uint8` (uint16 past 256 classes).

    `model` is a network (run as is unless `runner` is given) or a runner that carries its own
    metadata (an ONNX file's `OrtRunner`). `mean`/`std` are the 0-255 RGB normalisation.

    Memory is bounded by `max_pixels`, the most pixels one forward pass sees: same-size images are batched up
    to it, and a larger image runs as overlapping tiles of at most that size, each contributing its centre
    (`tile_margin` pixels of context on every inner side), so a 100-megapixel photo costs little more than
    its own bytes."""

    max_pixels = 2048 * 2048
    tile_margin = 128  # a multiple of 8: tiles start on the network's output grid

    def __init__(
        self,
        model: Any,
        mean: Sequence[float],
        std: Sequence[float] = (1.0, 1.0, 1.0),
        class_names: Optional[Sequence[str]] = None,
        palette: Optional[Sequence[Tuple[int, int, int]]] = None,
        device: Union[str, torch.device] = "cpu",
        runner: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        backend: str = "eager",
        scale: float = 1.0,
    ) -> None:
        if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and 0.1 <= scale <= 4):
            raise ValueError(f"scale={scale!r} is not valid: the factor images are resized by before the network, in [0.1, 4] "
                             "(1: as they are; 1.5 is more accurate and slower)")  # fmt: skip
        self.scale = float(scale)  # the network sees each image resized by this; labels come back at the image's size
        self._recipe: Optional[Tuple[str, dict]] = None  # (source, from_checkpoint options): how to make it again
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if isinstance(model, nn.Module) else model
        self.run = as_runner(runner if runner is not None else self.model)
        self.backend = backend  # how predictions are made: 'fold', 'openvino int8', 'onnxruntime', ...
        n = int(getattr(model, "num_classes", len(class_names or [])))
        self.class_names = list(class_names) if class_names else [f"class {i}" for i in range(n)]
        self.palette = [tuple(c) for c in palette] if palette else default_palette(n)
        self.label_dtype = label_map_dtype(max(n, len(self.class_names)))  # what predict returns: uint8, uint16 past 256 classes
        self.backend_reason = self.run.reason  # why `auto` chose it (empty when it was not chosen)
        self.spec: Optional[ModelSpec] = None  # what describe found (set by from_checkpoint and for_model)
        self.normalize = Normalize(mean, std, self.device)
        self.mean, self.std = self.normalize.mean, self.normalize.std

    @property
    def model_name(self) -> str:
        return str(getattr(self.model, "model_name", "model"))

    @property
    def meta(self) -> dict:
        """The checkpoint metadata of the model (empty for a bare network)."""
        return dict(getattr(self.model, "checkpoint_meta", {}))

    @classmethod
    def from_checkpoint(
        cls,
        source: Union[PathLike, nn.Module, ModelSpec],
        device: Union[str, torch.device] = "auto",
        backend: str = "auto",
        precision: str = "fp32",
        channels_last: Optional[bool] = None,
        log: Optional[Callable[[str], None]] = print,
        scale: float = 1.0,
    ) -> "Segmenter":
        """A Segmenter for a checkpoint file, a bundled name, an exported model, a network already loaded by
        `dabnet.load_model`, or what `describe` found of one (a ModelSpec: nothing is read again), run by `backend`
        (one of `runtimes.backend_names()`) on `device`, on images resized by `scale` (labels at each image's own size).
        The default device, `auto`, is the GPU when there is one and the backend (or an exported file's runtime) runs
        there, else the CPU (`runtimes.resolve_device`).

        Normalisation, class names and colours come from the description. The default backend, `auto`, picks the
        fastest accurate runtime for the device (`runtimes.choose_auto`) and says what it chose and why through `log`;
        `precision` then follows that choice. An exported file runs with the runtime its suffix names.
        int8 calibrates on the bundled train frames."""
        spec = source if isinstance(source, ModelSpec) else describe(source)
        device = resolve_device(str(device), backend, spec.source if isinstance(spec.source, str) else None)
        model, runner = _prepared(spec, device, backend, precision, channels_last, log)
        seg = cls(model, spec.mean, spec.std, spec.class_names, spec.palette, device, runner, runner.label, scale)
        seg.spec = spec
        if isinstance(spec.source, str) and Path(spec.source).exists() or pretrained_config(spec.source) is not None:
            seg._recipe = (spec.source, dict(device=str(device), backend=backend, precision=precision,
                                             channels_last=channels_last, scale=scale))  # fmt: skip
        return seg

    @classmethod
    def for_model(cls, model: Any, device: Union[str, torch.device] = "cpu", runner=None, backend: str = "eager") -> "Segmenter":
        """A Segmenter for a network in memory built by dabnet, described by `describe` (normalisation, class names and
        colours from its checkpoint metadata), run as it is or by `runner` if given (named `backend`)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"for_model takes a network built by dabnet, got a {type(model).__name__}; use from_checkpoint")
        spec = describe(model)
        seg = cls(model, spec.mean, spec.std, spec.class_names, spec.palette, device, runner, backend)
        seg.spec = spec
        return seg

    def __reduce__(self):
        """Pickled (and deep-copied) as what made it: the file or bundled name and the options, prepared again on
        load (a compiled runtime holds native state no pickle carries)."""
        if self._recipe is None:
            raise TypeError("this Segmenter was built around a network in memory, which it cannot pickle; build it with "
                            "Segmenter.from_checkpoint(PATH or bundled name), which pickles, or send the path instead")  # fmt: skip
        source, options = self._recipe
        return _rebuild, (source, options)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack same-size RGB uint8 images into a normalised NCHW float tensor."""
        return self.normalize(images)

    @staticmethod
    def _image(image: Any) -> np.ndarray:
        if isinstance(image, (str, Path)):
            return read_image(image)
        return as_rgb_array(image)

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[Any]) -> List[np.ndarray]:
        """Label maps for a list of images (arrays, PIL images, tensors or file paths); images of one size run as
        one batch."""
        stacked = isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4
        if not (isinstance(images, (list, tuple)) or stacked):
            raise ImageTypeError(f"predict_batch takes a list of images, got a {type(images).__name__}; use predict for one image")
        originals = [self._image(im) for im in images]
        images = [self._rescaled(im) for im in originals]
        out: List[Optional[np.ndarray]] = [None] * len(images)
        by_size: dict = {}
        for i, im in enumerate(images):
            by_size.setdefault(im.shape[:2], []).append(i)
        for (h, w), idx in by_size.items():
            if pass_pixels(h, w) > self.max_pixels:
                for i in idx:
                    out[i] = self._tiled(images[i])
                continue
            per_pass = max(1, self.max_pixels // pass_pixels(h, w))
            for start in range(0, len(idx), per_pass):
                chunk = idx[start : start + per_pass]
                labels = self._labels([images[i] for i in chunk])
                for j, i in enumerate(chunk):
                    out[i] = labels[j]
        return [self._restored(lab, im.shape[:2]) for lab, im in zip(out, originals)]  # type: ignore[arg-type]

    def _rescaled(self, image: np.ndarray) -> np.ndarray:
        """The image as the network sees it: resized by `scale` (bilinear), one pixel per side at least."""
        if self.scale == 1.0:
            return image
        from PIL import Image

        h, w = image.shape[:2]
        size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))

    def _restored(self, labels: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
        """Labels of a rescaled image at the image's own size (nearest neighbour: labels never blend)."""
        if labels.shape[:2] == tuple(shape):
            return labels
        from PIL import Image

        return np.asarray(Image.fromarray(labels).resize((shape[1], shape[0]), Image.NEAREST))

    def _labels(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._label_map(predict_image_labels(self.run, images, self.normalize))

    def _label_map(self, labels: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
        """Class indices as `label_dtype`; an index past what it holds (a model of more classes than the class names
        it was given) is an error, never a value wrapped around to another class."""
        labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        top = int(labels.max(initial=0))
        if top > np.iinfo(self.label_dtype).max:
            raise ValueError(f"the model predicted class {top}, but this Segmenter has {len(self.class_names)} class names; "
                             "give it the model's class_names")  # fmt: skip
        return labels.astype(self.label_dtype, copy=False)

    def _tiled(self, image: np.ndarray) -> np.ndarray:
        """The label map of an image over `max_pixels`, tile by tile: each tile's centre, seen with its margin."""
        h, w = image.shape[:2]
        m = self.tile_margin
        core_h, core_w = tile_cores(h, w, self.max_pixels, m)
        out = np.empty((h, w), dtype=self.label_dtype)
        for y0 in range(0, h, core_h):
            for x0 in range(0, w, core_w):
                y1, x1 = min(y0 + core_h, h), min(x0 + core_w, w)
                ya, xa = max(0, y0 - m), max(0, x0 - m)
                tile = self._labels([image[ya : min(h, y1 + m), xa : min(w, x1 + m)]])[0]
                out[y0:y1, x0:x1] = tile[y0 - ya : y1 - ya, x0 - xa : x1 - xa]
        return out

    def predict_stream(self, items: Iterable[Tuple[Any, Any]]) -> Iterator[Tuple[Any, np.ndarray, np.ndarray]]:
        """(key, HxWx3 RGB image, HxW label map as `predict` returns) for each (key, image) of `items`, in their order. On a
        runtime with throughput streams (OpenVINO) several frames are in flight at once, so a folder or a video
        keeps every core busy; elsewhere, and for images over `max_pixels` (tiled), one after another."""
        kept: dict = {}

        def feed() -> Iterator[Tuple[int, Optional[np.ndarray]]]:
            for i, (key, image) in enumerate(items):
                image = self._image(image)
                seen = self._rescaled(image)
                kept[i] = (key, image, seen)
                h, w = seen.shape[:2]
                yield i, None if pass_pixels(h, w) > self.max_pixels else edge_pad_images(seen)  # None: tiled at its turn below

        for i, label in self.run.image_label_stream(feed(), self.normalize):
            key, image, seen = kept.pop(i)
            h, w = seen.shape[:2]
            label = self._tiled(seen) if label is None else self._label_map(label[:h, :w])
            yield key, image, self._restored(label, image.shape[:2])

    def release_memory(self) -> None:
        """Lets go of what the runtime keeps sized for the largest image seen so far and returns the freed heap to
        the OS, so that one large image does not hold the process at its peak while idle. Only while nothing runs."""
        self.run.release_memory()
        trim_heap()

    def predict(self, image: Any) -> np.ndarray:
        """HxW label map of one image (uint8; uint16 for models of more than 256 classes): an RGB (or grey/RGBA)
        array, a PIL image, a tensor or a path, read by the input rule (`dabnet.io.preprocessing.INPUT_RULE`: NumPy
        and PIL images HxW or HxWxC, tensors CxHxW); an image it cannot read is an ImageInputError."""
        if isinstance(image, (list, tuple)):
            raise ImageTypeError(f"predict takes one image, got a {type(image).__name__} of {len(image)}; use predict_batch for several")
        return self.predict_batch([image])[0]
