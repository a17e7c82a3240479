"""Datasets: CamVid (SegNet layout), Cityscapes (official layout) and a user's own folders.

Each dataset is a list of (image, mask) file pairs plus a look-up table that maps raw mask values
to class ids (255 = ignore); a value that maps to nothing is an error. Errors name the file and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io.images import IMAGE_SUFFIXES, READ_FORMATS, ImageReadError, PathLike, read_image
from ..util.options import ConfigError, Options, load_yaml, option, shown
from .classes import (
    CAMVID_CLASSES,
    CAMVID_IGNORE_INDEX,
    CAMVID_MEAN,
    CAMVID_PALETTE,
    CAMVID_STD,
    CITYSCAPES_CLASSES,
    CITYSCAPES_IGNORE_INDEX,
    CITYSCAPES_PALETTE,
    CITYSCAPES_TRAIN_TO_LABEL_ID,
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_palette,
)
from .registry import DatasetError, DatasetKind, get_dataset, register_dataset


class SplitNotFoundError(DatasetError):
    """The folder of a whole split is absent (e.g. a CamVid copy without its test split)."""


def read_rgb(path: Path) -> np.ndarray:
    """`read_image` for a dataset's files: every failure is a DatasetError naming the file."""
    try:
        return read_image(path)
    except FileNotFoundError:
        raise DatasetError(f"image file missing: {path}") from None
    except ImageReadError as e:
        raise DatasetError(str(e)) from e.__cause__


def read_mask(path: Path) -> np.ndarray:
    """Decode a label mask as HxW uint8; a colour (3-channel) mask is an error with a fix."""
    from PIL import Image

    try:
        with Image.open(path, formats=READ_FORMATS) as im:
            im.load()
            mode = im.mode
            arr = np.array(im)
    except FileNotFoundError:
        raise DatasetError(f"mask file missing: {path}") from None
    except Exception as e:
        raise DatasetError(f"corrupt or truncated mask {path}: {str(e).rstrip('.')}. Re-export or remove this file.") from e
    if arr.ndim == 3:
        raise DatasetError(
            f"mask {path} has {arr.shape[2]} channels (mode {mode}); masks must be single-channel class ids. "
            "Convert colour masks to ids (one value per class) or use the label-id PNGs of the dataset."
        )
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DatasetError(f"mask {path} holds values outside 0..255 ({arr.min()}..{arr.max()}); store class ids as 8-bit")
        arr = arr.astype(np.uint8)
    return arr


class SegmentationDataset(Dataset):
    """(image, mask) pairs with a value look-up table, a transform and per-sample seeded randomness."""

    def __init__(
        self,
        pairs: Sequence[Tuple[Path, Path]],
        classes: Sequence[str],
        raw_ignore: int = 255,
        lut: Optional[np.ndarray] = None,
        palette: Optional[Sequence[Tuple[int, int, int]]] = None,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        transform: Optional[Callable] = None,
        name: str = "dataset",
        seed: int = 0,
        label_fix: str = "fix the mask or map its values with `id_map` in the dataset YAML",
    ) -> None:
        if not pairs:
            raise DatasetError(f"{name}: no (image, mask) pairs found")
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.raw_ignore = int(raw_ignore)
        self.ignore_index = IGNORE_INDEX  # whatever the files use, masks come out with 255 = ignore
        self.lut = lut if lut is not None else identity_lut(self.num_classes, self.raw_ignore)
        self.palette = list(palette) if palette else default_palette(self.num_classes)
        self.mean, self.std = tuple(mean), tuple(std)
        self.transform = transform
        self.name = name
        self.seed = int(seed)
        self.label_fix = label_fix  # what to do about a mask value outside the classes, for this kind of dataset
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation of sample i in epoch e depends only on (seed, e, i)."""
        self.epoch = int(epoch)

    def load_pair(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Image (HxWx3 uint8) and class-id mask (HxW uint8), checked for size and values."""
        img_path, mask_path = self.pairs[index]
        image = read_rgb(img_path)
        raw = read_mask(mask_path)
        if raw.shape != image.shape[:2]:
            raise DatasetError(
                f"size mismatch: image {img_path} is {image.shape[1]}x{image.shape[0]} but mask {mask_path} is "
                f"{raw.shape[1]}x{raw.shape[0]}; masks must have their image's size"
            )
        mask = self.lut[raw]
        if (mask == INVALID).any():
            bad = sorted(set(np.unique(raw[mask == INVALID]).tolist()))
            raise DatasetError(
                f"mask {mask_path} holds label values {bad[:10]} outside the {self.num_classes} classes "
                f"(0..{self.num_classes - 1}) and the ignore value {self.raw_ignore}; {self.label_fix}"
            )
        return image, mask

    def __getitem__(self, index: int):
        image, mask = self.load_pair(index)
        if self.transform is None:
            return image, mask
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.transform(image, mask, rng)

    def describe(self) -> Dict[str, Any]:
        """Metadata a checkpoint keeps so that a model can be used without the dataset."""
        return {
            "dataset": self.name,
            "class_names": self.classes,
            "palette": [list(map(int, c)) for c in self.palette],
            "ignore_index": self.ignore_index,
            "raw_ignore": self.raw_ignore,
            "mean": list(self.mean),
            "std": list(self.std),
        }


