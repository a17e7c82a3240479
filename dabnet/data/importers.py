"""`dabnet data import`: annotation tools' exports turned into a folder dataset (images, masks, dataset.yaml).

One function per format, registered in IMPORTERS; each yields (image path, class-id mask) pairs and the class
names (and colours where the tool has them). The rules, the same for every format:
- class ids follow the tool's own order (COCO category ids, CVAT's labelmap.txt, or Labelme labels sorted
  by name unless `classes` fixes the order);
- where shapes overlap, the later annotation in the file is on top;
- pixels no annotation covers are `ignore_index` (255): left out of the loss and the metrics, not guessed
  to be background. A tool whose export paints every pixel (CVAT masks) has its own background class.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..files import atomic_output
from ..image_io import IMAGE_SUFFIXES, PathLike
from .datasets import IGNORE_INDEX, DatasetError

Pair = Tuple[Path, np.ndarray]
Importer = Callable[..., Tuple[List[str], Optional[List[Tuple[int, int, int]]], Iterator[Pair]]]
IMPORTERS: Dict[str, Importer] = {}


def register_importer(name: str) -> Callable[[Importer], Importer]:
    """Make an importer available as `dabnet data import NAME`."""

    def add(fn: Importer) -> Importer:
        IMPORTERS[name] = fn
        return fn

    return add


def _find_image(images: Path, name: str) -> Path:
    """The image a record names: its relative path under `images`, else a file of that stem there."""
    exact = images / name
    if exact.is_file():
        return exact
    for candidate in (images / Path(name).name, *(images / Path(name).with_suffix(s).name for s in IMAGE_SUFFIXES)):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"the annotation names {name!r}, but no such image is in {images}; pass the folder that holds it with --images")


def _polygon_mask(mask: np.ndarray, polygons: Sequence[Sequence[float]], value: int) -> None:
    """Paint flat [x1, y1, x2, y2, ...] polygons into `mask` with `value`."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(mask)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        points = [(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)]
        if len(points) >= 3:
            draw.polygon(points, fill=value)
    mask[...] = np.asarray(canvas)


def _rle_mask(rle: dict, height: int, width: int) -> np.ndarray:
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise ImportError("COCO RLE masks need pycocotools: pip install 'dabnet[coco]'") from None
    if isinstance(rle.get("counts"), list):  # uncompressed RLE
        rle = coco_mask.frPyObjects(rle, height, width)
    return coco_mask.decode(rle).astype(bool)


@register_importer("coco")
def import_coco(source: Path, images: Path, classes: Optional[Sequence[str]] = None):
    """COCO instances or stuff JSON (polygons, RLE, crowd regions), one class per category."""
    try:
        data = json.loads(source.read_text())
        cats = sorted(data["categories"], key=lambda c: c["id"])
        records = data["images"]
        annotations = data["annotations"]
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{source} is not a COCO annotation file ({type(e).__name__}: {e}); it needs images, annotations and categories") from None
    names = [c["name"] for c in cats]
    class_of = {c["id"]: i for i, c in enumerate(cats)}
    by_image: Dict[int, list] = {}
    for a in annotations:  # the file's order: later annotations are painted on top
        by_image.setdefault(a["image_id"], []).append(a)

    def pairs() -> Iterator[Pair]:
        for rec in records:
            h, w = int(rec["height"]), int(rec["width"])
            mask = np.full((h, w), IGNORE_INDEX, np.uint8)
            for a in by_image.get(rec["id"], []):
                if a["category_id"] not in class_of:
                    raise DatasetError(f"{source}: annotation {a.get('id')} has category {a['category_id']}, which no category defines")
                seg = a.get("segmentation")
                if isinstance(seg, list):
                    _polygon_mask(mask, seg, class_of[a["category_id"]])
                elif isinstance(seg, dict):
                    mask[_rle_mask(seg, h, w)] = class_of[a["category_id"]]
            yield _find_image(images, rec["file_name"]), mask

    return names, None, pairs()


@register_importer("cvat")
def import_cvat(source: Path, images: Path, classes: Optional[Sequence[str]] = None):
    """CVAT's "Segmentation mask 1.1" export: labelmap.txt (name:r,g,b per line) and SegmentationClass/*.png."""
    source = source if source.is_dir() else source.parent
    labelmap = source / "labelmap.txt"
    if not labelmap.is_file():
        raise DatasetError(f"{labelmap} not found: pass the folder of CVAT's 'Segmentation mask' export (it holds labelmap.txt)")
    names, palette = [], []
    for line in labelmap.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, colour = line.split(":")[:2]
        names.append(name.strip())
        palette.append(tuple(int(v) for v in colour.split(",")))
    lut = {c: i for i, c in enumerate(palette)}
    masks = sorted((source / "SegmentationClass").glob("*.png"))
    if not masks:
        raise DatasetError(f"no masks in {source / 'SegmentationClass'}: export from CVAT as 'Segmentation mask 1.1'")

    def pairs() -> Iterator[Pair]:
        from PIL import Image

        for path in masks:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            codes = rgb[..., 0].astype(np.int32) << 16 | rgb[..., 1].astype(np.int32) << 8 | rgb[..., 2]
            mask = np.full(codes.shape, IGNORE_INDEX, np.uint8)
            for code in np.unique(codes):
                colour = (int(code) >> 16, (int(code) >> 8) & 255, int(code) & 255)
                if colour not in lut:
                    raise DatasetError(f"{path} has the colour {colour}, which labelmap.txt does not list; fix the export or labelmap.txt")
                mask[codes == code] = lut[colour]
            yield _find_image(images, path.stem), mask

    return names, palette, pairs()


