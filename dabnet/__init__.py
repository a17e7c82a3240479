"""dabnet: real-time semantic segmentation with DABNet (Li & Kim, BMVC 2019)."""

from .io.checkpoint import load_model, save_checkpoint
from .models import create_model, list_models
from .inference.segmenter import Segmenter
from .inference.spec import ModelSpec, describe
from .training.run import train

__version__ = "0.1.0"
__all__ = ["ModelSpec", "Segmenter", "create_model", "describe", "list_models", "load_model", "save_checkpoint", "train",
           "__version__"]  # fmt: skip
