"""The model registry: `create_model(name, num_classes)`, `list_models()`, and the pretrained weights declared
beside the networks they fit (`register_pretrained`, `pretrained_config`), as timm keeps them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

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


@dataclass(frozen=True)
class PretrainedConfig:
    """Weights shipped inside the package: the network they fit, the file (relative to the package) and the
    dataset they were trained on; the file's own metadata holds the rest of its description (classes,
    colours, normalisation, recipe)."""

    name: str
    model: str
    num_classes: int
    file: str
    dataset: str
    summary: str = ""
    version: str = ""  # which release of these weights the file is: reports name it beside their figures


_PRETRAINED: Dict[str, PretrainedConfig] = {}


def register_pretrained(cfg: PretrainedConfig) -> PretrainedConfig:
    """Declare bundled weights for a registered model, addressable by name wherever a checkpoint is."""
    _check_name(cfg.model)
    if cfg.name in _PRETRAINED:
        raise ValueError(f"pretrained weights {cfg.name!r} are registered twice")
    _PRETRAINED[cfg.name] = cfg
    return cfg


def pretrained_config(name: str) -> Optional[PretrainedConfig]:
    """The declaration of bundled weights `name`, or None when no such name is registered."""
    return _PRETRAINED.get(str(name))


def list_pretrained() -> List[str]:
    """Names of every bundled set of weights."""
    return sorted(_PRETRAINED)
