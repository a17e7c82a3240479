"""`dabnet data check`: scan a whole dataset and report every problem before training starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .datasets import STANDARD_SPLITS, DatasetError, SplitNotFoundError, build_dataset, load_folder_spec
from .stats import DatasetStats, StatsAccumulator


@dataclass
class SplitReport:
    """What one split holds, its statistics, and the problems found in it."""

    split: str
    pairs: int = 0
    missing: Optional[str] = None  # why the split is absent, when it is
    problems: List[str] = field(default_factory=list)
    stats: Optional[DatasetStats] = None
    classes: Sequence[str] = ()


def dataset_splits(name: str, root: str) -> List[str]:
    """The splits to scan for a dataset kind."""
    if name == "folder":
        return list(load_folder_spec(root)["splits"])
    return list(STANDARD_SPLITS)


def check_split(name: str, root: str, split: str, progress: bool = True) -> SplitReport:
    """Open every image and mask of a split; collect problems instead of stopping at the first."""
    report = SplitReport(split)
    try:
        ds = build_dataset(name, root, split)
    except SplitNotFoundError as e:
        report.missing = str(e)
        return report
    except DatasetError as e:
        report.problems.append(str(e))
        return report
    report.pairs, report.classes = len(ds), ds.classes
    acc = StatsAccumulator(ds.num_classes)
    indices = range(len(ds))
    if progress:
        from ..util.progress import progress_bar

        indices = progress_bar(indices, desc=f"checking {name}:{split}", unit="img", leave=False)
    for i in indices:
        try:
            image, mask = ds.load_pair(i)
        except DatasetError as e:
            report.problems.append(str(e))
            continue
        if mask.size and (mask == ds.ignore_index).all():
            report.problems.append(f"mask {ds.pairs[i][1]} is ignore everywhere: no pixel of it can teach; annotate it or remove the pair")
        acc.add(image, mask)
    report.stats = acc.result() if acc.images else None
    return report


def check_dataset(name: str, root: str, splits: Optional[Sequence[str]] = None, progress: bool = True) -> Dict[str, SplitReport]:
    """Reports for each split (default: every split the dataset kind defines)."""
    return {s: check_split(name, root, s, progress) for s in (splits or dataset_splits(name, root))}


def format_report(reports: Dict[str, SplitReport]) -> str:
    """Human-readable summary: counts, class frequencies, mean/std, problems."""
    lines = []
    for split, r in reports.items():
        if r.missing:
            lines.append(f"[{split}] absent: {r.missing}")
            continue
        lines.append(f"[{split}] {r.pairs} image/mask pairs, {len(r.problems)} problem(s)")
        if r.stats is not None:
            lines.append(f"  mean RGB {np.round(r.stats.mean, 2).tolist()}  std RGB {np.round(r.stats.std, 2).tolist()}")
            total = sum(r.stats.class_pixels) + r.stats.ignored_pixels
            lines.append(f"  ignored pixels: {100.0 * r.stats.ignored_pixels / max(total, 1):.2f}%")
            for cls, p in zip(r.classes, r.stats.frequencies):
                lines.append(f"  {cls:<16} {100 * p:6.2f}%")
        for p in r.problems:
            lines.append(f"  PROBLEM: {p}")
    return "\n".join(lines)


def is_clean(reports: Dict[str, SplitReport]) -> bool:
    """At least one split present and no problem anywhere (an absent split is not a problem)."""
    return any(r.pairs for r in reports.values()) and not any(r.problems for r in reports.values())
