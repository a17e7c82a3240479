"""The Runner protocol every runtime implements, and the one route from images to labels through it.

A runner is a network made ready by a runtime: `runner(x)` maps a normalised NCHW float batch to fp32 logits.
`labels`, `image_labels` and `image_label_stream` have defaults built on that call; a runtime that does better
(OpenVINO makes the arg-max, the normalisation and a throughput queue inside its graph) overrides them, so a
caller always calls the same three methods and never asks what a runner happens to have."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..io.preprocessing import Normalize, edge_pad_images, pad_to_min_side
from ..util.metrics import labels_from_logits


class Runner:
    """A prepared network. Subclasses implement `__call__`; the label routes default to the logits' arg-max.

    `info` holds what preparing found (an int8 model's label agreement with fp32, ...); `label` is how the
    runner is named in logs and tables ('fold', 'openvino int8 (float layers in bf16)'), `reason` why `auto` chose
    it; `runs_as` what decides what runs where backend and precision do not say it (empty for most)."""

    backend: str = ""
    precision: str = "fp32"
    label: str = ""
    reason: str = ""
    runs_as: str = ""

    @property
    def info(self) -> Dict[str, Any]:
        return self.__dict__.setdefault("_info", {})

    @info.setter
    def info(self, value: Dict[str, Any]) -> None:
        self.__dict__["_info"] = dict(value)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not say how to run a batch: implement __call__")

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """NxHxW class indices of a normalised NCHW batch."""
        return labels_from_logits(self(x))

    def image_labels(self, images: np.ndarray, normalize: Normalize) -> torch.Tensor:
        """NxHxW class indices of NxHxWx3 RGB uint8 `images`, normalised by `normalize`."""
        return self.labels(normalize(images))

    def image_label_stream(self, items: Iterable[Tuple[Any, Optional[np.ndarray]]],
                           normalize: Normalize) -> Iterator[Tuple[Any, Optional[np.ndarray]]]:  # fmt: skip
        """(key, HxW class indices) for each (key, HxWx3 RGB uint8 image) of `items`, in their order; an item whose
        image is None passes through as (key, None). One after another here; runtimes with queues overlap them."""
        for key, image in items:
            yield key, None if image is None else self.image_labels(image[None], normalize)[0].cpu().numpy()

    def release_memory(self) -> None:
        """Lets go of buffers kept sized for the largest input run so far; the next call makes what it needs.
        Nothing here: PyTorch's allocator frees a tensor when it dies. Call it only while nothing runs."""


class FunctionRunner(Runner):
    """A runner around a callable `NCHW tensor -> logits` (a PyTorch network, a compiled function)."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], info: Optional[Dict[str, Any]] = None) -> None:
        self.forward = forward
        self.info = info or {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.forward(x)


def as_runner(obj: Any) -> Runner:
    """`obj` as a Runner: itself when it is one, else a FunctionRunner around the callable (a runtime registered
    outside dabnet may return a plain function)."""
    if isinstance(obj, Runner):
        return obj
    if not callable(obj):
        raise TypeError(f"a runtime returned a {type(obj).__name__}, which cannot run a batch: return a dabnet.runtimes.Runner")
    runner = FunctionRunner(obj)
    for name in ("checkpoint_meta", "model_name", "num_classes"):  # what an exported file's runner describes itself by
        if hasattr(obj, name):
            setattr(runner, name, getattr(obj, name))
    return runner


def predict_labels(runner: Runner, x: torch.Tensor) -> torch.Tensor:
    """NxHxW class indices of a normalised batch of any size (a 1x1 image runs on every backend, the same way)."""
    h, w = x.shape[-2:]
    return as_runner(runner).labels(pad_to_min_side(x))[..., :h, :w]


def predict_logits(runner: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scales: Sequence[float] = (1.0,),
                   flip: bool = False) -> torch.Tensor:  # fmt: skip
    """fp32 logits of a normalised NCHW batch at its own size; over several test-time views (`scales`, horizontal
    `flip`), the sum of their softmax. Each view is resized from `x` (bilinear, one pixel a side at least), padded as
    `predict_labels` pads, run, mirrored back and resized to `x`'s size."""
    size = (x.shape[2], x.shape[3])
    views = len(scales) * (2 if flip else 1)
    out: Optional[torch.Tensor] = None
    for s in scales:
        if s == 1.0:
            xs = x
        elif int(size[0] * s) >= 1 and int(size[1] * s) >= 1:
            xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        else:  # a scale that leaves no pixel: one pixel per side at least
            least = (max(1, int(size[0] * s)), max(1, int(size[1] * s)))
            xs = F.interpolate(x, size=least, mode="bilinear", align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            v = xs.flip(3) if mirrored else xs
            logits = runner(pad_to_min_side(v)).float()[..., : v.shape[2], : v.shape[3]]
            if mirrored:
                logits = logits.flip(3)
            if logits.shape[2:] != x.shape[2:]:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            prob = logits.softmax(1) if views > 1 else logits
            out = prob if out is None else out + prob
    assert out is not None
    return out


def predict_image_labels(runner: Runner, images: Sequence[np.ndarray], normalize: Normalize,
                         scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
    """NxHxW class indices of same-size HxWx3 RGB uint8 `images` of any size: the one route from images to labels,
    taken by `Segmenter` (predict, serve), `dabnet eval` and training's validation alike, so that what is scored is
    what is written. One view goes through the runner's own `image_labels` (OpenVINO normalises in its graph and
    takes the arg-max from the low-resolution logits); test-time `scales` and `flip` sum the views' softmax
    (`predict_logits`) and take its arg-max."""
    images = np.stack(images)
    h, w = images.shape[1:3]
    runner = as_runner(runner)
    if tuple(scales) == (1.0,) and not flip:
        return runner.image_labels(edge_pad_images(images), normalize)[..., :h, :w]
    return labels_from_logits(predict_logits(runner, normalize(images), scales, flip))
