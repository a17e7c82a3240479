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
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..io.images import IMAGE_SUFFIXES, READ_FORMATS, PathLike
from ..util.registry import Registry
from .datasets import IGNORE_INDEX, DatasetError, identity_lut

Pair = Tuple[Path, np.ndarray]


class Records:
    """An importer's annotated images: how many, and (image path, class-id mask) pairs made one at a time, so
    that memory holds one mask whatever the export's size."""

    def __init__(self, count: int, pairs: Callable[[], Iterator[Pair]]) -> None:
        self.count, self._pairs = count, pairs

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Pair]:
        return self._pairs()


Importer = Callable[..., Tuple[List[str], Optional[List[Tuple[int, int, int]]], Records]]
IMPORTERS: Registry[Importer] = Registry("annotation format")


def register_importer(name: str, help: Optional[str] = None) -> Callable[[Importer], Importer]:
    """Make an importer available as `dabnet data import NAME` (help: `help`, else the function's docstring)."""
    return IMPORTERS.register(name, help=help)


def _find_image(images: Path, name: str) -> Path:
    """The image a record names, always inside `images`: its relative path there, else a file of its name or
    stem there. Windows separators count as separators; a path that leaves `images` (absolute, or with '..',
    as Labelme writes paths relative to its JSON) is looked up by its file name inside `images`."""
    rel = Path(str(name).replace("\\", "/"))
    inside = not rel.is_absolute() and ".." not in rel.parts
    root = images.resolve()
    candidates = [images / rel] if inside else []
    candidates += [images / rel.name, *(images / rel.with_suffix(s).name for s in IMAGE_SUFFIXES)]
    for candidate in candidates:
        if candidate.is_file() and (candidate.resolve() == root or root in candidate.resolve().parents):
            return candidate
    raise DatasetError(f"the annotation names {name!r}, but no such image is in {images}; pass the folder that holds it with --images")


def _image_size(path: Path) -> Tuple[int, int]:
    """(height, width) from the file's header, without decoding it."""
    from PIL import Image

    try:
        with Image.open(path, formats=READ_FORMATS) as im:
            return im.size[1], im.size[0]
    except Exception as e:
        raise DatasetError(f"{path} cannot be read as an image ({e})") from None


def _declared_size(declared: Tuple[Any, Any], image: Path, where: str) -> Tuple[int, int]:
    """The image's real (height, width), checked against what the annotation declares (when it does) before a
    mask of that size is allocated."""
    real = _image_size(image)
    h, w = declared
    if h is not None or w is not None:
        try:
            h, w = int(h), int(w)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: height/width {declared} are not numbers") from None
        if (h, w) != real:
            raise DatasetError(f"{where} declares {w}x{h}, but {image} is {real[1]}x{real[0]}; fix the export or the image")
    return real


class _RecordProblem(DatasetError):
    """What is wrong with one record, phrased without naming it ("its RLE ..."): `_record_error` says which."""


def _record_error(where: str, e: Exception) -> DatasetError:
    """A malformed record as one line that names its file and record."""
    if isinstance(e, _RecordProblem):
        return DatasetError(f"{where}: {e}")
    if isinstance(e, DatasetError):
        return e
    what = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
    return DatasetError(f"{where} is malformed ({what})")


