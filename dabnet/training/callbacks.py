"""The extension points of a training run. A `Callback` overrides the hooks it needs; `train()` and
`train_one_epoch` call the run's `Callbacks` at fixed points and know nothing of what they do. A kind of
callback is one module that registers a factory (`register_callback`), which reads the run's config and
returns a callback, or None where the config leaves it off."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from ..util.registry import Registry

Weights = Dict[str, torch.Tensor]


class Callback:
    """Hooks of a training run; each default does nothing."""

    name = "callback"

    def on_data(self, dataset: Any) -> Any:
        """Start of run, before any work on the data: check it (raise a one-line error), return what the loader draws from."""
        return dataset

    def on_start(self, model: nn.Module) -> None:
        """The model is built and, on a resume, restored with this callback's state; the first step comes next."""

    def on_loss(self, batch: Sequence[torch.Tensor], logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Each step, before backward: the batch (on the device), the logits and the loss; returns the loss to train on."""
        return loss

    def on_step_end(self, model: nn.Module) -> None:
        """Each step, after the optimiser."""

    def on_epoch_end(self, record: Dict[str, Any]) -> None:
        """End of an epoch: add this callback's figures to the epoch's record (logs and metrics.jsonl)."""

    def published(self, weights: Weights) -> Weights:
        """The weights a run validates and saves as its model, given the trained ones."""
        return weights

    def state_dict(self) -> Dict[str, Any]:
        """What an exact resume needs of this callback."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore `state_dict()`'s output (called before on_start)."""


Factory = Callable[[Any, torch.device, Callable[..., None]], Optional[Callback]]
CALLBACKS: Registry[Factory] = Registry("training callback")
_FACTORIES = CALLBACKS  # the name tests patch


def register_callback(name: str, help: Optional[str] = None) -> Callable[[Factory], Factory]:
    """Register `factory(cfg, device, log) -> Callback | None` under `name` (help: `help`, else the factory's docstring);
    runs build them in registration order."""
    return CALLBACKS.register(name, help=help)


def list_callbacks() -> List[str]:
    """Names of the registered kinds of training callback."""
    return CALLBACKS.names()


class Callbacks(List[Callback]):
    """The callbacks of one run, called in order; `published` chains them."""

    def on_data(self, dataset: Any) -> Any:
        for cb in self:
            dataset = cb.on_data(dataset)
        return dataset

    def on_start(self, model: nn.Module) -> None:
        for cb in self:
            cb.on_start(model)

    def on_loss(self, batch: Sequence[torch.Tensor], logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        for cb in self:
            loss = cb.on_loss(batch, logits, loss)
        return loss

    def on_step_end(self, model: nn.Module) -> None:
        model = unwrap(model)
        for cb in self:
            cb.on_step_end(model)

    def on_epoch_end(self, record: Dict[str, Any]) -> None:
        for cb in self:
            cb.on_epoch_end(record)

    def published(self, weights: Weights) -> Weights:
        for cb in self:
            weights = cb.published(weights)
        return weights

    def state_dict(self) -> Dict[str, Dict[str, Any]]:
        return {cb.name: cb.state_dict() for cb in self}

    def load_state_dict(self, states: Optional[Dict[str, Dict[str, Any]]]) -> None:
        """Each callback's own state; one the checkpoint lacks (it was added on this resume) starts fresh."""
        for cb in self:
            if states and cb.name in states:
                cb.load_state_dict(states[cb.name])


def build_callbacks(cfg: Any, device: torch.device, log: Callable[..., None] = print) -> Callbacks:
    """The callbacks `cfg` turns on, in registration order."""
    made = (factory(cfg, device, log) for factory in CALLBACKS.values())
    return Callbacks(cb for cb in made if cb is not None)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside torch.compile's and DistributedDataParallel's wrappers (whose state_dict keys differ)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


@contextlib.contextmanager
def weights_in(model: nn.Module, weights: Weights) -> Iterator[nn.Module]:
    """`model` holding `weights` inside the block (copied in), its own weights again after it, bit for bit."""
    own = model.state_dict()
    # state_dict() makes new tensor objects on every call: the model's own weights are those sharing its storage.
    if all(weights[k].data_ptr() == v.data_ptr() for k, v in own.items()):
        yield model
        return
    saved = {k: v.detach().clone() for k, v in own.items()}
    model.load_state_dict(weights)
    try:
        yield model
    finally:
        model.load_state_dict(saved)
