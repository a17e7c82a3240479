"""Model complexity (parameters, MACs) and the registry table behind `dabnet models`."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import create_model, list_models, model_description


def count_params(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: Tuple[int, int] = (512, 1024), batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass, counted by `torch.utils.flop_counter` (FLOPs / 2)."""
    device = next(model.parameters()).device
    x = torch.empty(batch, 3, size[0], size[1], device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_complexity(name: str, num_classes: int = 19, size: Tuple[int, int] = (512, 1024)) -> Dict[str, object]:
    """Parameters and GMACs of a registered model, measured on the meta device (no compute)."""
    with torch.device("meta"):
        model = create_model(name, num_classes)
    return {
        "model": name,
        "params": count_params(model),
        "gmacs": count_macs(model, size) / 1e9,
        "description": model_description(name),
    }


def models_table(names: Optional[Sequence[str]] = None, num_classes: int = 19, size: Tuple[int, int] = (512, 1024)) -> List[Dict[str, object]]:
    """Complexity rows for `names` (default: every registered model)."""
    return [model_complexity(n, num_classes, size) for n in (names or list_models())]


def format_models_table(rows: List[Dict[str, object]], size: Tuple[int, int]) -> str:
    """A plain-text table of `models_table` rows."""
    head = f"{'model':<20} {'params':>12} {'GMACs@' + f'{size[0]}x{size[1]}':>16}  description"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<20} {r['params']:>12,} {r['gmacs']:>16.2f}  {r['description']}")
    return "\n".join(lines)
