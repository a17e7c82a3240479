"""Dataset statistics: channel mean/std, class pixel frequencies, ENet and median-frequency weights.

One vectorised pass over the files (a bincount per mask), kept in a store checked by content (`util.store`)
keyed by the bytes of every image and mask, the label table and the versions that decode them, so a second run on
the same data reads the files once instead of decoding them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Union

import numpy as np

from ..util import files
from ..util.store import DamagedEntry, Entry, Store, file_digest, key_digest, package_versions
from .datasets import IGNORE_INDEX, SegmentationDataset


@dataclass
class DatasetStats:
    """Per-channel RGB mean/std (0-255) and per-class pixel counts (ignored pixels excluded)."""

    mean: List[float]
    std: List[float]
    class_pixels: List[int]
    image_pixels_with_class: List[int]  # total pixels of the images in which each class appears
    images: int
    ignored_pixels: int

    @property
    def frequencies(self) -> np.ndarray:
        """p_c: each class's share of the labelled (non-ignored) pixels."""
        counts = np.asarray(self.class_pixels, dtype=np.float64)
        return counts / max(counts.sum(), 1.0)


def enet_weights(frequencies: np.ndarray, c: float = 1.02) -> np.ndarray:
    """ENet class weights w = 1 / ln(c + p) (Paszke et al.; the official DABNet code uses c = 1.10)."""
    return 1.0 / np.log(c + np.asarray(frequencies, dtype=np.float64))


def median_frequency_weights(stats: DatasetStats) -> np.ndarray:
    """Median frequency balancing (Eigen & Fergus): w = median(f) / f, f over images where c appears."""
    counts = np.asarray(stats.class_pixels, dtype=np.float64)
    present = np.asarray(stats.image_pixels_with_class, dtype=np.float64)
    freq = np.divide(counts, present, out=np.zeros_like(counts), where=present > 0)
    median = np.median(freq[freq > 0]) if (freq > 0).any() else 1.0
    return np.divide(median, freq, out=np.zeros_like(freq), where=freq > 0)


def class_weights(stats: DatasetStats, method: str = "enet", c: float = 1.02) -> np.ndarray:
    """Weights by `method`: 'enet', 'median' (median-frequency balancing) or 'none' (all ones)."""
    if method == "enet":
        return enet_weights(stats.frequencies, c)
    if method == "median":
        return median_frequency_weights(stats)
    if method == "none":
        return np.ones(len(stats.class_pixels))
    raise ValueError(f"unknown class-weight method {method!r}; choose enet, median or none")


class StatsAccumulator:
    """Running sums behind `DatasetStats`, fed one (image, class-id mask) pair at a time."""

    def __init__(self, num_classes: int) -> None:
        self.c = num_classes
        self.class_pixels = np.zeros(num_classes, dtype=np.int64)
        self.with_class = np.zeros(num_classes, dtype=np.int64)
        self.s1 = np.zeros(3, dtype=np.float64)
        self.s2 = np.zeros(3, dtype=np.float64)
        self.n = 0
        self.images = 0
        self.ignored = 0

    def add(self, image: np.ndarray, mask: np.ndarray) -> None:
        px = image.reshape(-1, 3).astype(np.float64)
        self.s1 += px.sum(0)
        self.s2 += np.einsum("ij,ij->j", px, px)
        self.n += px.shape[0]
        counts = np.bincount(mask.ravel(), minlength=256)
        self.class_pixels += counts[: self.c]
        self.with_class += (counts[: self.c] > 0) * mask.size
        self.ignored += int(counts[IGNORE_INDEX])
        self.images += 1

    def result(self) -> DatasetStats:
        mean = self.s1 / max(self.n, 1)
        std = np.sqrt(np.maximum(self.s2 / max(self.n, 1) - mean**2, 0.0))
        return DatasetStats(
            mean.tolist(), std.tolist(), self.class_pixels.tolist(), self.with_class.tolist(), self.images, self.ignored
        )


STATS_FORMAT = 1  # of stats.json: a change of what it holds makes new keys


