"""Inference: load a model once, segment RGB arrays, read images robustly."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import input_normalisation, load_model
from .data.classes import DATASET_INFO, default_palette
from .data.datasets import IMAGE_SUFFIXES, ImageReadError, read_image  # noqa: F401  (public here too)

PathLike = Union[str, os.PathLike]


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Bring an HxW, HxWx1, HxWx3 or HxWx4 array to HxWx3 uint8 RGB."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


class Segmenter:
    """Load a model once and segment RGB images: `predict(HxWx3 uint8) -> HxW uint8`."""

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float] = (1.0, 1.0, 1.0),
        class_names: Optional[Sequence[str]] = None,
        palette: Optional[Sequence[Tuple[int, int, int]]] = None,
        device: Union[str, torch.device] = "cpu",
        runner=None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._run = runner if runner is not None else self.model  # a backend from dabnet.backends.prepare
        n = int(getattr(model, "num_classes", len(class_names or [])))
        self.class_names = list(class_names) if class_names else [f"class {i}" for i in range(n)]
        self.palette = [tuple(c) for c in palette] if palette else default_palette(n)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_checkpoint(
        cls,
        path: PathLike,
        device: Union[str, torch.device] = "cpu",
        backend: str = "fold",
        precision: str = "fp32",
        channels_last: Optional[bool] = None,
    ) -> "Segmenter":
        """A Segmenter whose normalisation, class names and colours come from the checkpoint.

        `backend` is one of dabnet.backends.BACKENDS (eager, fold, compile, int8, onnxruntime); the
        default, BatchNorm folding, gives eager's outputs faster with no start-up cost. An exported
        .onnx file always runs with ONNX Runtime.
        """
        from .backends import prepare

        runner = None
        if str(path).endswith(".onnx"):
            from .export import OrtModel

            model = OrtModel(path)
        else:
            model = load_model(path)
            if backend != "eager" or precision != "fp32" or channels_last is not None:
                runner = prepare(model, backend, precision, str(device), channels_last=channels_last)
        return cls.for_model(model, device, runner)

    @classmethod
    def for_model(cls, model: nn.Module, device: Union[str, torch.device] = "cpu", runner=None) -> "Segmenter":
        """A Segmenter for a loaded model: normalisation, class names and colours from its checkpoint
        metadata, else from CamVid (11 classes) or Cityscapes."""
        meta = getattr(model, "checkpoint_meta", {})
        info = DATASET_INFO["camvid" if model.num_classes == 11 else "cityscapes"]
        mean, std = input_normalisation(meta, info["mean"], info["std"])
        return cls(
            model,
            mean=mean,
            std=std,
            class_names=meta.get("class_names", info["classes"]),
            palette=meta.get("palette", info["palette"]),
            device=device,
            runner=runner,
        )

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack same-size RGB uint8 images into a normalised NCHW float tensor."""
        batch = np.stack([to_rgb(im) for im in images])
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        return (x - self._mean) * self._inv_std

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Label maps for a list of images; images of one size run as one batch."""
        out: List[Optional[np.ndarray]] = [None] * len(images)
        by_size: dict = {}
        for i, im in enumerate(images):
            by_size.setdefault(im.shape[:2], []).append(i)
        for idx in by_size.values():
            logits = self._run(self.preprocess([images[i] for i in idx]))
            labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = labels[j]
        return out  # type: ignore[return-value]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """HxW uint8 label map of one RGB (or grayscale/RGBA) image."""
        return self.predict_batch([image])[0]


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def expand_inputs(inputs: Sequence[str]) -> Tuple[List[Path], List[Union[Path, int]], List[str]]:
    """Split command-line inputs into image files, video sources (files or webcam indices) and
    inputs that matched nothing. Folders give their images (sorted); globs are expanded."""
    import glob

    images: List[Path] = []
    videos: List[Union[Path, int]] = []
    missing: List[str] = []
    for item in inputs:
        if item.isdigit() and not Path(item).exists():
            videos.append(int(item))  # a webcam index
            continue
        paths = [Path(p) for p in sorted(glob.glob(item))] if any(c in item for c in "*?[") else [Path(item)]
        if not paths or not all(p.exists() for p in paths):
            missing.append(item)
            continue
        for p in paths:
            if p.is_dir():
                images += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
                videos += sorted(q for q in p.iterdir() if q.suffix.lower() in VIDEO_SUFFIXES)
            elif p.suffix.lower() in VIDEO_SUFFIXES:
                videos.append(p)
            else:
                images.append(p)
    return images, videos, missing


def _write_outputs(seg: Segmenter, image: np.ndarray, label: np.ndarray, out: Path, stem: str, fmt: str) -> None:
    from PIL import Image

    from .visualize import colorize, overlay

    if fmt == "cityscapes":
        from .data.datasets import train_ids_to_label_ids

        Image.fromarray(train_ids_to_label_ids(label)).save(out / f"{stem}.png")
        return
    colour = colorize(label, seg.palette)
    Image.fromarray(label).save(out / f"{stem}_label.png")
    Image.fromarray(colour).save(out / f"{stem}_color.png")
    Image.fromarray(overlay(image, colour)).save(out / f"{stem}_overlay.png")


def predict_images(seg: Segmenter, paths: Sequence[Path], out: Path, fmt: str = "default", batch_size: int = 1, log=print) -> Dict[str, Any]:
    """Segment image files in batches; unreadable files are reported and skipped."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    done, failed, seconds = 0, [], 0.0
    bar = tqdm(total=len(paths), desc="predict", unit="img", dynamic_ncols=True)
    for start in range(0, len(paths), batch_size):
        batch, names = [], []
        for p in paths[start : start + batch_size]:
            try:
                batch.append(to_rgb(read_image(p)))
                names.append(p)
            except (ImageReadError, FileNotFoundError, ValueError) as e:
                failed.append(str(p))
                bar.write(f"skipped {p}: {e}")
                bar.update(1)
        if not batch:
            continue
        t0 = time.perf_counter()
        labels = seg.predict_batch(batch)
        seconds += time.perf_counter() - t0
        for p, image, label in zip(names, batch, labels):
            _write_outputs(seg, image, label, out, p.stem, fmt)
        done += len(batch)
        bar.update(len(batch))
        bar.set_postfix(fps=f"{done / max(seconds, 1e-9):.1f}")
    bar.close()
    fps = done / seconds if seconds else 0.0
    log(f"{done} image(s) segmented, {len(failed)} skipped, {fps:.1f} FPS (model time) -> {out}")
    return {"images": done, "skipped": failed, "fps": fps}


