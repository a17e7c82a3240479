"""A small model registry: `create_model(name, num_classes)` and `list_models()`."""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from torch import nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: Dict[str, str] = {}


def register_model(name: str, description: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model constructor under `name`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return wrap


def list_models() -> List[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def model_description(name: str) -> str:
    """One-line description of a registered model."""
    _check_name(name)
    return _DESCRIPTIONS[name]


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")


def create_model(name: str, num_classes: int = 19, **kwargs: Any) -> nn.Module:
    """Build a registered model; its name and arguments are kept on it for checkpoints."""
    _check_name(name)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    model = _MODELS[name](num_classes=int(num_classes), **kwargs)
    # Recorded so that a checkpoint can rebuild the exact network with nothing else.
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    model.num_classes = int(num_classes)
    return model