IGNORE_INDEX = 255  # the ignore label of every mask a dataset returns
INVALID = np.uint8(254)  # marks raw values that map to no class; never a real id (<=250 classes)


def _empty_lut(num_classes: int, raw_ignore: int) -> np.ndarray:
    if not 1 <= num_classes <= 250:
        raise DatasetError(f"between 1 and 250 classes are supported, got {num_classes}")
    if 0 <= raw_ignore < num_classes:
        raise DatasetError(f"ignore value {raw_ignore} is also a class id (0..{num_classes - 1}); pick a value outside")
    lut = np.full(256, INVALID, dtype=np.uint8)
    lut[raw_ignore] = IGNORE_INDEX
    return lut


def identity_lut(num_classes: int, raw_ignore: int) -> np.ndarray:
    """0..C-1 map to themselves, the raw ignore value to 255, everything else is INVALID."""
    lut = _empty_lut(num_classes, raw_ignore)
    lut[:num_classes] = np.arange(num_classes, dtype=np.uint8)
    return lut


def _check_dir(path: Path, what: str, fix: str, error: type = DatasetError) -> Path:
    if not path.is_dir():
        raise error(f"{what} not found: {path} does not exist. {fix}")
    return path


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def pair_by_stem(image_dir: Path, mask_dir: Path, mask_suffix: str = "") -> List[Tuple[Path, Path]]:
    """Pair images and masks by file stem; an image without a mask (or the reverse) is an error."""
    images = {p.stem: p for p in _images_in(image_dir)}
    masks = {}
    for p in _images_in(mask_dir):
        stem = p.stem[: -len(mask_suffix)] if mask_suffix and p.stem.endswith(mask_suffix) else p.stem
        masks[stem] = p
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(f"{len(lonely_images)} image(s) without a mask in {mask_dir}, e.g. {images[lonely_images[0]]}")
        if lonely_masks:
            parts.append(f"{len(lonely_masks)} mask(s) without an image in {image_dir}, e.g. {masks[lonely_masks[0]]}")
        raise DatasetError("; ".join(parts) + ". Every image needs a mask with the same file stem: add or remove files.")
    return [(images[s], masks[s]) for s in sorted(images)]


# ----------------------------------------------------------------------------- CamVid

STANDARD_SPLITS = ("train", "val", "test")


