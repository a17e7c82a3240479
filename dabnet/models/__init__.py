"""Networks: DABNet, its ablation variants, and the comparison nets of the paper's speed table."""

from . import dabnet, enet, erfnet, espnet, icnet, segnet  # noqa: F401  (each registers its models)
from .registry import create_model, list_models, model_description, register_model

__all__ = ["create_model", "list_models", "model_description", "register_model"]
