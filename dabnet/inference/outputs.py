"""The files a prediction is written as: NAME_label.png, NAME_color.png, NAME_overlay.png, or Cityscapes' labelId PNG."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..io.images import save_png
from ..io.visualize import colorize, colour_table, overlay

OUTPUT_KINDS = ("label", "color", "overlay")  # what predict writes per image, as NAME_KIND.png


def output_files(stem: str, fmt: str, save: Sequence[str]) -> List[str]:
    """The files write_outputs writes for `stem`, relative to OUT."""
    return [f"{stem}.png"] if fmt == "cityscapes" else [f"{stem}_{kind}.png" for kind in OUTPUT_KINDS if kind in save]


def write_outputs(image: np.ndarray, label: np.ndarray, palette, out: Path, stem: str, fmt: str = "default",
                  save: Sequence[str] = OUTPUT_KINDS) -> Optional[np.ndarray]:  # fmt: skip
    """Write NAME_label.png (class ids: 8-bit, 16-bit for a uint16 label map of more than 256 classes),
    NAME_color.png and/or NAME_overlay.png, as `save` says (or, for fmt="cityscapes", the labelId PNG the benchmark
    server takes); returns the overlay when it was made."""
    if fmt == "cityscapes":
        from ..data.datasets import train_ids_to_label_ids

        save_png(train_ids_to_label_ids(label), out / f"{stem}.png")
        return None
    if "label" in save:
        save_png(label, out / f"{stem}_label.png")
    if "color" not in save and "overlay" not in save:
        return None
    if "color" in save:  # a palette PNG (as PASCAL VOC's masks): the same colours, a fraction of the encoding
        if label.dtype == np.uint8:
            save_png(label, out / f"{stem}_color.png", palette=colour_table(palette))
        else:
            save_png(colorize(label, palette), out / f"{stem}_color.png")
    if "overlay" not in save:
        return None
    blend = overlay(image, colorize(label, palette))
    save_png(blend, out / f"{stem}_overlay.png")
    return blend