def camvid_pairs(root: PathLike, split: str) -> List[Tuple[Path, Path]]:
    """CamVid in the SegNet layout: SPLIT/NAME.png with SPLITannot/NAME.png; 'trainval' joins two."""
    root = Path(root)
    _check_dir(root, "CamVid root", "Pass the folder that holds train/, trainannot/, val/, valannot/.")
    if split == "trainval":
        return camvid_pairs(root, "train") + camvid_pairs(root, "val")
    if split not in STANDARD_SPLITS:
        raise DatasetError(f"unknown CamVid split {split!r}; choose one of train, val, trainval, test")
    present = [s for s in STANDARD_SPLITS if (root / s).is_dir()]
    _check_dir(root / split, f"CamVid split {split!r}", f"Splits present in {root}: {', '.join(present) or 'none'}.",
               SplitNotFoundError)  # fmt: skip
    _check_dir(root / f"{split}annot", f"CamVid labels of split {split!r}", f"Expected {root / (split + 'annot')} beside {root / split}.")
    return pair_by_stem(root / split, root / f"{split}annot")


def CamVid(root: PathLike, split: str = "train", transform: Optional[Callable] = None, seed: int = 0) -> SegmentationDataset:
    """CamVid, 11 classes, 11 = ignore (SegNet layout, 360x480)."""
    return SegmentationDataset(
        camvid_pairs(root, split), CAMVID_CLASSES, CAMVID_IGNORE_INDEX, palette=CAMVID_PALETTE,
        mean=CAMVID_MEAN, std=CAMVID_STD, transform=transform, name=f"camvid:{split}", seed=seed,
        label_fix="CamVid labels are 0-10 and 11 (unlabelled): re-export this mask from the dataset or remove the pair",
    )  # fmt: skip


# ----------------------------------------------------------------------------- Cityscapes


def cityscapes_label_to_train_lut() -> np.ndarray:
    """labelIds (0..33, -1 stored as 255) -> 19 train ids, everything else -> 255 (ignore)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)  # every labelId is valid: unused ones are ignored
    for train_id, label_id in enumerate(CITYSCAPES_TRAIN_TO_LABEL_ID):
        lut[label_id] = train_id
    return lut


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map a train-id prediction (0..18) back to Cityscapes labelIds, for test-server submissions."""
    lut = np.zeros(256, dtype=np.uint8)  # 0 = "unlabeled" for anything outside 0..18
    lut[: len(CITYSCAPES_TRAIN_TO_LABEL_ID)] = CITYSCAPES_TRAIN_TO_LABEL_ID
    return lut[train_ids.astype(np.uint8)]


