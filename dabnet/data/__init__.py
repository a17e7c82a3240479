"""Datasets (a registry of kinds: CamVid, Cityscapes, a user's own folders), paired transforms, checks, statistics
and importers; may import io and util."""

# Importing the module registers its datasets; a new kind is one module that calls register_dataset, imported here.
from . import datasets  # noqa: F401  isort: skip
from .classes import default_palette
from .registry import DATASETS, DatasetError, DatasetKind, get_dataset, known_classes, list_datasets, register_dataset

__all__ = ["DATASETS", "DatasetError", "DatasetKind", "default_palette", "get_dataset", "known_classes", "list_datasets", "register_dataset"]
