"""`dabnet data import`: COCO (polygons, RLE), CVAT segmentation masks and Labelme exports, made here in
miniature, become folder datasets that check clean and train (issue 25)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dabnet.cli import main
from dabnet.data.datasets import IGNORE_INDEX, DatasetError, build_dataset
from dabnet.data.importers import import_annotations

H, W = 40, 60


def _images(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(folder / name)
    return folder


def _mask(out: Path, split: str, stem: str) -> np.ndarray:
    return np.asarray(Image.open(out / "masks" / split / f"{stem}.png"))


def _coco(tmp_path: Path) -> Path:
    from pycocotools import mask as coco_mask

    rle_area = np.zeros((H, W), np.uint8, order="F")
    rle_area[30:40, 0:10] = 1
    compressed = coco_mask.encode(np.asfortranarray(rle_area))
    compressed["counts"] = compressed["counts"].decode()
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W},
                   {"id": 2, "file_name": "sub/b.jpg", "height": H, "width": W}],
        "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "road"}],  # ids out of order: sorted by id
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 30, 0, 30, 20, 0, 20]], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "segmentation": [[10, 5, 20, 5, 20, 15, 10, 15]], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 3, "segmentation": compressed, "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 1, "segmentation": {"size": [H, W], "counts": [0, H * 5, H * (W - 5)]}, "iscrowd": 1},
        ],
    }  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(data))
    _images(tmp_path / "imgs", ["a.jpg", "b.jpg"])
    return tmp_path / "ann.json"


def test_coco_polygons_and_rle_later_on_top_unannotated_ignored(tmp_path):
    pytest.importorskip("pycocotools")
    src = _coco(tmp_path)
    res = import_annotations("coco", src, tmp_path / "imgs", tmp_path / "out")
    assert res["classes"] == ["road", "car"] and res["images"] == {"train": 2}
    a = _mask(tmp_path / "out", "train", "a")
    assert a[2, 2] == 0 and a[10, 15] == 1  # road, then the car painted over it
    assert a[35, 5] == 1 and a[35, 50] == IGNORE_INDEX  # compressed RLE; nothing drawn there
    b = _mask(tmp_path / "out", "train", "b")
    assert (b[:, :5] == 0).all() and (b[:, 5:] == IGNORE_INDEX).all()  # uncompressed RLE, column-major
    spec = yaml.safe_load((tmp_path / "out" / "dataset.yaml").read_text())
    assert spec["classes"] == ["road", "car"] and spec["ignore_index"] == 255
    assert len(build_dataset("folder", tmp_path / "out" / "dataset.yaml", "train")) == 2


def _cvat(tmp_path: Path) -> Path:
    export = tmp_path / "cvat"
    (export / "SegmentationClass").mkdir(parents=True)
    (export / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64,128::\ncar:0,0,142::\n")
    for i, name in enumerate(["f0", "f1", "f2"]):
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[: H // 2] = (128, 64, 128)
        rgb[H // 2 :, : 10 * (i + 1)] = (0, 0, 142)
        Image.fromarray(rgb).save(export / "SegmentationClass" / f"{name}.png")
    _images(tmp_path / "imgs", ["f0.png", "f1.png", "f2.png"])
    return export


def test_cvat_masks_map_colours_to_classes_and_split_off_val(tmp_path, capsys):
    export = _cvat(tmp_path)
    out = tmp_path / "out"
    code = main(["data", "import", "cvat", str(export), "--images", str(tmp_path / "imgs"), "--out", str(out), "--val-fraction", "0.34"])
    assert code == 0
    text = capsys.readouterr().out
    assert "imported {'train': 2, 'val': 1} image(s), 3 classes (background, road, car)" in text and "dataset is clean" in text
    m = _mask(out, "val", "f2")
    assert m[0, 0] == 1 and m[H - 1, 0] == 2 and m[H - 1, W - 1] == 0
    spec = yaml.safe_load((out / "dataset.yaml").read_text())
    assert spec["palette"] == [[0, 0, 0], [128, 64, 128], [0, 0, 142]]


def test_cvat_colour_missing_from_the_labelmap_names_the_file(tmp_path):
    export = _cvat(tmp_path)
    rgb = np.asarray(Image.open(export / "SegmentationClass" / "f1.png")).copy()
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(export / "SegmentationClass" / "f1.png")
    with pytest.raises(DatasetError, match=r"f1.png has the colour \(1, 2, 3\), which labelmap.txt does not list"):
        import_annotations("cvat", export, tmp_path / "imgs", tmp_path / "out")


def test_labelme_polygons_rectangles_circles_and_class_order(tmp_path):
    src = tmp_path / "lm"
    src.mkdir()
    shapes = [
        {"label": "tree", "points": [[0, 0], [59, 0], [59, 39], [0, 39]], "shape_type": "polygon"},
        {"label": "sign", "points": [[40, 5], [50, 15]], "shape_type": "rectangle"},
        {"label": "ball", "points": [[10, 30], [14, 30]], "shape_type": "circle"},
    ]
    (src / "x.json").write_text(json.dumps({"shapes": shapes, "imagePath": "x.jpg", "imageHeight": H, "imageWidth": W}))
    (src / "y.json").write_text(json.dumps({"shapes": shapes[1:2], "imagePath": "../elsewhere/y.jpg"}))
    _images(tmp_path / "imgs", ["x.jpg", "y.jpg"])
    res = import_annotations("labelme", src, tmp_path / "imgs", tmp_path / "out")
    assert res["classes"] == ["ball", "sign", "tree"]
    x = _mask(tmp_path / "out", "train", "x")
    assert x[1, 1] == 2 and x[10, 45] == 1 and x[30, 10] == 0
    y = _mask(tmp_path / "out", "train", "y")
    assert y[10, 45] == 1 and y[1, 1] == IGNORE_INDEX
    with pytest.raises(DatasetError, match=r"labels \['ball'\] are used .* but not in --classes"):
        import_annotations("labelme", src, tmp_path / "imgs", tmp_path / "o2", classes=["tree", "sign"])


def test_a_missing_image_and_a_bad_file_are_one_line(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    src = _coco(tmp_path)
    (tmp_path / "imgs" / "b.jpg").unlink()
    assert main(["data", "import", "coco", str(src), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o")]) == 2
    assert "names 'sub/b.jpg', but no such image is in" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["data", "import", "coco", str(tmp_path / "bad.json"), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a COCO annotation file" in capsys.readouterr().err


def test_from_an_annotation_tool_to_a_fine_tuned_model_in_four_commands(tmp_path, capsys):
    """The README's path: import (which checks the data), train with the finetune config, eval, predict."""
    export = _cvat(tmp_path)
    out = tmp_path / "mydata"
    assert main(["data", "import", "cvat", str(export), "--images", str(tmp_path / "imgs"), "--out", str(out), "--val-fraction", "0.34"]) == 0
    assert main(["train", "--config", "finetune", "--out", str(tmp_path / "run"), "--set", f"data_root={out / 'dataset.yaml'}",
                 "--set", "epochs=1", "--set", "batch_size=2", "--set", "crop_size=[32,32]", "--set", "workers=0",
                 "--set", "val_batch_size=1"]) == 0  # fmt: skip
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pth"), "--dataset", "folder", "--data-root",
                 str(out / "dataset.yaml"), "--split", "val", "--backend", "eager", "--workers", "0"]) == 0  # fmt: skip
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "last.pth"), str(tmp_path / "imgs" / "f0.png"),
                 "--out", str(tmp_path / "pred"), "--backend", "eager"]) == 0  # fmt: skip
    label = np.asarray(Image.open(tmp_path / "pred" / "f0_label.png"))
    assert label.shape == (H, W) and label.max() <= 2