def _cache_key(dataset: SegmentationDataset) -> str:
    """Digest of what the statistics are made of: every file's bytes (a file replaced in place, keeping its name,
    size or time, is other data), the label table and the versions of what decodes and counts them."""
    made_by = {"format": STATS_FORMAT, "classes": dataset.num_classes, "versions": package_versions(("dabnet", "numpy", "pillow"))}
    return key_digest(made_by, dataset.lut.tobytes(), [[file_digest(img), file_digest(mask)] for img, mask in dataset.pairs])


def _load(num_classes: int) -> Callable[[Entry], DatasetStats]:
    def load(entry: Entry) -> DatasetStats:
        try:
            stats = DatasetStats(**json.loads(entry.files["stats.json"]))
        except (KeyError, ValueError, TypeError) as e:  # checked bytes that are not statistics: another version's
            raise DamagedEntry(f"not dataset statistics ({type(e).__name__})", "stats.json") from None
        if (len(stats.mean), len(stats.std), len(stats.class_pixels), len(stats.image_pixels_with_class)) != (3, 3, num_classes, num_classes):
            raise DamagedEntry(f"not statistics of RGB images and {num_classes} classes", "stats.json")
        return stats

    return load


def _compute(dataset: SegmentationDataset, progress: bool) -> DatasetStats:
    acc = StatsAccumulator(dataset.num_classes)
    indices = range(len(dataset))
    if progress:
        from ..util.progress import progress_bar

        indices = progress_bar(indices, desc=f"statistics of {dataset.name}", unit="img")
    for i in indices:
        acc.add(*dataset.load_pair(i))
    return acc.result()


def compute_stats(
    dataset: SegmentationDataset, cache_dir: Union[Path, str, None, bool] = None, progress: bool = False
) -> DatasetStats:
    """Statistics of every (image, mask) pair of `dataset`, kept in CACHE/stats (CACHE: `cache_dir`, else
    $DABNET_CACHE, else ~/.cache/dabnet); `cache_dir=False` turns the cache off."""
    if cache_dir is False:
        return _compute(dataset, progress)
    store = Store(Path(cache_dir or files.cache_dir()) / "stats", "dataset statistics")
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset.name)[:40]

    def build(folder: Path) -> None:
        (folder / "stats.json").write_text(json.dumps(asdict(_compute(dataset, progress))))

    return store.get(f"{name}-{_cache_key(dataset)}", build, _load(dataset.num_classes), key={"dataset": dataset.name})


def stats_report(kind: str, root: Union[str, os.PathLike], split: str = "train", enet_c: float = 1.02, as_json: bool = False) -> str:
    """`dabnet data stats`: mean/std, class frequencies and both kinds of class weights, as a table or JSON."""
    from .datasets import build_dataset

    ds = build_dataset(kind, root, split)
    stats = compute_stats(ds, progress=True)
    enet, median = class_weights(stats, "enet", enet_c), class_weights(stats, "median")
    if as_json:
        return json.dumps({"dataset": ds.name, "images": stats.images, "mean": stats.mean, "std": stats.std,
                           "frequencies": dict(zip(ds.classes, stats.frequencies.tolist())),
                           "enet_weights": dict(zip(ds.classes, enet.tolist())), "enet_c": enet_c,
                           "median_frequency_weights": dict(zip(ds.classes, median.tolist()))}, indent=2)  # fmt: skip
    lines = [f"{ds.name}: {stats.images} images; mean RGB {[round(v, 2) for v in stats.mean]}, std RGB {[round(v, 2) for v in stats.std]}",
             f"{'class':<16} {'pixels %':>9} {'ENet w (c=' + str(enet_c) + ')':>16} {'median-freq w':>14}"]  # fmt: skip
    lines += [f"{n:<16} {100 * p:9.2f} {w1:16.3f} {w2:14.3f}" for n, p, w1, w2 in zip(ds.classes, stats.frequencies, enet, median)]
    return "\n".join(lines)
