"""What every exported file carries (class names, colours, normalisation, ...) and the sizes an export is checked at:
shared by the runtimes that write files."""

from __future__ import annotations

from typing import Any, Dict, Tuple

from torch import nn

META_KEYS = ("model_name", "num_classes", "class_names", "palette", "mean", "std", "val_miou", "source")


def model_metadata(model: nn.Module) -> Dict[str, Any]:
    """What an exported file carries so that it can be used without its checkpoint."""
    meta = dict(getattr(model, "checkpoint_meta", {}))
    meta.update(model_name=model.model_name, num_classes=model.num_classes)
    return {k: meta[k] for k in META_KEYS if k in meta}


def export_sizes(model: nn.Module) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """One size the network needs no padding for, and one odd size that exercises the dynamic axes."""
    m = getattr(model, "size_multiple", 8)
    return (45 * m, 60 * m) if m <= 8 else (4 * m, 5 * m), (97, 131)
