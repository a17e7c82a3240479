"""Weight EMA (`ema: DECAY`): an exponential moving average of the weights, updated after every step,
is what the run validates and saves as its model (last.pth, best.pth, epoch_NNNN.pth, and so eval,
predict and `dabnet average`); the trained weights go on unchanged and are saved beside it for resume."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from .callbacks import Callback, Weights, register_callback


class EMA(Callback):
    """shadow <- decay * shadow + (1 - decay) * weights after each step, for every float tensor of the
    model's state (BatchNorm statistics too); counters are copied."""

    name = "ema"

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow: Optional[Weights] = None

    def on_start(self, model: nn.Module) -> None:
        own = model.state_dict()
        if self.shadow is None:  # a fresh run: the average starts at the starting weights
            self.shadow = {k: v.detach().clone() for k, v in own.items()}
        else:  # restored from a checkpoint read onto the CPU
            self.shadow = {k: v.to(own[k].device) for k, v in self.shadow.items()}

    @torch.no_grad()
    def on_step_end(self, model: nn.Module) -> None:
        assert self.shadow is not None, "on_start was not called"
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach().to(s.dtype), 1.0 - self.decay)
            else:
                s.copy_(v)
        self.updates += 1

    def published(self, weights: Weights) -> Weights:
        return weights if self.shadow is None else self.shadow

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()} if state.get("shadow") is not None else None


@register_callback("ema", "an exponential moving average of the weights, validated and saved as the model (ema > 0)")
def _from_config(cfg: Any, device: torch.device, log) -> Optional[EMA]:
    return EMA(cfg.ema) if getattr(cfg, "ema", 0.0) else None
