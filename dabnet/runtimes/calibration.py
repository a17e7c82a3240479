"""The frames int8 quantizes on: six CamVid *train* frames bundled with the package (never a test frame)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List, Sequence

import torch

from ..io.images import read_image
from ..io.preprocessing import Normalize


def calibration_frames() -> List[Path]:
    """The CamVid train frames bundled for int8 calibration (6 frames from the 3 train sequences)."""
    folder = resources.files("dabnet") / "assets" / "calib"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".jpg"))


def calibration_batches(mean: Sequence[float], std: Sequence[float]) -> List[torch.Tensor]:
    """The bundled calibration frames as 1x3xHxW tensors normalised with `mean`/`std`."""
    normalize = Normalize(mean, std)
    return [normalize([read_image(path)]) for path in calibration_frames()]
