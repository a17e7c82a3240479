"""Datasets, transforms, statistics and `dabnet data check` on tiny synthetic trees."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader

from dabnet.cli import main
from dabnet.data.check import check_dataset, is_clean
from dabnet.data.classes import CAMVID_PALETTE, CITYSCAPES_TRAIN_TO_LABEL_ID
from dabnet.data.datasets import (
    CamVid,
    Cityscapes,
    DatasetError,
    FolderDataset,
    SplitNotFoundError,
    build_dataset,
    train_ids_to_label_ids,
)
from dabnet.data.stats import class_weights, compute_stats, enet_weights
from dabnet.data.transforms import TrainTransform

H, W = 48, 64  # the size of the images the conftest builders write


@pytest.fixture()
def camvid_tree(tmp_path, make_camvid) -> Path:
    return make_camvid(tmp_path / "camvid")


# ----------------------------------------------------------------------------- layouts


def test_camvid_splits(camvid_tree):
    assert len(CamVid(camvid_tree, "train")) == 4
    assert len(CamVid(camvid_tree, "trainval")) == 8
    image, mask = CamVid(camvid_tree, "val")[0]
    assert image.shape == (H, W, 3) and mask.shape == (H, W)
    assert set(np.unique(mask)) <= set(range(11)) | {255}  # raw 11 comes out as 255
    assert 255 in np.unique(mask)


def test_whole_sequences_are_kept_or_left_out_by_file_name_prefix(tmp_path, make_camvid):
    root = make_camvid(tmp_path / "cv", n=6, sequences={"train": ["0001TP", "0006R0", "0016E5"], "val": ["0016E5"]})
    train = build_dataset("camvid", root, "trainval", exclude=["0006R0"])
    assert len(train) == 10 and not any(i.name.startswith("0006R0") for i, _ in train.pairs)
    assert train.name == "camvid:trainval-0006R0"
    held = build_dataset("camvid", root, "train", include=["0006R0"])
    assert len(held) == 2 and all(i.name.startswith("0006R0") for i, _ in held.pairs)
    assert len(build_dataset("camvid", root, "train", include=["0001TP", "0016E5"])) == 4
    with pytest.raises(DatasetError, match=r"no frame of camvid:val starts with '0006R0'.*present.*0016E5"):
        build_dataset("camvid", root, "val", include=["0006R0"])
    with pytest.raises(DatasetError, match="leaves no frame"):
        build_dataset("camvid", root, "val", exclude=["0016E5"])


def test_folder_datasets_hold_out_their_own_sequences(tmp_path, make_folder):
    spec = make_folder(tmp_path / "toy")  # img0, img1, img2: any file-name prefix names a sequence
    assert [i.name for i, _ in build_dataset("folder", spec, "train", exclude=["img0"]).pairs] == ["img1.jpg", "img2.jpg"]
    assert [i.name for i, _ in build_dataset("folder", spec, "val", include=["img2"]).pairs] == ["img2.jpg"]


def test_camvid_missing_split_is_a_clear_error(camvid_tree):
    with pytest.raises(SplitNotFoundError, match=r"split 'test' not found.*Splits present.*train, val"):
        CamVid(camvid_tree, "test")


def test_missing_root_names_it(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        build_dataset("camvid", tmp_path / "nowhere", "train")


@pytest.mark.parametrize("train_ids", [False, True])
def test_cityscapes_maps_label_ids_to_train_ids(tmp_path, train_ids, make_cityscapes):
    ds = Cityscapes(make_cityscapes(tmp_path / "cs", train_ids), "val")
    assert len(ds) == 4 and ds.num_classes == 19
    assert ds.pairs[0][1].name.endswith("labelTrainIds.png" if train_ids else "labelIds.png")
    _, mask = ds[0]
    assert (mask[:, :16] == 0).all() and (mask[:, 16:32] == 13).all()
    assert (mask[:, 32:48] == 18).all() and (mask[:, 48:] == 255).all()


def test_cityscapes_reverse_map_for_submissions():
    pred = np.arange(19, dtype=np.uint8).reshape(1, 19)
    assert train_ids_to_label_ids(pred).tolist()[0] == CITYSCAPES_TRAIN_TO_LABEL_ID


@pytest.mark.parametrize("id_map", [None, {0: 0, 10: 1}])
def test_folder_dataset(tmp_path, id_map, make_folder):
    ds = FolderDataset(make_folder(tmp_path / "toy", id_map), "train")
    assert len(ds) == 3 and ds.classes == ["background", "thing"] and ds.palette[1] == (255, 0, 0)
    _, mask = ds[1]
    assert set(np.unique(mask)) == {0, 1, 255}


def test_folder_yaml_errors(tmp_path, make_folder):
    spec_path = make_folder(tmp_path / "toy")
    spec = yaml.safe_load(spec_path.read_text())
    spec["clases"] = spec.pop("classes")
    spec_path.write_text(yaml.safe_dump(spec))
    with pytest.raises(DatasetError, match="unknown key"):
        FolderDataset(spec_path, "train")
    with pytest.raises(DatasetError, match="dataset.yaml"):
        FolderDataset(tmp_path / "elsewhere", "train")


# ----------------------------------------------------------------------------- bad input


def _first(root: Path, split="train"):
    return root / split / "f000.png", root / f"{split}annot" / "f000.png"


def test_image_without_mask(camvid_tree):
    _first(camvid_tree)[1].unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) without a mask.*f000.png"):
        CamVid(camvid_tree, "train")


def test_mask_without_image(camvid_tree):
    _first(camvid_tree)[0].unlink()
    with pytest.raises(DatasetError, match=r"1 mask\(s\) without an image.*f000.png"):
        CamVid(camvid_tree, "train")


def test_corrupt_and_truncated_images(camvid_tree):
    img, _ = _first(camvid_tree)
    img.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"corrupt or truncated image .*f000.png"):
        CamVid(camvid_tree, "train")[0]
    data = (camvid_tree / "train" / "f001.png").read_bytes()
    (camvid_tree / "train" / "f001.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"f001.png"):
        CamVid(camvid_tree, "train")[1]


def test_size_mismatch(camvid_tree):
    _, mask = _first(camvid_tree)
    Image.fromarray(np.zeros((H + 2, W), np.uint8)).save(mask)
    with pytest.raises(DatasetError, match=r"size mismatch: image .*f000.png is 64x48 but mask .*f000.png is 64x50"):
        CamVid(camvid_tree, "train")[0]


def test_three_channel_mask(camvid_tree):
    _, mask = _first(camvid_tree)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(mask)
    with pytest.raises(DatasetError, match=r"mask .*f000.png has 3 channels"):
        CamVid(camvid_tree, "train")[0]


def test_label_out_of_range(camvid_tree):
    _, mask = _first(camvid_tree)
    m = np.zeros((H, W), np.uint8)
    m[0, 0] = 12
    m[1, 1] = 200
    Image.fromarray(m).save(mask)
    with pytest.raises(DatasetError, match=r"f000.png holds label values \[12, 200\] outside the 11 classes"):
        CamVid(camvid_tree, "train")[0]


def test_data_check_reports_every_problem_and_exit_code(camvid_tree, capsys):
    assert main(["data", "check", "camvid", str(camvid_tree), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[train] 4 image/mask pairs, 0 problem(s)" in out and "[test] absent" in out and "dataset is clean" in out
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(_first(camvid_tree)[1])
    (camvid_tree / "val" / "f002.png").write_bytes(b"garbage")
    reports = check_dataset("camvid", str(camvid_tree), progress=False)
    assert len(reports["train"].problems) == 1 and len(reports["val"].problems) == 1 and not is_clean(reports)
    assert main(["data", "check", "camvid", str(camvid_tree), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM: mask" in out and "PROBLEM: corrupt or truncated image" in out


# ----------------------------------------------------------------------------- transforms


def assert_aligned(image: np.ndarray, mask: np.ndarray, min_interior: int = 200) -> None:
    """Inside a labelled region (5x5 neighbourhood of one label) the image must carry that label's
    colour; only borders may blend. Any shift or lone flip of image or mask breaks this."""
    lut = np.zeros((256, 3), dtype=np.int64)
    lut[:11] = CAMVID_PALETTE
    padded = np.pad(mask, 2, constant_values=254)  # crop edges are never interior
    interior = np.ones_like(mask, dtype=bool)
    for dy in range(5):
        for dx in range(5):
            interior &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] == mask
    interior &= mask != 255
    assert interior.sum() >= min_interior
    diff = np.abs(image.astype(np.int64) - lut[mask]).sum(-1)
    assert (diff[interior] <= 3).all(), diff[interior].max()


def test_train_transform_keeps_labels_valid_and_aligned(camvid_tree):
    tf = TrainTransform(crop_size=(40, 56), ignore_index=255, to_tensor=False)
    ds = CamVid(camvid_tree, "train", transform=tf)
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            image, mask = ds[i]
            assert image.shape == (40, 56, 3) and mask.shape == (40, 56)
            assert set(np.unique(mask)) <= set(range(11)) | {255}
            assert_aligned(image, mask)


def test_padding_uses_zero_image_and_ignore_mask(camvid_tree):
    tf = TrainTransform(crop_size=(80, 100), scales=(1.0,), flip=False, to_tensor=False)
    image, mask = CamVid(camvid_tree, "train", transform=tf)[0]
    assert (mask[H:] == 255).all() and (mask[:, W:] == 255).all()
    assert (image[H:] == 0).all() and (image[:, W:] == 0).all()


def test_normalisation_and_tensor_types(camvid_tree):
    tf = TrainTransform(crop_size=(32, 32), mean=(10.0, 20.0, 30.0), std=(2.0, 2.0, 2.0))
    image, mask = CamVid(camvid_tree, "train", transform=tf)[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and mask.dtype == torch.int64
    raw = CamVid(camvid_tree, "train", transform=TrainTransform(crop_size=(32, 32), to_tensor=False))[0][0]
    torch.testing.assert_close(image[1], (torch.from_numpy(raw[..., 1].astype(np.float32)) - 20.0) / 2.0)


def _batches(ds, workers):
    loader = DataLoader(ds, batch_size=2, num_workers=workers, shuffle=False)
    return [m for _, m in loader]


@pytest.mark.slow  # loader workers
def test_augmentation_is_reproducible_across_worker_counts(camvid_tree):
    ds = CamVid(camvid_tree, "train", transform=TrainTransform(crop_size=(32, 40)), seed=7)
    ds.set_epoch(3)
    a, b = _batches(ds, 0), _batches(ds, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ds.set_epoch(4)
    assert not all(torch.equal(x, y) for x, y in zip(a, _batches(ds, 0)))


# ----------------------------------------------------------------------------- statistics


def test_stats_by_hand(tmp_path):
    root = tmp_path / "cv"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    masks = [np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)]
    masks[0][:2] = 1  # image 0: 8 px class 0, 8 px class 1
    masks[1][0, 0] = 11  # image 1: 15 px class 0, 1 ignored
    for i, m in enumerate(masks):
        Image.fromarray(np.full((4, 4, 3), (10 * (i + 1), 0, 255), np.uint8)).save(root / "train" / f"{i}.png")
        Image.fromarray(m).save(root / "trainannot" / f"{i}.png")
    st = compute_stats(CamVid(root, "train"), cache_dir=False)
    assert st.class_pixels[:2] == [23, 8] and st.ignored_pixels == 1
    np.testing.assert_allclose(st.mean, [15.0, 0.0, 255.0])
    np.testing.assert_allclose(st.std, [5.0, 0.0, 0.0])
    p = np.array([23, 8] + [0] * 9) / 31
    np.testing.assert_allclose(class_weights(st, "enet", 1.02), 1 / np.log(1.02 + p))
    np.testing.assert_allclose(enet_weights(p, 1.10), 1 / np.log(1.10 + p))
    # Median frequency: f0 = 23/32, f1 = 8/16; median of present = (23/32 + 1/2) / 2.
    med = (23 / 32 + 0.5) / 2
    np.testing.assert_allclose(class_weights(st, "median")[:2], [med / (23 / 32), med / 0.5])
    assert class_weights(st, "median")[2] == 0.0


def test_stats_are_cached_by_file_content(camvid_tree, tmp_path):
    cache = tmp_path / "cache"
    ds = CamVid(camvid_tree, "train")
    entries = lambda: [p for p in (cache / "stats").iterdir() if p.is_dir()]  # noqa: E731
    first = compute_stats(ds, cache_dir=cache)
    assert len(entries()) == 1
    assert compute_stats(ds, cache_dir=cache) == first
    Image.fromarray(np.zeros((H, W), np.uint8)).save(_first(camvid_tree)[1])  # data changed: new key
    second = compute_stats(ds, cache_dir=cache)
    assert len(entries()) == 2 and second.class_pixels != first.class_pixels


def test_stats_see_a_mask_replaced_in_place_with_its_size_and_time(camvid_tree, tmp_path):
    cache = tmp_path / "cache"
    ds = CamVid(camvid_tree, "train")
    first = compute_stats(ds, cache_dir=cache)
    mask = _first(camvid_tree)[1]
    stamp, size = mask.stat(), mask.stat().st_size
    Image.fromarray(np.zeros((H, W), np.uint8)).save(mask)  # all class 0: compresses to fewer bytes
    padded = mask.read_bytes()
    assert len(padded) <= size
    mask.write_bytes(padded + bytes(size - len(padded)))  # the decoder stops at IEND: same size, other pixels
    os.utime(mask, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # and the old time
    assert mask.stat().st_size == size and mask.stat().st_mtime_ns == stamp.st_mtime_ns
    second = compute_stats(ds, cache_dir=cache)
    assert second == compute_stats(ds, cache_dir=False) and second.class_pixels != first.class_pixels


# ----------------------------------------------------------------------------- shared CamVid


@pytest.mark.integration
def test_shared_camvid(camvid_root):
    assert len(CamVid(camvid_root, "train")) == 367 and len(CamVid(camvid_root, "val")) == 101
    assert len(CamVid(camvid_root, "trainval")) == 468
    with pytest.raises(SplitNotFoundError):
        CamVid(camvid_root, "test")
    image, mask = CamVid(camvid_root, "val")[0]
    assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
    reports = check_dataset("camvid", str(camvid_root), splits=["val"], progress=False)
    assert is_clean(reports) and reports["val"].pairs == 101


# ----------------------------------------------------------------------------- data_on_device


def test_device_batches_match_the_cpu_pipeline_on_cpu(camvid_tree):
    from dabnet.training.sampling import ResumableSampler
    from dabnet.data.device import DeviceBatches

    ds = CamVid(camvid_tree, "train", seed=3)
    sampler = ResumableSampler(ds, 3, 2)
    dev = DeviceBatches(ds, sampler, 2, torch.device("cpu"), (32, 40), [0.75, 1.0, 1.5], True, (0, 0, 0), (1, 1, 1))
    cpu = CamVid(camvid_tree, "train", transform=TrainTransform((32, 40), (0.75, 1.0, 1.5), True, to_tensor=False), seed=3)
    first = {}
    for epoch in range(3):
        ds.set_epoch(epoch)
        cpu.set_epoch(epoch)
        sampler.set_epoch(epoch)
        order = list(iter(sampler))
        batches = list(dev)
        assert len(batches) == len(dev) == 2
        first[epoch] = batches[0][0]
        for b, (images, masks) in enumerate(batches):
            assert images.shape == (2, 3, 32, 40) and masks.dtype == torch.int64
            assert set(masks.unique().tolist()) <= set(range(11)) | {255}
            for k in range(2):
                # The same per-sample draws as the CPU pipeline: the same scale, crop and flip.
                _, ref_mask = cpu[order[2 * b + k]]
                assert (masks[k].numpy() == ref_mask).mean() > 0.97  # rounding differs on borders only
                assert_aligned(images[k].permute(1, 2, 0).numpy(), masks[k].numpy(), min_interior=50)
    ds.set_epoch(1)
    sampler.set_epoch(1)
    assert torch.equal(list(dev)[0][0], first[1])  # reproducible for a given seed and epoch
    assert not torch.equal(first[1], first[2])


def test_pack_camvid_keeps_labels_exact_and_images_close(camvid_tree, tmp_path):
    out = tmp_path / "packed"
    assert main(["data", "pack", str(camvid_tree), str(out), "--splits", "train", "val"]) == 0
    for split in ("train", "val"):
        src, packed = CamVid(camvid_tree, split), CamVid(out, split)
        assert len(packed) == len(src) and all(p[0].suffix == ".jpg" for p in packed.pairs)
        for (img_a, mask_a), (img_b, mask_b) in zip(src, packed):
            assert np.array_equal(mask_a, mask_b)
            assert np.abs(img_a.astype(int) - img_b.astype(int)).mean() < 3


@pytest.mark.parametrize("key, value, what", [("classes", ["road", "car", "road"], "class name"),
                                              ("palette", [[1, 2, 3], [4, 5, 6], [1, 2, 3]], "palette colour")])  # fmt: skip
def test_a_dataset_yaml_with_a_class_twice_is_refused(tmp_path, key, value, what):
    import yaml as _yaml

    from dabnet.data.datasets import load_folder_spec

    spec = {"classes": ["road", "car", "sky"], "splits": {"train": {"images": "i", "masks": "m"}}, key: value}
    (tmp_path / "dataset.yaml").write_text(_yaml.safe_dump(spec))
    with pytest.raises(DatasetError, match=f"{what}.*appear more than once"):
        load_folder_spec(tmp_path / "dataset.yaml")


def test_data_on_device_under_ddp_decodes_only_its_ranks_share(camvid_tree, monkeypatch):
    """Each rank keeps a fixed share of the images on its device, not all of them: rank 1 of 2 decodes and
    draws only its own, reshuffled every epoch."""
    import dabnet.util.distributed as D
    from dabnet.training.sampling import ResumableSampler
    from dabnet.data.device import DeviceBatches

    monkeypatch.setattr(D, "world_size", lambda: 2)
    monkeypatch.setattr(D, "rank", lambda: 1)
    ds = CamVid(camvid_tree, "train", seed=3)
    decoded = []
    real = ds.load_pair
    monkeypatch.setattr(ds, "load_pair", lambda i: (decoded.append(i), real(i))[1])
    sampler = ResumableSampler(ds, 3, 1, fixed_shard=True)
    dev = DeviceBatches(ds, sampler, 1, torch.device("cpu"), (32, 40), [1.0], False, (0, 0, 0), (1, 1, 1))
    share = list(range(1, len(ds) - len(ds) % 2, 2))
    assert sorted(decoded) == share and sorted(dev.images) == share
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        orders.append(list(iter(sampler)))
        assert sorted(orders[-1]) == share and len(list(dev)) == len(share)
    assert orders[0] != orders[1] or len(share) < 3


@pytest.mark.slow  # two loader workers
def test_eval_of_a_bad_mask_is_only_the_message_with_a_camvid_fix(make_camvid, ckpt, tmp_path, capsys):  # row 8
    root = make_camvid(tmp_path / "cv")
    mask_path = sorted((root / "valannot").iterdir())[0]
    mask = np.array(Image.open(mask_path))
    mask[:2, :2], mask[-2:, -2:] = 12, 200
    Image.fromarray(mask).save(mask_path)
    assert main(["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--backend", "eager", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "DataLoader worker" not in err and "Traceback" not in err
    assert "[12, 200]" in err and "CamVid labels are 0-10 and 11" in err and "id_map" not in err


def test_pack_refuses_to_write_into_its_source(make_camvid, tmp_path, capsys):  # row 9
    root = make_camvid(tmp_path / "cv")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for out in (root, root / "packed"):
        assert main(["data", "pack", str(root), str(out)]) == 2
        assert "hold one another" in capsys.readouterr().err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_an_unwritable_cache_falls_back_to_a_temporary_one(monkeypatch, unwritable, make_camvid, tmp_path):
    import dabnet.util.files as files
    from dabnet.data.datasets import build_dataset
    from dabnet.data.stats import compute_stats

    monkeypatch.setenv("DABNET_CACHE", str(unwritable / "cache"))
    monkeypatch.setattr(files, "_fallback_cache", None)
    ds = build_dataset("camvid", make_camvid(tmp_path / "cv", n=2), "train")
    with pytest.warns(UserWarning, match="not writable|cannot create"):
        stats = compute_stats(ds)
    assert stats.images == 2 and files.cache_dir() != unwritable / "cache"


def test_a_damaged_or_foreign_stats_cache_is_recomputed(make_camvid, tmp_path):
    from dabnet.data.datasets import build_dataset
    from dabnet.data.stats import compute_stats

    ds = build_dataset("camvid", make_camvid(tmp_path / "cv", n=2), "train")
    good = compute_stats(ds, cache_dir=tmp_path / "c")
    (cached,) = (tmp_path / "c").rglob("stats.json")
    for damage in ["{not json", '{"mean": [1, 2, 3]}', "\0" * len(cached.read_text())]:
        cached.write_text(damage)
        with pytest.warns(UserWarning, match=f"dataset statistics {cached} is damaged"):
            assert compute_stats(ds, cache_dir=tmp_path / "c") == good
        assert compute_stats(ds, cache_dir=tmp_path / "c") == good  # rewritten whole
    # Whole (its CRC-32 matches) but not statistics of these classes: refused all the same.
    from dabnet.util.store import Store

    import shutil

    store = Store(cached.parent.parent, "dataset statistics")
    store.write(cached.parent.name + "x", lambda f: (f / "stats.json").write_text('{"mean": [1, 2, 3]}') and None)
    shutil.rmtree(cached.parent)
    (cached.parent.parent / (cached.parent.name + "x")).rename(cached.parent)
    with pytest.warns(UserWarning, match="damaged .not dataset statistics"):
        assert compute_stats(ds, cache_dir=tmp_path / "c") == good


def test_pack_trainval_writes_the_folders_its_readers_see(make_camvid, tmp_path):
    from dabnet.data.datasets import build_dataset

    root = make_camvid(tmp_path / "cv", n=2)
    assert main(["data", "pack", str(root), str(tmp_path / "packed"), "--splits", "trainval"]) == 0
    assert sorted(p.name for p in (tmp_path / "packed").iterdir()) == ["train", "trainannot", "val", "valannot"]
    assert len(build_dataset("camvid", tmp_path / "packed", "trainval")) == 4
    assert main(["data", "pack", str(root), str(tmp_path / "p2"), "--splits", "tran"]) == 2


def test_pack_names_a_truncated_source_image(make_camvid, tmp_path, capsys):
    root = make_camvid(tmp_path / "cv", n=2)
    victim = sorted((root / "train").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])
    assert main(["data", "pack", str(root), str(tmp_path / "packed")]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "restore or replace it" in err and "Traceback" not in err


def test_folder_yaml_with_id_map_as_a_list_is_a_clear_error(make_folder, tmp_path, capsys):
    import yaml

    spec_file = make_folder(tmp_path / "mine")
    spec = yaml.safe_load(spec_file.read_text())
    spec["id_map"] = [0, 1, 2]
    spec_file.write_text(yaml.safe_dump(spec))
    assert main(["data", "check", "folder", str(spec_file)]) != 0
    assert "'id_map' maps raw mask values to class ids" in capsys.readouterr().err
