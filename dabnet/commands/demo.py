"""`dabnet demo`: segment the bundled CamVid frames, write pictures, report latency and FPS."""

from __future__ import annotations

import dataclasses
import os
import time
from importlib import resources
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from ..config import DemoConfig
from ..data import get_dataset
from ..data.classes import CAMVID_IGNORE_INDEX
from ..inference.outputs import write_outputs
from ..inference.segmenter import Segmenter
from ..io.checkpoint import resolve_checkpoint
from ..io.images import READ_FORMATS, read_image
from ..io.visualize import colorize, side_by_side
from ..models import create_model
from ..runtimes import resolve_device
from ..util.files import atomic_output, check_output_folder


def sample_frames(folder: Optional[Path] = None) -> List[Path]:
    """The CamVid frames shipped inside the package (or those in `folder`, laid out the same way)."""
    folder = folder or Path(str(resources.files("dabnet") / "assets" / "samples"))
    return sorted(p for p in Path(folder).iterdir() if p.name.endswith(".jpg"))


def sample_ground_truth(frame: Path) -> Optional[np.ndarray]:
    """The CamVid label map shipped beside a sample frame (ignore = 255), if any."""
    label = frame.with_name(frame.stem + "_label.png")
    if not label.exists():
        return None
    from PIL import Image

    truth = np.array(Image.open(label, formats=READ_FORMATS))
    truth[truth == CAMVID_IGNORE_INDEX] = 255
    return truth


def bundled_weights_available() -> bool:
    """True when this installation ships the trained `dabnet-camvid` weights."""
    try:
        resolve_checkpoint("dabnet-camvid")
    except FileNotFoundError:
        return False
    return True


def _segmenter(cfg: DemoConfig, log) -> Segmenter:
    device = resolve_device(cfg.device, cfg.backend, cfg.checkpoint)
    if cfg.checkpoint:
        return Segmenter.from_checkpoint(cfg.checkpoint, device, backend=cfg.backend, log=log)
    camvid = get_dataset("camvid")
    torch.manual_seed(cfg.seed)
    model = create_model("dabnet", num_classes=len(camvid.classes))
    return Segmenter(model, camvid.mean, camvid.std, camvid.classes, camvid.palette, device)


# A first call allocates and a runtime's first calls warm its caches; a handful of timed calls is mostly noise.
WARMUP_CALLS = 5
MIN_TIMED_CALLS, MIN_TIMED_S, MAX_TIMED_S = 30, 2.0, 10.0


def time_predictions(seg: Segmenter, images: List[np.ndarray]) -> List[float]:
    """ms of each `seg.predict` call over `images` in turn, after WARMUP_CALLS untimed calls: at least MIN_TIMED_CALLS
    calls and MIN_TIMED_S seconds, whole rounds of the frames, stopping at MAX_TIMED_S."""
    for i in range(WARMUP_CALLS):
        seg.predict(images[i % len(images)])
    latencies: List[float] = []
    start = time.perf_counter()
    while True:
        for image in images:
            t0 = time.perf_counter()
            seg.predict(image)
            latencies.append((time.perf_counter() - t0) * 1000)
        spent = time.perf_counter() - start
        if (len(latencies) >= MIN_TIMED_CALLS and spent >= MIN_TIMED_S) or spent >= MAX_TIMED_S:
            return latencies


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Segment every bundled frame; return the per-frame latencies (ms) and the output folder."""
    out = check_output_folder(cfg.out)  # before the model loads
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.checkpoint is None and bundled_weights_available():
        cfg = dataclasses.replace(cfg, checkpoint="dabnet-camvid")
    seg = _segmenter(cfg, log)
    if not cfg.checkpoint:
        log("NOTE: no trained weights are bundled in this installation, so this runs an UNTRAINED DABNet:")
        log("      the pictures show the pipeline, not a segmentation. Pass --checkpoint to use trained weights.")
    else:
        meta = seg.meta
        miou = ""
        if meta.get("trained_on_every_labelled_frame"):  # no drive left unseen: a val figure would only measure fitting
            miou = ", trained on every labelled CamVid drive (train+val): no held-out figure; CamVid test: see docs/reports/MODEL_CARD.md"
        elif meta.get("holdout_miou") is not None:  # a drive it never saw: the figure that says how it generalises
            miou = f", {100 * meta['holdout_miou']:.1f}% mIoU on held-out CamVid drive {', '.join(meta.get('holdout_sequences', []))}"
        elif meta.get("val_miou") is not None:
            miou = f", CamVid val mIoU {100 * meta['val_miou']:.1f}%"
        log(f"weights: {cfg.checkpoint} ({seg.model_name}, {len(seg.class_names)} classes{miou})")
    frames = sample_frames(Path(cfg.samples) if cfg.samples else None)
    images = [read_image(f) for f in frames]
    from PIL import Image

    for frame, image in zip(frames, images):  # the pictures first: the timings below are of prediction alone
        panels = [image, write_outputs(image, seg.predict(image), seg.palette, out, frame.stem)]
        truth = sample_ground_truth(frame)
        if truth is not None:
            panels.append(colorize(truth, seg.palette))
        with atomic_output(out / f"{frame.stem}_side_by_side.png", fsync=False) as tmp:
            Image.fromarray(side_by_side(panels)).save(tmp, format="PNG")
    latencies = time_predictions(seg, images)
    for i, (frame, image) in enumerate(zip(frames, images)):
        log(f"{frame.name}: {image.shape[1]}x{image.shape[0]}  {float(np.median(latencies[i::len(images)])):7.1f} ms")
    median = float(np.median(latencies))
    log(f"{len(latencies)} timed predictions of {len(frames)} frames after {WARMUP_CALLS} warm-up calls: median "
        f"{median:.1f} ms/frame = {1000 / median:.1f} FPS on {torch.get_num_threads()} CPU thread(s), {seg.model_name}, "
        f"backend {seg.backend}, batch 1")  # fmt: skip
    log(f"pictures (label maps, colour masks, overlays, image | overlay | ground truth): {out.resolve()}{os.sep}")
    return {"latencies_ms": latencies, "out": str(out), "frames": [f.name for f in frames]}
