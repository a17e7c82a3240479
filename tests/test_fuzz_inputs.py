"""Fuzzing what users hand to dabnet (issue 50, section 6): images given to `Segmenter.predict`, and COCO, CVAT and
Labelme exports given to `dabnet data import`.

The property, for every input: a result of the right shape and dtype, or a one-line error of dabnet's own type,
within a time bound; never another exception, a hang or a crash. Budgets and seeds: tests/fuzz.py
(`DABNET_FUZZ=deep` runs longer). Each defect the fuzzer found is pinned as an @example."""

from __future__ import annotations

import base64
import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
import pytest
import torch
import yaml
from fuzz import fuzz, time_bound
from hypothesis import event, example, given
from hypothesis import strategies as st
from PIL import Image
from torch import nn

import dabnet
from dabnet.data.datasets import IGNORE_INDEX, DatasetError
from dabnet.data.importers import import_annotations
from dabnet.inference.segmenter import Segmenter
from dabnet.io.preprocessing import ImageInputError

# ----------------------------------------------------------------------------- images for Segmenter.predict

CHANNELS = (1, 3, 4)  # what the input rule takes as channels (docs/getting-started.md, "What predict takes")
MAX_AREA = 64_000  # pixels an example may have: sides run from 1 to 2000, the budget bounds their product
NP_DTYPES = ["uint8", "uint16", ">u2", "int8", "int16", "int32", "int64", "uint32", "uint64", "float16", "float32", ">f4",
             "float64", "longdouble", "bool", "complex64", "object", "datetime64[s]", "timedelta64[s]", "<U1"]  # fmt: skip
TORCH_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.float16,
                torch.bfloat16, torch.float32, torch.float64, torch.bool, torch.complex64, torch.float8_e4m3fn]  # fmt: skip
PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16", "I;16B", "I;16L", "I;16N", "LA",
             "PA", "La", "RGBX", "RGBa"]  # fmt: skip
FILLS = ["zeros", "unit", "byte", "full", "nan", "inf", "negative", "huge"]


class TinyNet(nn.Module):
    """A 300-class network of one convolution: labels past uint8 at the cost of a few multiply-adds."""

    num_classes = 300

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, self.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture(scope="module")
def segmenters():
    """An untrained 11-class DABNet run eagerly; a 300-class network whose images run as several tiles; the same
    network on images resized by 0.5 (labels brought back to each image's size)."""
    torch.manual_seed(0)
    dab = Segmenter.for_model(dabnet.create_model("dabnet", 11).eval())
    tiled = Segmenter(TinyNet().eval(), mean=(128, 128, 128), std=(64, 64, 64))
    tiled.max_pixels, tiled.tile_margin = 48 * 48, 8
    scaled = Segmenter(TinyNet().eval(), mean=(128, 128, 128), std=(64, 64, 64), scale=0.5)
    return {"dabnet": dab, "tiled": tiled, "scaled": scaled}


def _values(rng: np.random.Generator, shape: Tuple[int, ...], dtype: str, fill: str) -> np.ndarray:
    """An array of `shape` and `dtype` holding `fill`'s kind of values."""
    dt = np.dtype(dtype)
    if dt.kind in "OUMm":  # objects, strings, dates: what a confused caller passes
        base = rng.integers(0, 256, shape)
        return base.astype(dt) if dt.kind != "O" else np.array(base.tolist(), dtype=object).reshape(shape)
    if fill == "zeros":
        return np.zeros(shape, dt)
    if fill == "unit":
        return rng.random(shape).astype(dt)
    if fill == "byte":
        return rng.integers(0, 256, shape).astype(dt)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    if dt.kind in "fc":
        special = {"nan": np.nan, "inf": np.inf, "negative": -1.0, "huge": 1e30, "full": 1e4}[fill]
        out = (rng.random(shape) * 255).astype(dt)
        if out.size:
            out.reshape(-1)[rng.integers(0, out.size)] = special
        return out
    info = np.iinfo(dt)
    if fill in ("full", "huge"):
        return rng.integers(info.min, info.max, shape, dtype=dt.newbyteorder("="), endpoint=True).astype(dt)
    if fill == "negative" and info.min < 0:
        return rng.integers(info.min, 0, shape, dtype=dt.newbyteorder("=")).astype(dt)
    return rng.integers(0, 256, shape).astype(dt)


