"""The options of `dabnet data check`, `stats`, `pack` and `import`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..data.importers import IMPORTERS
from ..data.registry import list_datasets
from ..util.options import Options, option
from .validate import NOT_A_PATH, one_of

PACK_SPLITS = ["train", "val", "test", "trainval"]


@dataclass
class DataCheckConfig(Options):
    """Scan every image and mask; exit 0 only when the dataset is clean."""

    dataset: str = option("camvid", "dataset kind", choices=list_datasets, positional=True, **NOT_A_PATH)
    root: str = option("", "dataset root (for 'folder': the dataset YAML or its folder)", positional=True, io="in")
    splits: List[str] = option(help="splits to scan (default: train val test, or the YAML's)", factory=list, nargs="*", **NOT_A_PATH)
    quiet: bool = option(False, "no progress bar", flag_only=True)


@dataclass
class DataStatsConfig(Options):
    """Channel mean/std, class frequencies and class weights of a split."""

    dataset: str = option("camvid", "dataset kind", choices=list_datasets, positional=True, **NOT_A_PATH)
    root: str = option("", "dataset root (for 'folder': the dataset YAML)", positional=True, io="in")
    split: str = option("train", "train, val, trainval (CamVid), test, or a YAML split", **NOT_A_PATH)
    enet_c: float = option(1.02, "c of the ENet weights 1/ln(c+p) (official code: 1.10)", range="(1, 100]")
    json: bool = option(False, "print JSON instead of a table", flag_only=True)


@dataclass
class DataPackConfig(Options):
    """Compact CamVid copy (JPEG frames + PNG labels) to carry to a GPU machine."""

    root: str = option("", "CamVid root (SegNet layout)", positional=True, io="in")
    out: str = option("", "output folder, same layout (keep it git-ignored, e.g. data_packed/camvid)", positional=True, io="out_dir")
    splits: List[str] = option(help="splits to pack", factory=lambda: ["train", "val"], check=one_of("splits", PACK_SPLITS), **NOT_A_PATH)
    quality: int = option(95, "JPEG quality (4:4:4 chroma)", range="[1, 100]", valid="1-100")


@dataclass
class DataImportConfig(Options):
    """An annotation tool's export (COCO, CVAT masks, Labelme) as a folder dataset with its dataset.yaml."""

    format: str = option("coco", "the export's format", choices=lambda: list(IMPORTERS), positional=True, **NOT_A_PATH)
    source: str = option("", "COCO: the JSON file; CVAT: the export folder (labelmap.txt); Labelme: the folder of .json files",
                         positional=True, io="in")  # fmt: skip
    images: str = option("", "folder holding the annotated images", required=True, metavar="DIR", io="in")
    out: str = option("", "new dataset folder (images/, masks/, dataset.yaml)", required=True, metavar="DIR", io="out_dir")
    val_fraction: float = option(0.0, "share of the images (the last ones, in the export's order) put in a val split",
                                 range="[0, 1)", valid="a share in [0, 1)")  # fmt: skip
    classes: Optional[List[str]] = option(None, "Labelme: class names in id order (default: the labels, sorted)", nargs="+", **NOT_A_PATH)
    overwrite: bool = option(False, "replace an existing --out folder whole (default: refuse a non-empty one)", flag_only=True)
