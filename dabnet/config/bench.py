"""`dabnet bench`'s options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..runtimes import backend_names
from ..util.options import Options, option
from ..util.precision import PRECISIONS
from .validate import DEVICE_HELP, NOT_A_PATH, SCALE, SIDE, check_device, parse_size, require


@dataclass
class BenchConfig(Options):
    """The paper's speed protocol (Table 5) on this machine."""

    models: List[str] = option(help="networks to time", factory=lambda: ["dabnet", "enet", "espnet", "icnet", "segnet", "erfnet"], **NOT_A_PATH)
    sizes: List[Tuple[int, int]] = option(help="input sizes HxW", factory=lambda: [(256, 512), (512, 1024), (1024, 2048)],
                                          type=parse_size, range=SIDE, length=(1, None))  # fmt: skip
    backends: List[str] = option(help="backends, interleaved frame by frame", factory=lambda: ["eager"], choices=backend_names,
                                 metavar="BACKEND", **NOT_A_PATH)  # fmt: skip
    precision: str = option("fp32", "fp32, bf16/fp16 autocast (fp16: CUDA only), or int8 with the openvino backend",
                            choices=PRECISIONS, **NOT_A_PATH)  # fmt: skip
    channels_last: Optional[bool] = option(None, "NHWC tensors (default: on for CUDA, off for a CPU)")
    frames: int = option(100, "timed frames per measurement (the paper: 100)", range="[1, inf)")
    warmup: int = option(10, "untimed frames first", range="[0, inf)")
    batch: int = option(1, "images per forward pass (the paper: 1); FPS count images", range="[1, 4096]")
    device: str = option("auto", DEVICE_HELP, check=check_device, **NOT_A_PATH)
    threads: Optional[int] = option(None, "CPU threads (default: PyTorch's choice)", range="[1, 4096]")
    checkpoint: Optional[str] = option(None, "time these weights instead of fresh models", io="in")
    no_paper_protocol: bool = option(False, "skip the eager runs without no_grad", flag_only=True)
    labels: bool = option(False, "also time each backend up to the label map (arg-max included), what predict does",
                          flag_only=True)  # fmt: skip
    json: Optional[str] = option(None, "write the rows as JSON", metavar="FILE", io="out")
    plot: Optional[str] = option(None, "plot FPS against parameters", metavar="PNG", io="out")
    scale: float = option(1.0, "frames of each size are resized by this factor before the network: the network is "
                          "timed at the resized size", **SCALE)  # fmt: skip

    def check(self) -> None:
        from ..io.preprocessing import MIN_SIDE

        small = [f"{h}x{w}" for h, w in self.network_sizes if min(h, w) < MIN_SIDE]
        require(not small, "sizes", small, f"sizes of at least {MIN_SIDE}x{MIN_SIDE}: below that the runtimes' pooling "
                "has no window, and predict pads such images to it (what would be timed is the padded size)")  # fmt: skip

    @property
    def network_sizes(self) -> List[Tuple[int, int]]:
        """The sizes the network runs at: each frame size resized by `scale`."""
        return [(max(1, round(h * self.scale)), max(1, round(w * self.scale))) for h, w in self.sizes]
