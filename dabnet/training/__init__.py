"""Training extensions: the callbacks a run calls (training.callbacks) and the kinds registered with it.
Imports models, checkpoint, data and engine; imported by train.py."""

from .callbacks import Callback, Callbacks, build_callbacks, list_callbacks, register_callback

# One line per kind of callback: the import registers it.
from . import ema  # noqa: E402,F401
from . import distill  # noqa: E402,F401

__all__ = ["Callback", "Callbacks", "build_callbacks", "list_callbacks", "register_callback"]