def _polygon_mask(mask: np.ndarray, polygons: Sequence[Sequence[float]], value: int) -> None:
    """Paint flat [x1, y1, x2, y2, ...] polygons into `mask` with `value`."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(mask)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        points = [(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)]
        if not all(math.isfinite(v) for p in points for v in p):  # Pillow would draw NaN and inf somewhere
            raise _RecordProblem("its polygon holds a coordinate that is not a finite number")
        if len(points) >= 3:
            draw.polygon(points, fill=value)
    mask[...] = np.asarray(canvas)


def _rle_mask(rle: dict, height: int, width: int) -> np.ndarray:
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise ImportError("COCO RLE masks need pycocotools: pip install 'dabnet[coco]'") from None
    size = rle.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise _RecordProblem("its RLE has no 'size' [height, width]")
    if [int(v) for v in size] != [height, width]:
        raise _RecordProblem(f"its RLE is {size[1]}x{size[0]} but the image is {width}x{height}")
    if isinstance(rle.get("counts"), list):  # uncompressed RLE
        rle = coco_mask.frPyObjects(rle, height, width)
    return coco_mask.decode(rle).astype(bool)


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


@register_importer("coco")
def import_coco(source: Path, images: Path, classes: Optional[Sequence[str]] = None):
    """COCO instances or stuff JSON (polygons, RLE, crowd regions), one class per category."""
    try:
        data = json.loads(source.read_text(encoding="utf-8-sig"))
        cats, records, annotations = data["categories"], data["images"], data["annotations"]
        if not all(isinstance(v, list) for v in (cats, records, annotations)):
            raise TypeError("images, annotations and categories must be lists")
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{source} is not a COCO annotation file ({type(e).__name__}: {e}); it needs images, annotations and categories") from None
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not _is_id(c.get("id")) or not isinstance(c.get("name"), str) or not c["name"]:
            raise DatasetError(f"{source}: category {i} ({str(c)[:80]}) needs an id (a number or string) and a name")
    cats = sorted(cats, key=lambda c: (isinstance(c["id"], str), c["id"]))
    names = [c["name"] for c in cats]
    class_of = {c["id"]: i for i, c in enumerate(cats)}
    by_image: Dict[Any, list] = {}
    for i, a in enumerate(annotations):  # the file's order: later annotations are painted on top
        if not isinstance(a, dict) or not _is_id(a.get("image_id")) or not _is_id(a.get("category_id")):
            raise DatasetError(f"{source}: annotation {i} ({str(a)[:80]}) needs an image_id and a category_id")
        if a["category_id"] not in class_of:
            raise DatasetError(f"{source}: annotation {a.get('id', i)} has category {a['category_id']}, which no category defines")
        by_image.setdefault(a["image_id"], []).append(a)

    def pairs() -> Iterator[Pair]:
        for i, rec in enumerate(records):
            where = f"{source}: image record {i} ({str(rec.get('file_name') if isinstance(rec, dict) else rec)[:60]})"
            try:
                image = _find_image(images, rec["file_name"])
                h, w = _declared_size((rec.get("height"), rec.get("width")), image, where)
                mask = np.full((h, w), IGNORE_INDEX, np.uint8)
                for j, a in enumerate(by_image.get(rec.get("id"), [])):
                    try:
                        seg = a.get("segmentation")
                        if isinstance(seg, list) and seg and all(isinstance(v, (int, float)) for v in seg):
                            seg = [seg]  # one flat polygon instead of a list of them
                        if isinstance(seg, list):
                            _polygon_mask(mask, seg, class_of[a["category_id"]])
                        elif isinstance(seg, dict):
                            mask[_rle_mask(seg, h, w)] = class_of[a["category_id"]]
                    except Exception as e:  # which annotation of the record
                        raise _record_error(f"{where}, annotation {str(a.get('id', j))[:40]}", e) from None
            except Exception as e:  # one line naming the file and record, never a traceback
                raise _record_error(where, e) from None
            yield image, mask

    return names, None, Records(len(records), pairs)


@register_importer("cvat")
def import_cvat(source: Path, images: Path, classes: Optional[Sequence[str]] = None):
    """CVAT's "Segmentation mask 1.1" export: labelmap.txt (name:r,g,b per line) and SegmentationClass/*.png."""
    source = source if source.is_dir() else source.parent
    labelmap = source / "labelmap.txt"
    if not labelmap.is_file():
        raise DatasetError(f"{labelmap} not found: pass the folder of CVAT's 'Segmentation mask' export (it holds labelmap.txt)")
    names, palette = [], []
    for n, line in enumerate(labelmap.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            name, colour = line.split(":")[:2]
            rgb = tuple(int(v) for v in colour.split(","))
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) or not name.strip():
                raise ValueError
        except ValueError:
            raise DatasetError(f"{labelmap}, line {n}: {line!r} is not NAME:R,G,B (e.g. road:128,64,128::)") from None
        names.append(name.strip())
        palette.append(rgb)
    lut = {c: i for i, c in enumerate(palette)}
    masks = sorted((source / "SegmentationClass").glob("*.png"))
    if not masks:
        raise DatasetError(f"no masks in {source / 'SegmentationClass'}: export from CVAT as 'Segmentation mask 1.1'")

    def pairs() -> Iterator[Pair]:
        from PIL import Image

        for path in masks:
            image = _find_image(images, path.stem)
            if _image_size(image) != _image_size(path):
                h, w = _image_size(path)
                raise DatasetError(f"{path} is {w}x{h} but its image {image} is {_image_size(image)[1]}x{_image_size(image)[0]}")
            try:  # the header read, the pixels may still be cut short
                with Image.open(path, formats=READ_FORMATS) as im:
                    rgb = np.asarray(im.convert("RGB"))
            except Exception as e:
                raise DatasetError(f"{path} cannot be decoded ({str(e)[:80]}); export it from CVAT again") from None
            codes = rgb[..., 0].astype(np.int32) << 16 | rgb[..., 1].astype(np.int32) << 8 | rgb[..., 2]
            mask = np.full(codes.shape, IGNORE_INDEX, np.uint8)
            for code in np.unique(codes):
                colour = (int(code) >> 16, (int(code) >> 8) & 255, int(code) & 255)
                if colour not in lut:
                    raise DatasetError(f"{path} has the colour {colour}, which labelmap.txt does not list; fix the export or labelmap.txt")
                mask[codes == code] = lut[colour]
            yield image, mask

    return names, palette, Records(len(masks), pairs)


