"""`dabnet predict`'s options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..inference.outputs import OUTPUT_KINDS
from ..runtimes import backend_help, backend_names
from ..util.options import Options, option
from ..util.precision import PRECISIONS
from .validate import DEVICE_HELP, NOT_A_PATH, SCALE, check_device, path_is, require


@dataclass
class PredictConfig(Options):
    """Segment images, folders, globs, videos or a webcam."""

    inputs: List[str] = option(help="image files, folders, globs ('data/*.jpg'), videos, or a webcam index",
                               factory=list, positional=True, nargs="+", io="in")  # fmt: skip
    checkpoint: str = option("dabnet-camvid", "checkpoint, .onnx file or bundled name", io="in")
    out: str = option("predictions", "output folder", io="own_dir")
    format: str = option("default", "cityscapes: labelId PNGs for the benchmark server instead of label/colour/overlay",
                         choices=["default", "cityscapes"], **NOT_A_PATH)  # fmt: skip
    backend: str = option("auto", backend_help, choices=backend_names, **NOT_A_PATH)
    precision: str = option("fp32", "fp32, bf16/fp16 autocast (fp16: CUDA only), or int8 with the openvino backend; "
                            "auto chooses its own", choices=PRECISIONS, **NOT_A_PATH)  # fmt: skip
    channels_last: Optional[bool] = option(None, "NHWC tensors (default: on for CUDA, off for a CPU)")
    device: str = option("auto", DEVICE_HELP, check=check_device, **NOT_A_PATH)
    batch_size: int = option(1, "images per forward pass", range="[1, 4096]")
    max_frames: int = option(0, "stop videos/webcams after N frames (0: all)", range="[0, inf)")
    save: List[str] = option(help="what to write per image: label (class ids), color (the colour mask), overlay",
                             factory=lambda: list(OUTPUT_KINDS), choices=OUTPUT_KINDS, nargs="+", **NOT_A_PATH)  # fmt: skip
    workers: int = option(2, "threads that decode and encode images while the network runs (0: one after another)", range="[0, 256]")
    scale: float = option(1.0, "resize images by this factor before the network (labels at the image's size); "
                          "above 1 is more accurate and slower, e.g. 1.5", **SCALE)  # fmt: skip
    max_image_pixels: int = option(2 * 89_478_485, "largest image decoded, in pixels (Pillow's guard against "
                                   "decompression bombs; larger images are tiled, so raising it costs only memory)", range="[1, 1e12]")  # fmt: skip

    def check(self) -> None:
        require(not path_is("exists", self.out) or path_is("is_dir", self.out), "out", self.out, "a folder (this is an existing file)")
