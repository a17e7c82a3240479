"""Losses: weighted cross-entropy and online hard example mining (OHEM) cross-entropy."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropy(nn.Module):
    """Cross-entropy with optional class weights and an ignore index (mean over weighted pixels)."""

    def __init__(self, weight: Optional[torch.Tensor] = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.register_buffer("weight", weight if weight is None else weight.float(), persistent=False)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=self.ignore_index)


class OHEMCrossEntropy(CrossEntropy):
    """Cross-entropy over the hard pixels only: those whose target probability is below `thresh`,
    and at least the `min_kept` hardest ones (Wu et al.'s bootstrapping, as the paper trains)."""

    def __init__(
        self, weight: Optional[torch.Tensor] = None, ignore_index: int = 255, thresh: float = 0.7, min_kept: int = 100_000
    ) -> None:
        super().__init__(weight, ignore_index)
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
        return F.cross_entropy(logits, hard_target, weight=self.weight, ignore_index=self.ignore_index)


def build_loss(name: str, weight: Optional[torch.Tensor], ignore_index: int = 255, thresh: float = 0.7, min_kept: int = 0) -> nn.Module:
    """'ce' or 'ohem'."""
    if name == "ce":
        return CrossEntropy(weight, ignore_index)
    if name == "ohem":
        return OHEMCrossEntropy(weight, ignore_index, thresh, min_kept)
    raise ValueError(f"unknown loss {name!r}; choose ce or ohem")