# Labelme shape types without area: their labels still name classes, but nothing is drawn for them.
_NO_AREA = ("line", "linestrip", "point", "points")


def _labelme_shape(draw, canvas, shape: Dict[str, Any], value: int) -> Optional[str]:
    """Draw one Labelme shape; the reason it was not drawn, or None."""
    from PIL import Image

    kind = shape.get("shape_type") or "polygon"
    pts = [tuple(map(float, p)) for p in shape.get("points") or []]
    if not all(len(p) == 2 and math.isfinite(p[0]) and math.isfinite(p[1]) for p in pts):
        raise _RecordProblem("its points are not [x, y] pairs of finite numbers")
    if kind == "polygon" or (kind == "rectangle" and len(pts) == 4):  # newer Labelme stores rectangles by 4 corners
        if len(pts) < 3:
            return f"a polygon of {len(pts)} point(s) has no area"
        draw.polygon(pts, fill=value)
    elif kind == "rectangle" and len(pts) == 2:
        (x0, y0), (x1, y1) = pts
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=value)
    elif kind == "circle" and len(pts) == 2:
        (cx, cy), (px, py) = pts
        r = math.hypot(px - cx, py - cy)
        w, h = canvas.size
        if r <= 2 * (w + h):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value)
        else:  # far larger than the image: Pillow's time follows the radius (minutes for some), this the image's size
            yy, xx = np.ogrid[:h, :w]
            arr = np.asarray(canvas).copy()
            arr[np.hypot(xx - cx, yy - cy) <= r] = value
            canvas.paste(Image.fromarray(arr))
    elif kind == "mask" and len(pts) == 2 and shape.get("mask"):  # Labelme 5.3+: a PNG of the box's pixels
        box = _mask_pixels(shape["mask"])
        x0, y0 = (int(round(min(a, b))) for a, b in zip(pts[0], pts[1]))
        w, h = canvas.size
        ya, yb, xa, xb = max(0, y0), min(h, y0 + box.shape[0]), max(0, x0), min(w, x0 + box.shape[1])
        if ya < yb and xa < xb:  # the part of the box inside the image: clipped at its edges, as polygons are
            arr = np.asarray(canvas).copy()
            arr[ya:yb, xa:xb][box[ya - y0 : yb - y0, xa - x0 : xb - x0]] = value
            canvas.paste(Image.fromarray(arr))
    elif kind in _NO_AREA:
        return f"a {kind} has no area"
    else:
        return f"shape type {kind!r} with {len(pts)} point(s) is not one dabnet draws"
    return None


