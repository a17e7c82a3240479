"""`dabnet data import`: COCO (polygons, RLE), CVAT segmentation masks and Labelme exports, made here in
miniature, become folder datasets that check clean and train (issue 25)."""

from __future__ import annotations

import json
import os
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


# ----------------------------------------------------------------------------- round 3 of bad input (issue 40)


def _coco_doc(images, annotations, categories=({"id": 1, "name": "road"},)):
    return {"images": list(images), "annotations": list(annotations), "categories": list(categories)}


def _square(image_id, cat=1, x=0):
    return {"id": image_id * 10 + x, "image_id": image_id, "category_id": cat, "segmentation": [[x, 0, x + 10, 0, x + 10, 10, x, 10]]}


def test_images_of_one_stem_or_one_name_in_two_folders_stay_apart(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    (imgs / "cam1").mkdir(parents=True)
    (imgs / "cam2").mkdir()
    for i, name in enumerate(["s1.png", "s1.jpg", "cam1/0001.jpg", "cam2/0001.jpg"]):
        Image.fromarray(np.full((H, W, 3), 30 * i, np.uint8)).save(imgs / name)
    recs = [{"id": i + 1, "file_name": n, "height": H, "width": W} for i, n in enumerate(["s1.png", "s1.jpg", "cam1/0001.jpg", "cam2/0001.jpg"])]
    src = tmp_path / "c.json"
    src.write_text(json.dumps(_coco_doc(recs, [_square(i + 1, x=10 * i) for i in range(4)])))
    res = import_annotations("coco", src, imgs, tmp_path / "out")
    assert res["images"] == {"train": 4}
    ds = build_dataset("folder", tmp_path / "out" / "dataset.yaml", "train")
    assert len(ds) == 4
    for i in range(4):  # each image is paired with its own mask: the square at x = 10 * (record index)
        image, mask = ds.load_pair(i)
        k = int(round(int(image[0, 0, 0]) / 30))  # JPEG may move a flat colour by a level or two
        assert [mask[5, 10 * j + 5] == 0 for j in range(4)] == [j == k for j in range(4)]


def test_an_existing_out_is_refused_unless_overwrite_replaces_it_whole(tmp_path, capsys):
    export = _cvat(tmp_path)
    out = tmp_path / "out"
    args = ["data", "import", "cvat", str(export), "--images", str(tmp_path / "imgs"), "--out", str(out)]
    assert main(args) == 0
    (out / "images" / "train" / "stray.png").write_bytes((out / "images" / "train" / "f0.png").read_bytes())
    assert main(args) == 2
    assert "exists and is not empty" in capsys.readouterr().err and (out / "images" / "train" / "stray.png").exists()
    (export / "SegmentationClass" / "f2.png").unlink()
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["f0.png", "f1.png"]


def test_declared_sizes_are_checked_against_the_image_before_any_mask_is_made(tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.png"])
    for h, w in [(30000, 30000), (200000, 200000), (H + 1, W)]:
        src = tmp_path / "c.json"
        src.write_text(json.dumps(_coco_doc([{"id": 1, "file_name": "a.png", "height": h, "width": w}], [_square(1)])))
        with pytest.raises(DatasetError, match=f"declares {w}x{h}, but .*a.png is {W}x{H}"):
            import_annotations("coco", src, imgs, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-made


def test_records_without_a_size_take_the_images(tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.png"])
    src = tmp_path / "c.json"
    src.write_text(json.dumps(_coco_doc([{"id": 1, "file_name": "a.png"}], [{**_square(1), "segmentation": [0, 0, 10, 0, 10, 10, 0, 10]}])))
    import_annotations("coco", src, imgs, tmp_path / "out")  # a flat polygon list is one polygon
    assert _mask(tmp_path / "out", "train", "a")[5, 5] == 0


@pytest.mark.parametrize("name", ["../secret.png", "/etc/secret.png"])
def test_paths_that_leave_images_are_never_read_outside(tmp_path, name):
    imgs = _images(tmp_path / "imgs", ["a.png"])
    Image.fromarray(np.full((H, W, 3), 99, np.uint8)).save(tmp_path / "secret.png")
    src = tmp_path / "c.json"
    src.write_text(json.dumps(_coco_doc([{"id": 1, "file_name": name, "height": H, "width": W}], [_square(1)])))
    with pytest.raises(DatasetError, match="no such image is in"):
        import_annotations("coco", src, imgs, tmp_path / "out")


def test_a_labelme_file_saved_on_windows_finds_its_image(tmp_path):
    imgs = _images(tmp_path / "images", ["f0.jpg"])
    src = tmp_path / "lm"
    src.mkdir()
    shape = {"label": "road", "points": [[0, 0], [20, 0], [20, 20]], "shape_type": "polygon"}
    (src / "f0.json").write_text(json.dumps({"shapes": [shape], "imagePath": "..\\images\\f0.jpg"}))
    assert import_annotations("labelme", src, imgs, tmp_path / "out")["images"] == {"train": 1}


def test_labelme_masks_and_four_point_rectangles_are_drawn_lines_and_points_skipped_and_said(tmp_path, capsys):
    import base64
    import io

    imgs = _images(tmp_path / "imgs", ["x.jpg"])
    box = np.zeros((6, 8), np.uint8)
    box[1:5, 2:6] = 255
    buf = io.BytesIO()
    Image.fromarray(box).save(buf, format="PNG")
    shapes = [
        {"label": "mask", "shape_type": "mask", "points": [[30, 20], [37, 25]], "mask": base64.b64encode(buf.getvalue()).decode()},
        {"label": "rect", "shape_type": "rectangle", "points": [[0, 0], [10, 0], [10, 10], [0, 10]]},
        {"label": "wire", "shape_type": "line", "points": [[0, 30], [50, 30]]},
        {"label": "spot", "shape_type": "point", "points": [[5, 35]]},
    ]
    src = tmp_path / "lm"
    src.mkdir()
    (src / "x.json").write_text(json.dumps({"shapes": shapes, "imagePath": "x.jpg"}))
    logs = []
    res = import_annotations("labelme", src, imgs, tmp_path / "out", log=logs.append)
    names = res["classes"]
    m = _mask(tmp_path / "out", "train", "x")
    assert m[22, 34] == names.index("mask") and m[20, 30] == IGNORE_INDEX  # the mask's own pixels, not its box
    assert m[5, 5] == names.index("rect")
    assert any("shape 2 ('wire') skipped: a line has no area" in s for s in logs)
    assert any("shape 3 ('spot') skipped: a point has no area" in s for s in logs)


def test_data_check_fails_an_image_whose_mask_is_all_ignore(tmp_path, capsys):
    imgs = _images(tmp_path / "imgs", ["x.jpg", "y.jpg"])
    src = tmp_path / "lm"
    src.mkdir()
    (src / "x.json").write_text(json.dumps({"shapes": [{"label": "wire", "shape_type": "line", "points": [[0, 1], [9, 1]]}], "imagePath": "x.jpg"}))
    (src / "y.json").write_text(json.dumps({"shapes": [{"label": "road", "points": [[0, 0], [20, 0], [20, 20]]}], "imagePath": "y.jpg"}))
    assert main(["data", "import", "labelme", str(src), "--images", str(imgs), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "x.png is ignore everywhere" in out and "dataset has problems" in out


@pytest.mark.slow
@pytest.mark.parametrize("val_fraction, train, val", [("0", 3, 0), ("0.34", 2, 1), ("0.9", 1, 2)])
def test_the_printed_finetune_command_works_as_printed(tmp_path, capsys, val_fraction, train, val):
    import shlex
    import subprocess
    import sys

    export = _cvat(tmp_path)
    out = tmp_path / "mine"
    assert main(["data", "import", "cvat", str(export), "--images", str(tmp_path / "imgs"), "--out", str(out),
                 "--val-fraction", val_fraction]) == 0  # fmt: skip
    spec = yaml.safe_load((out / "dataset.yaml").read_text())
    assert {s: len(list((out / "images" / s).iterdir())) for s in spec["splits"]} == {"train": train, **({"val": val} if val else {})}
    printed = capsys.readouterr().out.split("train on it with: ")[1].strip()
    argv = shlex.split(printed)
    assert argv[:4] == ["dabnet", "train", "--config", "finetune"]
    if val == 1:
        return  # a train and a val split: the import-then-train path docs/your-own-data.md runs (tests/test_guides.py)
    # Run as printed, stopped by Ctrl-C once its first epoch is saved: the command starts and trains. Its fused
    # kernels run uncompiled (TORCHDYNAMO_DISABLE), which spares a cold compile in a new process: what is tested
    # here is the command; tests/test_fused.py compiles and checks the kernels.
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dabnet", *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path, env=env)  # fmt: skip
    import signal
    import time

    run = Path(argv[argv.index("--out") + 1])
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (run / "last.pth").exists():
            time.sleep(0.5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        text = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:  # a run that did not stop in time is ended, not left training after the test
            proc.kill()
            proc.communicate()
    assert (run / "last.pth").exists(), text[-2000:]
    assert "Traceback" not in text and "error" not in text.lower().replace("errors", ""), text[-2000:]


FUZZ_VALUES = [None, 0, -1, 1e12, "", "x", [], {}, [1], [[1, 2]], {"a": 1}, True]


@pytest.mark.parametrize("fmt", ["coco", "labelme"])
def test_fuzzed_exports_import_or_fail_in_one_line(tmp_path, fmt):
    """Every key of a valid export, deleted or set to values of other types: a correct import or a DatasetError."""
    rng = np.random.default_rng(0)
    imgs = _images(tmp_path / "imgs", ["a.png"])
    if fmt == "coco":
        valid = _coco_doc([{"id": 1, "file_name": "a.png", "height": H, "width": W}], [_square(1)])
    else:
        valid = {"shapes": [{"label": "road", "points": [[0, 0], [20, 0], [20, 20]], "shape_type": "polygon"}],
                 "imagePath": "a.png", "imageHeight": H, "imageWidth": W}  # fmt: skip

    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for k, v in node.items():
                yield from paths(v, prefix + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from paths(v, prefix + (i,))

    targets = [p for p in paths(valid) if p]
    outcomes = set()
    for trial in range(120):
        doc = json.loads(json.dumps(valid))
        path = targets[rng.integers(len(targets))]
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if rng.random() < 0.3 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = FUZZ_VALUES[rng.integers(len(FUZZ_VALUES))]
        src = tmp_path / f"t{trial}.json" if fmt == "coco" else tmp_path / f"t{trial}" / "a.json"
        src.parent.mkdir(exist_ok=True)
        src.write_text(json.dumps(doc))
        try:
            import_annotations(fmt, src if fmt == "coco" else src.parent, imgs, tmp_path / f"o{trial}")
            outcomes.add("imported")
        except DatasetError as e:
            assert "\n" not in str(e), str(e)
            outcomes.add("error")
    assert outcomes == {"imported", "error"}


def test_a_cvat_labelmap_with_a_bom_reads_and_a_bad_line_is_named(tmp_path):
    export = _cvat(tmp_path)
    labelmap = export / "labelmap.txt"
    labelmap.write_bytes(b"\xef\xbb\xbf" + labelmap.read_bytes())  # saved by a Windows editor
    assert import_annotations("cvat", export, tmp_path / "imgs", tmp_path / "out")["classes"] == ["background", "road", "car"]
    labelmap.write_text(labelmap.read_text(encoding="utf-8-sig") + "sign:255,0\n")
    with pytest.raises(DatasetError, match=r"labelmap.txt, line 5: 'sign:255,0' is not NAME:R,G,B"):
        import_annotations("cvat", export, tmp_path / "imgs", tmp_path / "o2")


def test_an_import_holds_one_mask_at_a_time(tmp_path, monkeypatch):
    """Each annotated image is written before the next mask is made (memory: one mask, whatever the export)."""
    from dabnet.data import importers as I

    imgs = _images(tmp_path / "imgs", [f"f{i}.png" for i in range(4)])
    written_before = []

    def fake(source, images, classes=None):
        def pairs():
            for i in range(4):
                # the masks of the images before this one are already on disk
                written_before.append(len(list(tmp_path.glob(".out.importing-*/masks/train/*.png"))))
                yield imgs / f"f{i}.png", np.zeros((H, W), np.uint8)

        return ["a"], None, I.Records(4, pairs)

    monkeypatch.setitem(I.IMPORTERS, "fake", fake)
    assert import_annotations("fake", tmp_path / "imgs", imgs, tmp_path / "out")["images"] == {"train": 4}
    assert written_before == [0, 1, 2, 3]
