"""Training: the loop (engine), losses, and the callbacks a run calls (EMA, distillation) in a registry; may import
runtimes, data, io, models and util."""

from .callbacks import CALLBACKS, Callback, Callbacks, build_callbacks, list_callbacks, register_callback

# One line per kind of callback: the import registers it.
from . import ema  # noqa: E402,F401
from . import distill  # noqa: E402,F401

__all__ = ["CALLBACKS", "Callback", "Callbacks", "build_callbacks", "list_callbacks", "register_callback"]