@st.composite
def images(draw):
    """(image, (height, width) the input rule reads it as or None where the rule refuses the layout, must work):
    NumPy arrays, torch tensors and PIL images of every dtype, layout, size from 1 to 2000 and channel count."""
    container = draw(st.sampled_from(["numpy", "numpy", "torch", "torch", "pil"]))
    h = draw(st.one_of(st.integers(1, 48), st.integers(1, 2000), st.just(0)))
    w = draw(st.one_of(st.integers(1, 48), st.integers(1, 2000), st.just(0)))
    if h * w > MAX_AREA:
        w = max(1, MAX_AREA // max(h, 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fill = draw(st.sampled_from(FILLS))
    if container == "pil":
        mode = draw(st.sampled_from(PIL_MODES))
        im = Image.new(mode, (max(w, 1), max(h, 1)))
        im.frombytes(rng.integers(0, 256, len(im.tobytes()), dtype=np.uint8).tobytes())
        return im, (max(h, 1), max(w, 1)), mode not in ("F",)  # float pixels may be NaN: values, not layout
    layout = draw(st.sampled_from(["hw", "hwc", "hwc", "chw", "chw", "nhwc", "nchw", "c", "nnhwc"]))
    c = draw(st.sampled_from([1, 3, 3, 4, 2, 5]))
    n = draw(st.sampled_from([1, 1, 2]))
    shape = {"hw": (h, w), "hwc": (h, w, c), "chw": (c, h, w), "nhwc": (n, h, w, c), "nchw": (n, c, h, w), "c": (c,),
             "nnhwc": (1, n, h, w, c)}[layout]  # fmt: skip
    if container == "numpy":
        dtype = draw(st.sampled_from(NP_DTYPES))
        array = _values(rng, shape, dtype, fill)
        view = draw(st.sampled_from(["as is", "reversed", "strided", "read-only", "fortran"]))
        if view == "reversed" and array.ndim >= 2:
            array = array[::-1]
        elif view == "strided" and array.ndim >= 2:
            array = np.repeat(array, 2, axis=1)[:, ::2]
        elif view == "read-only":
            array.setflags(write=False)
        elif view == "fortran":
            array = np.asfortranarray(array)
        image: Any = array
        hw = _rule_numpy(array.shape)
        works = dtype in ("uint8", "uint16", ">u2") or (dtype.startswith("float") and fill in ("zeros", "unit", "byte"))
    else:
        dtype = draw(st.sampled_from(TORCH_DTYPES))
        base = _values(rng, shape, "float64" if dtype.is_floating_point or dtype.is_complex else "int64", fill)
        if dtype == torch.bool:
            base = base > 0
        elif not (dtype.is_floating_point or dtype.is_complex):
            info = torch.iinfo(dtype)
            base = np.clip(base, info.min, info.max)
        image = torch.from_numpy(np.ascontiguousarray(base)).to(dtype)
        if draw(st.booleans()) and image.ndim >= 2:
            image = image.transpose(-1, -2).contiguous().transpose(-1, -2)  # the same values, other strides
        hw = _rule_torch(tuple(image.shape))
        works = dtype == torch.uint8 or (dtype.is_floating_point and dtype != torch.float8_e4m3fn and fill in ("zeros", "unit", "byte"))
    if hw is not None and 0 in hw:
        hw, works = None, False
    return image, hw, works


def _rule_numpy(shape: Tuple[int, ...]) -> Optional[Tuple[int, int]]:
    """The rule for NumPy arrays, restated here: HxW, HxWxC, or 1xHxWxC, C in CHANNELS."""
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 2:
        return shape
    if len(shape) == 3 and shape[2] in CHANNELS:
        return shape[:2]
    return None


def _rule_torch(shape: Tuple[int, ...]) -> Optional[Tuple[int, int]]:
    """The rule for tensors, restated here: HxW, CxHxW or 1xCxHxW as PyTorch keeps images; HxWxC only where the first
    axis cannot be channels and the last can (a NumPy image passed through torch.from_numpy)."""
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 2:
        return shape
    if len(shape) == 3 and shape[0] in CHANNELS:
        return shape[1:]
    if len(shape) == 3 and shape[2] in CHANNELS:
        return shape[:2]
    return None


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text and len(text) < 400, repr(text)
    return text


@fuzz(max_examples=80)
@given(case=images(), which=st.sampled_from(["dabnet", "tiled", "scaled"]))
# Defects the fuzzer found, kept as examples (each failed before its fix).
@example(case=(torch.zeros(1, 1, 3, dtype=torch.uint8), (1, 3), True), which="dabnet")  # 1xHxW of width 3: read as HxWx3
@example(case=(Image.new("La", (5, 4)), (4, 5), True), which="dabnet")  # PIL mode La: Pillow's ValueError, not dabnet's
@example(case=(np.zeros((8, 8, 3), np.uint8), (8, 8), True), which="tiled")  # 300 classes: uint8 labels (299 -> 43)
def test_predict_returns_labels_or_one_line_error_for_any_image(segmenters, case, which):
    image, hw, works = case
    seg = segmenters[which]
    with time_bound(20, "Segmenter.predict"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            labels = seg.predict(image)
        except ImageInputError as e:
            _one_line(e)
            assert not (works and hw is not None), f"refused an image the rule takes: {e}"
            return
    assert hw is not None, f"took an image of shape {getattr(image, 'shape', None)} the rule refuses"
    want = np.uint16 if len(seg.class_names) > 256 else np.uint8
    assert labels.shape == tuple(hw) and labels.dtype == want, (labels.shape, labels.dtype, hw)
    assert int(labels.max()) < len(seg.class_names)


# ----------------------------------------------------------------------------- COCO, CVAT and Labelme exports

IMAGES = {"a.png": (40, 60), "b.jpg": (30, 20), "sub/c.png": (9, 7)}  # file -> (height, width)
NAMES = ["road", "car", "sky", "tree", "ünï", " ", "", "x" * 300, "a/b", "a:b"]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6),
                         st.sampled_from([0, -1, 1e300, 2**64, "1", "", "../a.png", "/etc/passwd"]))  # fmt: skip
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                           max_leaves=8)  # fmt: skip
# Mostly on or near the images, now and then far off, huge, NaN or infinite.
coordinate = st.integers(0, 19).flatmap(lambda k: st.floats(-5, 70) if k < 9 else st.integers(-5, 70) if k < 18 else
                                        st.floats() if k == 18 else st.sampled_from([1e300, -1e300, 2**80, 1e7, -1e5]))  # fmt: skip


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """The images every fuzzed export annotates (a PNG, a JPEG, one in a subfolder)."""
    root = tmp_path_factory.mktemp("fuzz-images")
    for i, (name, (h, w)) in enumerate(IMAGES.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 60 * i, np.uint8)).save(root / name)
    return root


