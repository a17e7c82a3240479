"""The dataset registry: each kind of dataset declares itself once, with what its masks mean (classes, colours,
ignore value) and its input normalisation. The `--dataset` choices, the names and colours a checkpoint's
predictions get, and `build_dataset` all come from it. A new dataset is one module that calls
`register_dataset` plus one import line in `data/__init__.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Tuple

from ..util.registry import Registry

Colour = Tuple[int, int, int]


class DatasetError(ValueError):
    """Something wrong with a dataset's files; the message names the file and what to do."""


@dataclass(frozen=True)
class DatasetKind:
    """One kind of dataset. `build(root, split, transform=, seed=)` returns its SegmentationDataset; `classes`,
    `palette`, `ignore_index`, `mean` and `std` are empty where each dataset brings its own (a folder's YAML)."""

    name: str
    build: Callable[..., object]
    summary: str
    classes: Tuple[str, ...] = ()
    palette: Tuple[Colour, ...] = ()
    ignore_index: int = 255
    mean: Tuple[float, ...] = ()
    std: Tuple[float, ...] = ()


DATASETS: Registry[DatasetKind] = Registry("dataset", error=DatasetError, summary=lambda kind: kind.summary)


def register_dataset(kind: DatasetKind) -> DatasetKind:
    """Add a kind of dataset (a name taken already is an error)."""
    return DATASETS.register(kind.name, kind)


def get_dataset(name: str) -> DatasetKind:
    """The dataset kind registered as `name`; the error names the closest ones."""
    return DATASETS.get(name)


def list_datasets() -> List[str]:
    """Registered dataset names, in registration order (what --dataset accepts)."""
    return DATASETS.names()


def known_classes(name: str) -> bool:
    """Whether `name` is a registered dataset whose classes are fixed (camvid, cityscapes; not folder)."""
    return name in DATASETS and bool(DATASETS[name].classes)