def predict_video(seg: Segmenter, source: Union[Path, int], out: Path, max_frames: int = 0, log=print) -> Dict[str, Any]:
    """Segment a video file or webcam stream frame by frame; writes an overlaid video."""
    try:
        import cv2
    except ImportError as e:
        raise RuntimeError("video needs OpenCV: pip install 'dabnet[video]'") from e
    from tqdm import tqdm

    from .visualize import colorize, overlay

    cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not cap.isOpened():
        raise ImageReadError(f"cannot open video {source}: not a readable video file or camera")
    fps_in = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not isinstance(source, int) else 0
    name = f"webcam{source}" if isinstance(source, int) else Path(source).stem
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}_overlay.mp4"
    writer = None
    frames, seconds = 0, 0.0
    bar = tqdm(total=total or None, desc=name, unit="frame", dynamic_ncols=True)
    try:
        while not max_frames or frames < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            t0 = time.perf_counter()
            label = seg.predict(rgb)
            seconds += time.perf_counter() - t0
            blend = overlay(rgb, colorize(label, seg.palette))
            if writer is None:
                h, w = rgb.shape[:2]
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps_in, (w, h))
            writer.write(cv2.cvtColor(blend, cv2.COLOR_RGB2BGR))
            frames += 1
            bar.update(1)
            bar.set_postfix(fps=f"{frames / max(seconds, 1e-9):.1f}")
    except KeyboardInterrupt:  # a webcam runs until Ctrl-C; keep what was written
        pass
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    fps = frames / seconds if seconds else 0.0
    log(f"{name}: {frames} frame(s), {fps:.1f} FPS (model time) -> {target}")
    return {"frames": frames, "fps": fps, "video": str(target)}