def _mask_pixels(encoded: Any) -> np.ndarray:
    """A Labelme mask shape's box as booleans (non-zero: inside) from its base64-encoded PNG."""
    import base64
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(encoded)), formats=("PNG",)) as m:
            return np.asarray(m.convert("L")) > 0
    except Exception as e:
        raise _RecordProblem(f"its 'mask' is not a base64-encoded PNG ({type(e).__name__})") from None


@register_importer("labelme")
def import_labelme(source: Path, images: Path, classes: Optional[Sequence[str]] = None, log=print):
    """A folder of Labelme JSON files (polygons, rectangles, circles, masks); classes sorted by name unless
    given. Shapes without area (lines, points) are skipped, and said so."""
    files = sorted(source.glob("*.json")) if source.is_dir() else [source]
    if not files:
        raise DatasetError(f"no Labelme .json files in {source}")
    labels = set()
    for f in files:  # the labels only: the documents are read again one at a time
        doc = _labelme_doc(f)
        for i, shape in enumerate(doc["shapes"]):
            if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or not shape["label"]:
                raise DatasetError(f"{f}: shape {i} has no label")
            labels.add(shape["label"])
    found = sorted(labels)
    names = list(classes) if classes else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DatasetError(f"labels {unknown} are used in {source} but not in --classes {names}")
    class_of = {n: i for i, n in enumerate(names)}

    def pairs() -> Iterator[Pair]:
        from PIL import Image, ImageDraw

        for f in files:
            doc = _labelme_doc(f)
            try:
                image = _find_image(images, doc.get("imagePath") or f.stem)
                h, w = _declared_size((doc.get("imageHeight"), doc.get("imageWidth")), image, str(f))
                canvas = Image.new("L", (w, h), IGNORE_INDEX)
                draw = ImageDraw.Draw(canvas)
                for i, shape in enumerate(doc["shapes"]):  # in file order: later shapes on top
                    try:
                        why = _labelme_shape(draw, canvas, shape, class_of[shape["label"]])
                    except Exception as e:  # which shape of the file
                        raise _record_error(f"{f}: shape {i} ({shape['label'][:40]!r})", e) from None
                    if why:
                        log(f"{f}: shape {i} ({shape['label']!r}) skipped: {why}")
            except Exception as e:
                raise _record_error(str(f), e) from None
            yield image, np.asarray(canvas)

    return names, None, Records(len(files), pairs)


def _labelme_doc(path: Path) -> Dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path} is not a Labelme file: it holds a {type(doc).__name__}, not an object with 'shapes'")
    shapes = doc.get("shapes")
    if shapes is not None and not isinstance(shapes, list):
        raise DatasetError(f"{path}: 'shapes' is a {type(shapes).__name__}, not a list")
    doc["shapes"] = shapes or []
    return doc


def _output_stem(image: Path, images: Path, taken: set) -> str:
    """A flat file stem for an imported image, unique among `taken` (the folder dataset pairs images and masks by
    stem): its path under --images with '__' for '/', its suffix added where that is taken, a counter beyond."""
    rel = image.resolve().relative_to(images.resolve())
    stem = "__".join(rel.with_suffix("").parts)
    if stem in taken:
        stem = f"{stem}_{rel.suffix.lstrip('.')}"
    unique, k = stem, 1
    while unique in taken:
        k += 1
        unique = f"{stem}~{k}"
    taken.add(unique)
    return unique


def finetune_command(result: Dict[str, Any], out: PathLike, batch_size: int) -> str:
    """The `dabnet train` command that fine-tunes on an import as it came out: the finetune config (whose batch
    is `batch_size`), with no validation where there is no val split and a batch no larger than the train split."""
    sets = [f"data_root={result['yaml']}"]
    if "val" not in result["images"]:
        sets.append("val_split=null")
    if result["images"]["train"] < batch_size:
        sets.append(f"batch_size={result['images']['train']}")
    return f"dabnet train --config finetune --out {Path(out).parent / (Path(out).name + '-run')} " + " ".join(f"--set {s}" for s in sets)


