"""The model registry: `create_model(name, num_classes)`, `list_models()`, and the pretrained weights declared
beside the networks they fit (`register_pretrained`, `pretrained_config`), as timm keeps them. Both are
`util.registry.Registry`s: `MODELS` and `PRETRAINED`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from torch import nn

from ..util.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", sort=True)


def register_model(name: str, description: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model constructor under `name` (help: `description`, else its docstring's first line)."""
    return MODELS.register(name, help=description or None)


def list_models() -> List[str]:
    """Names of every registered model, sorted."""
    return MODELS.names()


def model_description(name: str) -> str:
    """One-line description of a registered model."""
    return MODELS.help(name)


def create_model(name: str, num_classes: int = 19, **kwargs: Any) -> nn.Module:
    """Build a registered model; its name and arguments are kept on it for checkpoints."""
    build = MODELS.get(name)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    model = build(num_classes=int(num_classes), **kwargs)
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


PRETRAINED: Registry[PretrainedConfig] = Registry("pretrained weights", sort=True,
                                                  summary=lambda cfg: cfg.summary or f"{cfg.model} trained on {cfg.dataset}")


def register_pretrained(cfg: PretrainedConfig) -> PretrainedConfig:
    """Declare bundled weights for a registered model, addressable by name wherever a checkpoint is."""
    MODELS.get(cfg.model)
    return PRETRAINED.register(cfg.name, cfg)


def pretrained_config(name: str) -> Optional[PretrainedConfig]:
    """The declaration of bundled weights `name`, or None when no such name is registered."""
    return PRETRAINED.get(str(name), None)


def list_pretrained() -> List[str]:
    """Names of every bundled set of weights."""
    return PRETRAINED.names()