def cityscapes_pairs(root: PathLike, split: str) -> Tuple[List[Tuple[Path, Path]], bool]:
    """Image/label pairs and whether they are labelTrainIds (used when present) or labelIds."""
    root = Path(root)
    _check_dir(root, "Cityscapes root", "Pass the folder that holds leftImg8bit/ and gtFine/.")
    img_root = _check_dir(root / "leftImg8bit" / split, f"Cityscapes images of split {split!r}",
                          f"Expected {root}/leftImg8bit/{split}/<city>/*_leftImg8bit.png.", SplitNotFoundError)  # fmt: skip
    gt_root = _check_dir(root / "gtFine" / split, f"Cityscapes labels of split {split!r}",
                         f"Expected {root}/gtFine/{split}/<city>/*_gtFine_labelIds.png.")  # fmt: skip
    images = sorted(img_root.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetError(f"no *_leftImg8bit.png files under {img_root}/<city>/")
    pairs, train_ids = [], []
    for img in images:
        base = img.name[: -len("_leftImg8bit.png")]
        folder = gt_root / img.parent.name
        trainid = folder / f"{base}_gtFine_labelTrainIds.png"
        labelid = folder / f"{base}_gtFine_labelIds.png"
        if trainid.exists():
            pairs.append((img, trainid))
            train_ids.append(True)
        elif labelid.exists():
            pairs.append((img, labelid))
            train_ids.append(False)
        else:
            raise DatasetError(f"image {img} has no label: expected {labelid}. Add it or remove the image.")
    if len(set(train_ids)) > 1:
        raise DatasetError(f"{gt_root} has *_labelTrainIds.png for some images only: create them for all or delete them")
    return pairs, train_ids[0]


def Cityscapes(root: PathLike, split: str = "train", transform: Optional[Callable] = None, seed: int = 0) -> SegmentationDataset:
    """Cityscapes fine annotations, 19 classes; labelIds mapped to train ids on the fly (255 = ignore)."""
    pairs, have_train_ids = cityscapes_pairs(root, split)
    lut = identity_lut(19, 255) if have_train_ids else cityscapes_label_to_train_lut()
    return SegmentationDataset(
        pairs, CITYSCAPES_CLASSES, CITYSCAPES_IGNORE_INDEX, lut=lut, palette=CITYSCAPES_PALETTE,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, transform=transform, name=f"cityscapes:{split}", seed=seed,
        label_fix="train ids are 0-18 and 255: regenerate *_labelTrainIds.png (or delete them to use *_labelIds.png)",
    )  # fmt: skip


# ----------------------------------------------------------------------------- user folders


def _check_splits(splits: Dict[str, Any]) -> None:
    """Each split of a dataset.yaml names its two folders: {images: DIR, masks: DIR}."""
    for name, split in splits.items():
        if not isinstance(split, dict) or set(split) != {"images", "masks"} or not all(isinstance(v, str) and v for v in split.values()):
            raise ConfigError(f"split {shown(name)}={shown(split)} is not valid: a mapping of the split's two folders, "
                              f"e.g. {name}: {{images: images/{name}, masks: masks/{name}}}")  # fmt: skip


@dataclass
class FolderSpec(Options):
    """What a folder dataset's YAML holds (docs/your-own-data.md): each key declared and checked as a command's
    options are (`util.options`), so `data check`, `data stats`, training and evaluation refuse the same files."""

    classes: List[Union[str, int, float]] = option(help="class names in id order", factory=list, length=(1, 250),
                                                   valid="a list of 1 to 250 class names (quote a name YAML reads as "
                                                         "true/false or null, e.g. 'no')")  # fmt: skip
    splits: Dict[str, Any] = option(help="split name -> {images: DIR, masks: DIR}, relative to the YAML", factory=dict,
                                    check=_check_splits, valid="a mapping of split names to {images: DIR, masks: DIR}")  # fmt: skip
    name: Union[str, int, float] = option("folder", "the dataset's name")
    palette: Optional[List[List[int]]] = option(None, "one [R, G, B] colour per class", range="[0, 255]", item_length=3,
                                                valid="a list of [R, G, B] colours, one per class, each value in [0, 255]")  # fmt: skip
    ignore_index: int = option(255, "the mask value left out of loss and metrics", range="[0, 255]",
                               valid="a mask value in [0, 255] (masks hold 8-bit values)")  # fmt: skip
    id_map: Optional[Dict[int, int]] = option(None, "raw mask value -> class id or ignore_index", range="[0, 255]",
                                              valid="'id_map' maps raw mask values to class ids (or to ignore_index), "
                                                    "values in [0, 255], e.g. id_map: {0: 255, 7: 0, 8: 1}")  # fmt: skip
    mean: Optional[List[float]] = option(None, "input mean, 0-255 RGB", range="[0, 255]", length=(3, 3),
                                         valid="three numbers in [0, 255] (0-255 RGB)")  # fmt: skip
    std: Optional[List[float]] = option(None, "input std, 0-255 RGB", range="(0, 255]", length=(3, 3),
                                        valid="three numbers in (0, 255] (0-255 RGB)")  # fmt: skip
    mask_suffix: str = option("", "the end of a mask's file stem, e.g. _mask for img_001_mask.png")

    def check(self) -> None:
        n = len(self.classes)
        if self.palette is not None and len(self.palette) != n:
            raise ConfigError(f"{len(self.palette)} palette colours for {n} classes")
        for what, items in (("class name", [str(c) for c in self.classes]), ("palette colour", [tuple(c) for c in self.palette or []])):
            twice = sorted({str(i) for i in items if items.count(i) > 1})
            if twice:
                raise ConfigError(f"the {what}(s) {shown(', '.join(twice))} appear more than once; each class needs its own")
        if self.ignore_index < n:
            raise ConfigError(f"ignore_index={self.ignore_index} is also a class id (0..{n - 1}); pick a value outside, e.g. 255")


def load_folder_spec(path: PathLike) -> Dict[str, Any]:
    """Read and check a folder dataset's YAML (docs/your-own-data.md): every key, one line naming the file on error."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.yaml"
    if not path.is_file():
        raise DatasetError(f"dataset description not found: {path}. Write a dataset.yaml (docs/your-own-data.md shows one).")
    spec = load_yaml(path.read_bytes(), str(path), error=DatasetError)
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise DatasetError(f"{path} must hold a mapping of keys (classes, splits, ...), not {shown(spec)}; "
                           "docs/your-own-data.md shows one")  # fmt: skip
    known = [f.name for f in dataclasses.fields(FolderSpec)]
    unknown = sorted(str(k) for k in spec if k not in known)
    if unknown:
        raise DatasetError(f"{path}: unknown key(s) {shown(unknown)}; valid keys: {sorted(known)}")
    if not spec.get("classes"):
        raise DatasetError(f"{path}: 'classes' (a list of class names) is required")
    if not isinstance(spec.get("splits"), dict) or not spec["splits"]:
        raise DatasetError(f"{path}: 'splits' is required, e.g. splits: {{train: {{images: img/train, masks: ann/train}}}}")
    try:
        checked = FolderSpec(**spec)
    except ConfigError as e:
        raise DatasetError(f"{path}: {e}") from None
    return {**{f.name: getattr(checked, f.name) for f in dataclasses.fields(checked)}, "_file": path}


def folder_lut(num_classes: int, raw_ignore: int, id_map: Optional[Dict[int, int]]) -> np.ndarray:
    """LUT for a user dataset: identity, or `id_map` (raw value -> class id or the ignore value)."""
    if not id_map:
        return identity_lut(num_classes, raw_ignore)
    lut = _empty_lut(num_classes, raw_ignore)
    for raw, cls in id_map.items():
        raw, cls = int(raw), int(cls)
        if not 0 <= raw <= 255:
            raise DatasetError(f"id_map key {raw} is not an 8-bit mask value")
        if cls == raw_ignore:
            lut[raw] = IGNORE_INDEX
        elif 0 <= cls < num_classes:
            lut[raw] = cls
        else:
            raise DatasetError(f"id_map sends {raw} to {cls}, which is neither a class (0..{num_classes - 1}) nor the ignore value {raw_ignore}")
    return lut


def FolderDataset(spec_path: PathLike, split: str = "train", transform: Optional[Callable] = None, seed: int = 0) -> SegmentationDataset:
    """A user's images + masks folders, paired by stem, described by a small YAML."""
    spec = load_folder_spec(spec_path)
    base = spec["_file"].parent
    if split not in spec["splits"]:
        raise DatasetError(f"{spec['_file']}: no split {split!r}; splits defined: {', '.join(spec['splits'])}")
    s = spec["splits"][split]
    image_dir = _check_dir(base / s["images"], f"images folder of split {split!r}", f"Fix 'images' in {spec['_file']}.")
    mask_dir = _check_dir(base / s["masks"], f"masks folder of split {split!r}", f"Fix 'masks' in {spec['_file']}.")
    classes = [str(c) for c in spec["classes"]]
    ignore = spec["ignore_index"]
    return SegmentationDataset(
        pair_by_stem(image_dir, mask_dir, spec["mask_suffix"]),
        classes,
        ignore,
        lut=folder_lut(len(classes), ignore, spec["id_map"]),
        palette=[tuple(c) for c in spec["palette"]] if spec["palette"] else None,
        mean=spec["mean"] or (0.0, 0.0, 0.0),
        std=spec["std"] or (1.0, 1.0, 1.0),
        transform=transform,
        name=f"{spec['name']}:{split}",
        seed=seed,
        label_fix=f"fix the mask, or map its values with `id_map` in {spec['_file']}",
    )


register_dataset(DatasetKind("camvid", CamVid, "CamVid (SegNet's 11 classes, 360x480): ROOT with train/val/test and *annot folders",
                             tuple(CAMVID_CLASSES), tuple(CAMVID_PALETTE), CAMVID_IGNORE_INDEX, CAMVID_MEAN, CAMVID_STD))  # fmt: skip
register_dataset(DatasetKind("cityscapes", Cityscapes, "Cityscapes (19 train ids): ROOT with leftImg8bit/ and gtFine/",
                             tuple(CITYSCAPES_CLASSES), tuple(CITYSCAPES_PALETTE), CITYSCAPES_IGNORE_INDEX, IMAGENET_MEAN,
                             IMAGENET_STD))  # fmt: skip
register_dataset(DatasetKind("folder", FolderDataset, "your own images and masks, described by a dataset YAML (--data-root)"))


def sequence_of(path: PathLike) -> str:
    """The sequence (drive, camera) a frame comes from: its file name up to the first '_'
    (CamVid '0016E5_07959.png' -> '0016E5'; Cityscapes 'aachen_000000_..' -> 'aachen')."""
    return Path(path).name.split("_", 1)[0]


def select_sequences(ds: SegmentationDataset, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> SegmentationDataset:
    """Keep the frames whose file name starts with one of `include` (all when empty) and none of
    `exclude`: whole video sequences held out, so that validation measures a drive never trained on."""
    include, exclude = tuple(include or ()), tuple(exclude or ())
    if not include and not exclude:
        return ds
    present = sorted({sequence_of(i) for i, _ in ds.pairs})
    for prefix in include + exclude:
        if not any(i.name.startswith(prefix) for i, _ in ds.pairs):
            raise DatasetError(f"no frame of {ds.name} starts with {prefix!r}; sequences present (file-name prefixes): {', '.join(present)}")
    kept = [(i, m) for i, m in ds.pairs if (not include or i.name.startswith(include)) and not i.name.startswith(exclude)]
    if not kept:
        raise DatasetError(f"{ds.name}: keeping {list(include) or 'all'} and leaving out {list(exclude)} leaves no frame")
    ds.pairs = kept
    ds.name += "".join(f"+{s}" for s in include) + "".join(f"-{s}" for s in exclude)
    return ds


def shares_frames(a: SegmentationDataset, b: SegmentationDataset) -> bool:
    """Whether two datasets hold any of the same (image, mask) files: a validation set that does measures fitting."""
    return bool(set(a.pairs) & set(b.pairs))


def build_dataset(
    name: str, root: PathLike, split: str, transform: Optional[Callable] = None, seed: int = 0,
    include: Sequence[str] = (), exclude: Sequence[str] = (),
) -> SegmentationDataset:  # fmt: skip
    """`camvid`, `cityscapes` (root folder) or `folder` (path of the dataset YAML); `include`/`exclude`
    keep or drop whole sequences by file-name prefix (see `select_sequences`)."""
    return select_sequences(get_dataset(name).build(root, split, transform=transform, seed=seed), include, exclude)


def collate_eval(batch):
    """Stack whole images of one size; keep lists when sizes differ (a user's folders)."""
    images, masks = zip(*batch)
    if all(i.shape == images[0].shape for i in images):
        return torch.stack(images), torch.stack(masks)
    return list(images), list(masks)
