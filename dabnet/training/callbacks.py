"""The extension points of a training run. A `Callback` overrides the hooks it needs; `train()` and
`train_one_epoch` call the run's `Callbacks` at fixed points and know nothing of what they do. A kind of
callback is one module that registers a factory (`register_callback`), which reads the run's config and
returns a callback, or None where the config leaves it off. What a run writes (checkpoints, metrics, plots,
TensorBoard: `outputs`) is callbacks too, so `train(cfg, callbacks=[...])` chooses, orders or replaces all of it."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

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

    def on_epoch_complete(self, run: Any, state: Any, improved: bool) -> None:
        """End of an epoch after its validation, on the main process alone (the trainer runs it in
        `util.distributed.rank0_first`, so an error here is every process's): `state.history[-1]` is the epoch's whole
        record and `improved` says it is the best so far (`run`: training.run.Run, `state`: RunState); write the run's
        files here."""

    def on_stop(self, run: Any, state: Any, saved: bool) -> None:
        """A stop signal ends the run at a step boundary (on the main process alone, as on_epoch_complete); `saved`:
        on_epoch_complete has just run for the epoch ended."""

    def on_end(self, run: Any) -> None:
        """The run's loop is over, however it ended (finished, stopped, failed): close what the callback opened."""

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

    def on_epoch_complete(self, run: Any, state: Any, improved: bool) -> None:
        for cb in self:
            cb.on_epoch_complete(run, state, improved)

    def on_stop(self, run: Any, state: Any, saved: bool) -> None:
        for cb in self:
            cb.on_stop(run, state, saved)

    def on_end(self, run: Any) -> None:
        for cb in self:
            cb.on_end(run)

    def published(self, weights: Weights) -> Weights:
        for cb in self:
            weights = cb.published(weights)
        return weights

    def state_dict(self) -> Dict[str, Dict[str, Any]]:
        """Each callback's state by its name; one with none (the writers of files) adds no entry to the checkpoint."""
        states = ((cb.name, cb.state_dict()) for cb in self)
        return {name: state for name, state in states if state}

    def load_state_dict(self, states: Optional[Dict[str, Dict[str, Any]]]) -> None:
        """Each callback's own state; one the checkpoint lacks (it was added on this resume) starts fresh."""
        for cb in self:
            if states and cb.name in states:
                cb.load_state_dict(states[cb.name])


CallbackSpec = Union[str, Callback]


def build_callbacks(cfg: Any, device: torch.device, log: Callable[..., None] = print,
                    kinds: Optional[Sequence[CallbackSpec]] = None) -> Callbacks:  # fmt: skip
    """The callbacks of a run, called in this order: `kinds` names registered kinds (each made from `cfg`, skipped
    where `cfg` leaves it off) or gives Callback objects, used as they are; None: every registered kind, in
    registration order."""
    kinds = CALLBACKS.names() if kinds is None else [kinds] if isinstance(kinds, (str, Callback)) else list(kinds)
    unknown = [k for k in kinds if not isinstance(k, Callback) and (not isinstance(k, str) or k not in CALLBACKS)]
    if unknown:  # before any is made: a teacher is not loaded for a list that is refused
        raise ValueError(f"{CALLBACKS.unknown(unknown[0])} (or give a dabnet.training.Callback)")
    made = [kind if isinstance(kind, Callback) else CALLBACKS.get(kind)(cfg, device, log) for kind in kinds]
    made = [cb for cb in made if cb is not None]
    names = [cb.name for cb in made]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # a checkpoint keeps each callback's state under its name
        raise ValueError(f"two training callbacks named {twice[0]!r}: give each its own `name` (a class attribute)")
    return Callbacks(made)


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