@register_importer("labelme")
def import_labelme(source: Path, images: Path, classes: Optional[Sequence[str]] = None):
    """A folder of Labelme JSON files (polygons, rectangles, circles); classes sorted by name unless given."""
    files = sorted(source.glob("*.json")) if source.is_dir() else [source]
    if not files:
        raise DatasetError(f"no Labelme .json files in {source}")
    docs = []
    for f in files:
        try:
            docs.append((f, json.loads(f.read_text())))
        except ValueError as e:
            raise DatasetError(f"{f} is not valid JSON: {e}") from None
    found = sorted({s["label"] for _, d in docs for s in d.get("shapes", [])})
    names = list(classes) if classes else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DatasetError(f"labels {unknown} are used in {source} but not in --classes {names}")
    class_of = {n: i for i, n in enumerate(names)}

    def pairs() -> Iterator[Pair]:
        from PIL import Image, ImageDraw

        for f, doc in docs:
            image = _find_image(images, doc.get("imagePath") or f.stem)
            h, w = doc.get("imageHeight"), doc.get("imageWidth")
            if not (h and w):
                with Image.open(image) as im:
                    w, h = im.size
            canvas = Image.new("L", (int(w), int(h)), IGNORE_INDEX)
            draw = ImageDraw.Draw(canvas)
            for shape in doc.get("shapes", []):  # in file order: later shapes on top
                pts = [tuple(map(float, p)) for p in shape["points"]]
                kind, value = shape.get("shape_type") or "polygon", class_of[shape["label"]]
                if kind == "polygon" and len(pts) >= 3:
                    draw.polygon(pts, fill=value)
                elif kind == "rectangle" and len(pts) == 2:
                    (x0, y0), (x1, y1) = pts
                    draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=value)
                elif kind == "circle" and len(pts) == 2:
                    (cx, cy), (px, py) = pts
                    r = ((px - cx) ** 2 + (py - cy) ** 2) ** 0.5
                    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value)
            yield image, np.asarray(canvas)

    return names, None, pairs()


def import_annotations(fmt: str, source: PathLike, images: PathLike, out: PathLike, val_fraction: float = 0.0,
                       classes: Optional[Sequence[str]] = None) -> Dict[str, object]:  # fmt: skip
    """Convert an export into OUT/images/SPLIT, OUT/masks/SPLIT and OUT/dataset.yaml; returns counts and the yaml."""
    import yaml
    from PIL import Image

    if fmt not in IMPORTERS:
        raise ValueError(f"unknown annotation format {fmt!r}; choose {', '.join(IMPORTERS)}")
    source, images, out = Path(source), Path(images), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"annotation export not found: {source}")
    if not images.is_dir():
        raise DatasetError(f"--images {images} is not a folder of images")
    if out.resolve() == images.resolve() or images.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out} is the images folder or inside it; choose a new folder so that the images stay untouched")
    names, palette, pairs = IMPORTERS[fmt](source, images, classes)
    items = list(pairs)
    if not items:
        raise DatasetError(f"{source} annotates no image")
    n_val = int(round(len(items) * val_fraction))
    splits = {"train": items[: len(items) - n_val], "val": items[len(items) - n_val :]} if n_val else {"train": items}
    for split, members in splits.items():
        for image, mask in members:
            with Image.open(image) as im:
                size = im.size
            if size != (mask.shape[1], mask.shape[0]):
                raise DatasetError(f"{image} is {size[0]}x{size[1]} but its annotation is {mask.shape[1]}x{mask.shape[0]}")
            with atomic_output(out / "images" / split / image.name, fsync=False) as tmp:
                shutil.copyfile(image, tmp)
            with atomic_output(out / "masks" / split / f"{image.stem}.png", fsync=False) as tmp:
                Image.fromarray(mask).save(tmp, format="PNG")
    spec = {"name": out.name, "classes": names, "ignore_index": IGNORE_INDEX,
            "splits": {s: {"images": f"images/{s}", "masks": f"masks/{s}"} for s in splits}}  # fmt: skip
    if palette:
        spec["palette"] = [list(c) for c in palette]
    with atomic_output(out / "dataset.yaml", fsync=False) as tmp:
        tmp.write_text(f"# made by `dabnet data import {fmt}` from {source}; unannotated pixels are ignore_index\n"
                       + yaml.safe_dump(spec, sort_keys=False))  # fmt: skip
    return {"yaml": str(out / "dataset.yaml"), "images": {s: len(m) for s, m in splits.items()}, "classes": names}
