"""Networks: DABNet, its ablation variants and the comparison nets of the paper's speed table, in a registry;
may import util."""

from . import dabnet, enet, erfnet, espnet, icnet, segnet  # noqa: F401  (each registers its models)
from .registry import (
    MODELS,
    PRETRAINED,
    PretrainedConfig,
    create_model,
    list_models,
    list_pretrained,
    model_description,
    pretrained_config,
    register_model,
    register_pretrained,
)

__all__ = ["MODELS", "PRETRAINED", "PretrainedConfig", "create_model", "list_models", "list_pretrained", "model_description",
           "pretrained_config", "register_model", "register_pretrained"]
