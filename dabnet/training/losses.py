"""Losses: weighted cross-entropy and online hard example mining (OHEM) cross-entropy."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..models.fused import run_compiled


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor], ignore_index: int) -> torch.Tensor:
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 logits: the loss in fp32
    return F.cross_entropy(logits, target, weight=None if weight is None else weight.to(logits.dtype), ignore_index=ignore_index)


class CrossEntropy(nn.Module):
    """Cross-entropy with optional class weights and an ignore index (mean over weighted pixels); `fused`:
    log-softmax, weights and mean in one compiled kernel each way (models.fused.run_compiled)."""

    def __init__(self, weight: Optional[torch.Tensor] = None, ignore_index: int = 255, fused: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", weight if weight is None else weight.float(), persistent=False)
        self.ignore_index = ignore_index
        self.fused = fused

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out = run_compiled(_cross_entropy, logits, target, self.weight, self.ignore_index) if self.fused and logits.requires_grad else None
        return _cross_entropy(logits, target, self.weight, self.ignore_index) if out is None else out


class OHEMCrossEntropy(CrossEntropy):
    """Cross-entropy over the hard pixels only: those whose target probability is below `thresh`,
    and at least the `min_kept` hardest ones (Wu et al.'s bootstrapping, as the paper trains)."""

    def __init__(
        self, weight: Optional[torch.Tensor] = None, ignore_index: int = 255, thresh: float = 0.7, min_kept: int = 100_000,
        fused: bool = False,
    ) -> None:
        super().__init__(weight, ignore_index, fused)
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        with torch.no_grad():
            valid = target != self.ignore_index
            prob = logits.softmax(1).gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
            prob = torch.where(valid, prob, torch.ones_like(prob))  # ignored pixels are never "hard"
            threshold = torch.tensor(self.thresh, device=prob.device)
            n_valid = int(valid.sum())
            if self.min_kept > 0 and n_valid > 0:
                k = min(n_valid, self.min_kept)
                kth = prob[valid].kthvalue(k).values  # the k-th smallest target probability
                threshold = torch.maximum(threshold, kth)
            keep = valid & (prob <= threshold)
            hard_target = torch.where(keep, target, torch.full_like(target, self.ignore_index))
        return super().forward(logits, hard_target)


def build_loss(name: str, weight: Optional[torch.Tensor], ignore_index: int = 255, thresh: float = 0.7, min_kept: int = 0,
               fused: bool = False) -> nn.Module:  # fmt: skip
    """'ce' or 'ohem'; `fused`: the cross-entropy on a compiled kernel in training."""
    if name == "ce":
        return CrossEntropy(weight, ignore_index, fused)
    if name == "ohem":
        return OHEMCrossEntropy(weight, ignore_index, thresh, min_kept, fused)
    raise ValueError(f"unknown loss {name!r}; choose ce or ohem")
