"""`dabnet eval`'s options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..data.registry import list_datasets
from ..runtimes import backend_help, backend_names
from ..util.options import Options, option
from ..util.precision import PRECISIONS
from .validate import DEVICE_HELP, NOT_A_PATH, SCALES, check_device


@dataclass
class EvalConfig(Options):
    """mIoU, per-class IoU and pixel accuracy of a checkpoint on a dataset split."""

    checkpoint: str = option("", "checkpoint, bundled name or official DABNet checkpoint", required=True, io="in")
    dataset: str = option("camvid", "dataset kind", choices=list_datasets, **NOT_A_PATH)
    data_root: str = option("../shared/data/camvid", "dataset root (for 'folder': the dataset YAML)", io="in")
    split: str = option("val", "split to evaluate", **NOT_A_PATH)
    sequences: List[str] = option(help="only frames whose file names start with these (whole drives, e.g. 0006R0)",
                                  factory=list, metavar="PREFIX", **NOT_A_PATH)  # fmt: skip
    exclude_sequences: List[str] = option(help="leave these sequences out", factory=list, metavar="PREFIX", **NOT_A_PATH)
    batch_size: int = option(1, "images per forward pass", range="[1, 4096]")
    flip: bool = option(False, "add horizontally flipped predictions")
    scales: List[float] = option(help="test-time scales, e.g. 0.75 1 1.25", factory=lambda: [1.0], **SCALES)
    workers: int = option(2, "data loader processes", range="[0, 1024]")
    device: str = option("auto", DEVICE_HELP, check=check_device, **NOT_A_PATH)
    backend: str = option("auto", backend_help, choices=backend_names, **NOT_A_PATH)
    precision: str = option("fp32", "fp32, bf16/fp16 autocast, or int8 with the openvino backend (auto chooses its own)",
                            choices=PRECISIONS, **NOT_A_PATH)  # fmt: skip
    json: Optional[str] = option(None, "write miou, per_class_iou, pixel_acc, images to this file", metavar="FILE", io="out")
    confusion_png: Optional[str] = option(None, "draw the confusion matrix to this PNG", metavar="FILE", io="out")
