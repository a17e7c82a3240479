"""`dabnet demo`'s options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..runtimes import backend_help, backend_names
from ..util.options import Options, option
from .validate import DEVICE_HELP, NOT_A_PATH, check_device


@dataclass
class DemoConfig(Options):
    """Segment the bundled street frames, write pictures and report the FPS."""

    checkpoint: Optional[str] = option(None, "weights to use (default: the bundled dabnet-camvid)", io="in")
    out: str = option("dabnet-demo", "output folder", io="own_dir")
    threads: Optional[int] = option(None, "CPU threads (default: PyTorch's choice)", range="[1, 4096]")
    backend: str = option("auto", backend_help, choices=backend_names, **NOT_A_PATH)
    device: str = option("auto", DEVICE_HELP, check=check_device, **NOT_A_PATH)
    seed: int = option(0, "seed of the untrained network used when no weights are bundled", hidden=True, range="[0, 4294967295]")
    samples: Optional[str] = option(None, "folder of frames (NAME.jpg + NAME_label.png) instead of the bundled ones", hidden=True, io="in")
