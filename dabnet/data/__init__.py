"""Datasets, paired image+mask transforms and dataset metadata."""

from .classes import DATASET_INFO, default_palette

__all__ = ["DATASET_INFO", "default_palette"]