def _mutated(draw, doc: Any, most: int = 3) -> Any:
    """`doc` with up to `most` of its nodes deleted or replaced by JSON values of any type."""
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2, most]))):
        paths, stack = [], [((), doc)]
        while stack:
            path, node = stack.pop()
            paths.append(path)
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            stack.extend((path + (k,), v) for k, v in items)
        path, value = draw(st.sampled_from(paths)), draw(json_values)
        if not path:
            doc = value
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return doc


def _json_file(draw, doc: Any) -> bytes:
    """The document as a file: JSON (NaN and Infinity as Python writes them), now and then cut short, not UTF-8,
    with a byte-order mark or empty."""
    text = json.dumps(doc, allow_nan=True).encode()
    damage = draw(st.sampled_from(["none"] * 24 + ["truncated", "latin-1", "bom", "empty"]))
    return {"none": text, "truncated": text[: len(text) // 2], "latin-1": text + b"\xff\xfe", "bom": b"\xef\xbb\xbf" + text,
            "empty": b""}[damage]  # fmt: skip


def _class_names(draw, most: int = 300) -> list:
    """A few classes, or more than a dataset holds; now and then a name that is odd, blank or repeated."""
    count = draw(st.integers(250, most)) if draw(st.integers(0, 7)) == 0 else draw(st.integers(1, 4))
    names = [NAMES[i] if i < 4 else f"class{i}" for i in range(count)]
    if draw(st.integers(0, 7)) == 0:
        names[draw(st.integers(0, count - 1))] = draw(st.sampled_from(NAMES[4:] + [names[0]]))
    return names


def _polygon(draw) -> list:
    return [draw(coordinate) for _ in range(2 * draw(st.integers(0, 8)))]


def _rle(draw, h: int, w: int) -> Any:
    from pycocotools import mask as coco_mask

    kind = draw(st.sampled_from(["counts", "compressed", "wrong size", "garbage"]))
    if kind == "counts":
        return {"size": [h, w], "counts": draw(st.lists(st.integers(0, h * w), min_size=1, max_size=5))}
    if kind == "compressed":
        area = np.random.default_rng(draw(st.integers(0, 99))).random((h, w)) < 0.5
        return {"size": [h, w], "counts": coco_mask.encode(np.asfortranarray(area.astype(np.uint8)))["counts"].decode()}
    if kind == "wrong size":
        return {"size": [h + 1, w], "counts": [h * w]}
    return {"size": draw(json_values), "counts": draw(st.text(max_size=12) | json_values)}


def _png_bytes(array: np.ndarray, mode: Optional[str] = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(array)
    (im.convert(mode) if mode else im).save(buf, format="PNG")
    return buf.getvalue()


@st.composite
def coco_exports(draw) -> Tuple[str, dict]:
    """("coco", {file: bytes}): an instances JSON of polygons (one flat or several), RLE (counts, compressed, of the
    wrong size, garbage) and categories (few or too many, ids in order, shuffled or strings), then mutated."""
    names = _class_names(draw)
    ids = draw(st.sampled_from(["ordered", "shuffled", "strings"]))
    cat_ids = [f"c{i}" if ids == "strings" else (i * 7919 % 10007 if ids == "shuffled" else i + 1) for i in range(len(names))]
    records = []
    for i, (name, (h, w)) in enumerate(IMAGES.items()):
        if draw(st.integers(0, 3)):
            size = draw(st.sampled_from(["right"] * 4 + ["none", "wrong"]))
            records.append({"id": i, "file_name": name, **({} if size == "none" else {"height": h + (size == "wrong"), "width": w})})
    annotations = []
    for k in range(draw(st.integers(0, 6))):
        rec = draw(st.sampled_from(records)) if records else {"id": 99, "file_name": "a.png"}
        h, w = IMAGES.get(rec["file_name"], (40, 60))
        kind = draw(st.sampled_from(["polygon", "polygons", "flat", "rle"]))
        seg = {"polygon": lambda: [_polygon(draw)], "polygons": lambda: [_polygon(draw), _polygon(draw)],
               "flat": lambda: _polygon(draw), "rle": lambda: _rle(draw, h, w)}[kind]()  # fmt: skip
        annotations.append({"id": k, "image_id": rec["id"], "category_id": draw(st.sampled_from(cat_ids)), "segmentation": seg,
                            "iscrowd": int(kind == "rle")})  # fmt: skip
    doc = {"images": records, "annotations": annotations, "categories": [{"id": i, "name": n} for i, n in zip(cat_ids, names)]}
    return "coco", {"instances.json": _json_file(draw, _mutated(draw, doc))}


@st.composite
def labelme_exports(draw) -> Tuple[str, dict]:
    """("labelme", {file: bytes}): one JSON per annotated image, its shapes of every type Labelme writes (and some
    it does not), points anywhere, masks valid or not; the first file then mutated."""
    names = _class_names(draw)
    kinds = ["polygon", "rectangle", "circle", "mask", "line", "linestrip", "point", "points", None, "ellipse", 7]
    files = {}
    for name, (h, w) in IMAGES.items():
        if not draw(st.integers(0, 3)):
            continue
        shapes = []
        for _ in range(draw(st.integers(0, 5))):
            kind = draw(st.sampled_from(kinds))
            n = {"rectangle": 2, "circle": 2, "mask": 2}.get(kind) or draw(st.integers(0, 6))
            shape = {"label": draw(st.sampled_from(names)), "shape_type": kind, "points": [[draw(coordinate), draw(coordinate)] for _ in range(n)]}
            if kind == "mask":
                box = np.random.default_rng(draw(st.integers(0, 99))).random((draw(st.integers(1, 12)), 5)) < 0.5
                shape["mask"] = base64.b64encode(_png_bytes(box.astype(np.uint8) * 255)).decode()
                if draw(st.integers(0, 4)) == 0:
                    shape["mask"] = draw(st.sampled_from(["", "!!", base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()]))
            shapes.append(shape)
        doc = {"version": "5.4.1", "shapes": shapes, "imagePath": draw(st.sampled_from([name] * 4 + [f"../x/{name}", name.upper()])),
               "imageData": None, "imageHeight": h, "imageWidth": w}  # fmt: skip
        broken = not files  # one file of the export mutated and damaged: the others stay whole
        files[f"{Path(name).stem}.json"] = _json_file(draw, _mutated(draw, doc, most=2)) if broken else json.dumps(doc).encode()
    return "labelme", files


CVAT_BAD_LINES = ["road", "road:1,2", "road:1,2,300::", "road:-1,0,0", ":1,2,3", "a:b:c:d", "x:1e9,0,0", "y:" + "9" * 40 + ",0,0", "\x00:1,2,3"]
CVAT_MASKS = ["listed"] * 6 + ["unlisted colour", "wrong size", "RGBA", "L", "P", "I;16", "garbage", "truncated"]


def _cvat_colours(count: int) -> list:
    return [(i % 256, (i * 7) % 256, (i // 256) * 50) for i in range(count)]


@st.composite
def cvat_exports(draw) -> Tuple[str, dict]:
    """("cvat", {file: bytes}): labelmap.txt (few or too many labels, broken lines) and SegmentationClass PNGs (the
    listed colours, an unlisted one, the wrong size, other modes, garbage, cut short)."""
    names = _class_names(draw)
    colours = _cvat_colours(len(names))
    lines = ["# label:color_rgb:parts:actions"] + [f"{n}:{r},{g},{b}::" for n, (r, g, b) in zip(names, colours)]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(CVAT_BAD_LINES)))
    files = {"labelmap.txt": "\n".join(lines).encode()}
    for name, (h, w) in IMAGES.items():
        if "/" in name or not draw(st.integers(0, 3)):  # CVAT names masks by the image's stem
            continue
        kind = draw(st.sampled_from(CVAT_MASKS))
        rng = np.random.default_rng(draw(st.integers(0, 99)))
        rgb = np.asarray(colours, np.uint8)[rng.integers(0, len(colours), (h + 1, w) if kind == "wrong size" else (h, w))]
        if kind == "unlisted colour":
            rgb[0, 0] = (255, 254, 253)
        png = _png_bytes(rgb, kind if kind in ("RGBA", "L", "P", "I;16") else None)
        files[f"SegmentationClass/{Path(name).stem}.png"] = {"garbage": png[:8] + rng.bytes(40), "truncated": png[: len(png) // 2]}.get(kind, png)
    return "cvat", files


def _check_import(fmt: str, source: Path, images: Path, out: Path) -> None:
    """The property: a dataset whose masks hold only its classes and ignore, or one DatasetError line that names
    the export or the images (never a temporary file or an object's address), leaving no --out behind."""
    with time_bound(20, f"dabnet data import {fmt}"):
        try:
            res = import_annotations(fmt, source, images, out, **({"log": lambda *a: None} if fmt == "labelme" else {}))
        except DatasetError as e:
            event(f"{fmt}: refused")
            text = _one_line(e)
            named = str(source.parent if fmt == "coco" else source) in text or str(images) in text
            assert named, f"names neither the export nor the images: {text}"
            assert ".importing-" not in text, f"names a temporary file: {text}"
            assert " object at 0x" not in text, f"shows an object's address: {text}"
            assert not out.exists(), "a refused import left its --out behind"
            return
    event(f"{fmt}: imported")
    classes = yaml.safe_load((out / "dataset.yaml").read_text())["classes"]
    assert classes == res["classes"] and len(set(classes)) == len(classes) and 1 <= len(classes) <= 250
    for split, count in res["images"].items():
        masks = sorted((out / "masks" / split).glob("*.png"))
        assert len(masks) == count
        for m in masks:
            mask = np.asarray(Image.open(m))
            assert mask.dtype == np.uint8 and mask.ndim == 2
            assert set(np.unique(mask).tolist()) <= set(range(len(classes))) | {IGNORE_INDEX}, (m, np.unique(mask))


def _write_export(root: Path, export: Tuple[str, dict]) -> Path:
    """The export's files under `root`; the path `dabnet data import` is given (the COCO JSON, else the folder)."""
    fmt, files = export
    root.mkdir()
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root / "instances.json" if fmt == "coco" else root


# Defects the fuzzer found, kept as examples (each failed before its fix).
def _coco_doc(categories: int, segmentation: Any, category: int = 1) -> dict:
    doc = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": i + 1, "name": f"c{i}"} for i in range(categories)],
           "annotations": [{"id": 7, "image_id": 1, "category_id": category, "segmentation": segmentation}]}  # fmt: skip
    return {"instances.json": json.dumps(doc).encode()}


def _cvat_files(labels: int, colour: int) -> dict:
    colours = _cvat_colours(labels)
    mask = np.zeros((40, 60, 3), np.uint8)
    mask[:] = colours[colour]
    return {"labelmap.txt": "\n".join(f"class{i}:{r},{g},{b}::" for i, (r, g, b) in enumerate(colours)).encode(),
            "SegmentationClass/a.png": _png_bytes(mask)}  # fmt: skip


def _labelme_files(*shapes: dict) -> dict:
    return {"a.json": json.dumps({"shapes": list(shapes), "imagePath": "a.png"}).encode()}


@fuzz(max_examples=60)
@given(export=st.one_of(coco_exports(), labelme_exports(), cvat_exports()))
# 300 categories: refused only after every mask was drawn, naming no file ("between 1 and 250 classes ...").
@example(export=("coco", _coco_doc(300, [[0, 0, 30, 0, 30, 20]], category=300)))
# An RLE without its size, or of the wrong size: "its RLE has no 'size'", naming neither file nor record.
@example(export=("coco", _coco_doc(1, {"counts": [0, 2400]})))
@example(export=("coco", _coco_doc(1, {"size": [41, 60], "counts": [2460]})))
# 257 CVAT labels: OverflowError (Python integer 256 out of bounds for uint8), a traceback.
@example(export=("cvat", _cvat_files(257, 256)))
# A CVAT mask cut short after its header: OSError from Pillow, a traceback.
@example(export=("cvat", {**_cvat_files(2, 1), "SegmentationClass/a.png": _cvat_files(2, 1)["SegmentationClass/a.png"][:60]}))
# Labelme files with no labelled shape: refused at the end, naming the temporary dataset.yaml of the import.
@example(export=("labelme", _labelme_files()))
# A Labelme mask that is not a PNG: "cannot identify image file <_io.BytesIO object at 0x...>".
@example(export=("labelme", _labelme_files({"label": "a", "shape_type": "mask", "points": [[0, 0], [4, 4]], "mask": "iVBORw0KGgo="})))
# A Labelme circle of radius 7e5 on a 60x40 image: Pillow draws it for about a minute, in native code.
@example(export=("labelme", _labelme_files({"label": "a", "shape_type": "circle", "points": [[10, 10], [700010, 10]]})))
def test_imports_give_a_dataset_or_one_line_error_for_any_export(image_folder, export):
    with tempfile.TemporaryDirectory() as tmp:
        source = _write_export(Path(tmp) / "export", export)
        _check_import(export[0], source, image_folder, Path(tmp) / "out")


@fuzz(max_examples=25)
@given(x0=st.integers(-20, 75), y0=st.integers(-20, 55), bh=st.integers(1, 30), bw=st.integers(1, 30), seed=st.integers(0, 2**16))
@example(x0=0, y0=-2, bh=1, bw=1, seed=2)  # above the image: painted into its second-to-last row instead
@example(x0=0, y0=-1, bh=2, bw=1, seed=0)  # across its top edge: "could not broadcast input array from shape (2,1)"
def test_a_labelme_mask_anywhere_paints_its_own_pixels_inside_the_image(image_folder, x0, y0, bh, bw, seed):
    """Labelme 5.3+ stores a mask shape as a PNG of its box's pixels: wherever the box lies, in, across or past the
    image's edges, the pixels inside the image are painted and the rest clipped, as polygons are."""
    box = np.random.default_rng(seed).random((bh, bw)) < 0.5
    shape = {"label": "thing", "shape_type": "mask", "points": [[x0, y0], [x0 + bw - 1, y0 + bh - 1]],
             "mask": base64.b64encode(_png_bytes(box.astype(np.uint8) * 255)).decode()}  # fmt: skip
    h, w = IMAGES["a.png"]
    want = np.full((h, w), IGNORE_INDEX, np.uint8)
    ys, xs = np.nonzero(box)
    inside = (0 <= ys + y0) & (ys + y0 < h) & (0 <= xs + x0) & (xs + x0 < w)
    want[ys[inside] + y0, xs[inside] + x0] = 0
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "lm").mkdir()
        (Path(tmp) / "lm" / "a.json").write_text(json.dumps({"shapes": [shape], "imagePath": "a.png"}))
        with time_bound(20, "a Labelme mask import"):
            import_annotations("labelme", Path(tmp) / "lm", image_folder, Path(tmp) / "out", log=lambda *a: None)
        np.testing.assert_array_equal(np.asarray(Image.open(Path(tmp) / "out" / "masks" / "train" / "a.png")), want)


def test_an_export_of_too_many_classes_is_refused_before_any_mask_is_drawn(image_folder, tmp_path, monkeypatch):
    import dabnet.data.importers as importers

    drawn = []
    monkeypatch.setattr(importers, "_polygon_mask", lambda *a: drawn.append(a))
    _write_export(tmp_path / "export", ("coco", _coco_doc(300, [[0, 0, 30, 0, 30, 20]], category=300)))
    with pytest.raises(DatasetError, match=r"instances.json: between 1 and 250 classes are supported, got 300") as e:
        import_annotations("coco", tmp_path / "export" / "instances.json", image_folder, tmp_path / "out")
    assert not drawn and "\n" not in str(e.value)


@pytest.mark.parametrize("fmt, files, words", [
    ("coco", _coco_doc(1, [[0, 0, float("nan"), 0, 30, 20]]), r"image record 0 \(a.png\), annotation 7: its polygon holds a coordinate that is not a finite number"),
    ("labelme", _labelme_files({"label": "a", "points": [[0, 0], [float("inf"), 0], [5, 5]]}), r"a.json: shape 0 \('a'\): its points are not \[x, y\] pairs of finite numbers"),
    ("labelme", _labelme_files({"label": "a", "points": [[0, 0, 1], [9, 0, 1], [5, 5, 1]]}), r"a.json: shape 0 \('a'\): its points are not \[x, y\] pairs"),
])  # fmt: skip
def test_coordinates_that_are_not_finite_pairs_are_refused_naming_the_shape(image_folder, tmp_path, fmt, files, words):
    """Pillow draws NaN and infinite points somewhere rather than failing: a silently wrong mask."""
    source = _write_export(tmp_path / "export", (fmt, files))
    with pytest.raises(DatasetError, match=words):
        import_annotations(fmt, source, image_folder, tmp_path / "out", **({"log": print} if fmt == "labelme" else {}))