def import_annotations(fmt: str, source: PathLike, images: PathLike, out: PathLike, val_fraction: float = 0.0,
                       classes: Optional[Sequence[str]] = None, overwrite: bool = False, log=print) -> Dict[str, object]:  # fmt: skip
    """Convert an export into OUT/images/SPLIT, OUT/masks/SPLIT and OUT/dataset.yaml; returns counts and the yaml.
    The dataset is made in a temporary folder beside OUT and renamed into place when whole: an existing OUT is
    refused unless `overwrite`, which replaces it whole; an interrupted import leaves OUT as it was."""
    import tempfile

    import yaml
    from PIL import Image

    importer = IMPORTERS.get(fmt)
    source, images, out = Path(source), Path(images), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"annotation export not found: {source}")
    if not images.is_dir():
        raise DatasetError(f"--images {images} is not a folder of images")
    if out.resolve() == images.resolve() or images.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out} is the images folder or inside it; choose a new folder so that the images stay untouched")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"--out {out} exists and is not empty: an import would mix with what is there. Choose a new "
                         "folder, or add --overwrite to replace it whole")  # fmt: skip
    kwargs = {"log": log} if fmt == "labelme" else {}
    names, palette, records = importer(source, images, classes, **kwargs)
    if len(names) != len(set(names)):
        dup = sorted(n for n, c in Counter(names).items() if c > 1)
        raise DatasetError(f"{source} names the classes {dup} more than once; each class needs its own name")
    if not names:
        raise DatasetError(f"{source} names no class (no annotation has a label): there is nothing to import")
    try:  # the folder dataset's own rule on the number of classes, checked before any mask is drawn
        identity_lut(len(names), IGNORE_INDEX)
    except DatasetError as e:
        raise DatasetError(f"{source}: {e} (masks hold 8-bit class ids beside ignore, {IGNORE_INDEX}); merge classes or "
                           "import a subset") from None  # fmt: skip
    total = len(records)
    if not total:
        raise DatasetError(f"{source} annotates no image")
    n_val = int(round(total * val_fraction))
    if val_fraction > 0:  # a val split asked for has an image, and train keeps one
        if total < 2:
            raise ValueError(f"--val-fraction {val_fraction}: {source} annotates 1 image, too few to split; use --val-fraction 0")
        n_val = min(max(n_val, 1), total - 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.importing-", dir=out.parent))
    try:
        counts: Counter = Counter()
        taken: set = set()
        for i, (image, mask) in enumerate(records):  # one image at a time
            split = "train" if i < total - n_val else "val"
            h, w = _image_size(image)
            if (w, h) != (mask.shape[1], mask.shape[0]):
                raise DatasetError(f"{image} is {w}x{h} but its annotation is {mask.shape[1]}x{mask.shape[0]}")
            counts[split] += 1
            stem = _output_stem(image, images, taken)
            shutil.copyfile(image, _mkparent(work / "images" / split / f"{stem}{image.suffix.lower()}"))
            Image.fromarray(mask).save(_mkparent(work / "masks" / split / f"{stem}.png"), format="PNG")
        splits = [s for s in ("train", "val") if counts[s]]
        spec = {"name": out.name, "classes": names, "ignore_index": IGNORE_INDEX,
                "splits": {s: {"images": f"images/{s}", "masks": f"masks/{s}"} for s in splits}}  # fmt: skip
        if palette:
            spec["palette"] = [list(c) for c in palette]
        (work / "dataset.yaml").write_text(f"# made by `dabnet data import {fmt}` from {source}; unannotated pixels are "
                                           f"ignore_index\n" + yaml.safe_dump(spec, sort_keys=False))  # fmt: skip
        from .datasets import FolderDataset

        for s in splits:  # every imported image is a pair of the dataset, none lost to a name
            pairs = len(FolderDataset(work / "dataset.yaml", s).pairs)
            if pairs != counts[s]:
                raise DatasetError(f"{counts[s]} image(s) imported into {s} make {pairs} pair(s); report this export to dabnet")
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
            out.rename(aside / out.name)
            work.rename(out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return {"yaml": str(out / "dataset.yaml"), "images": {s: counts[s] for s in splits}, "classes": names}


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
