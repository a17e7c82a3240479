"""Training: the run and its loop (run: `train`, also `dabnet.train`), the loop's steps (engine), losses, samplers,
signals, resume, and the callbacks a run calls (EMA, distillation, its checkpoints and logs) in a registry; may
import runtimes, data, io, models and util."""

from .callbacks import CALLBACKS, Callback, Callbacks, build_callbacks, list_callbacks, register_callback

# One line per kind of callback: the import registers it. The order is the order a run calls them in.
from . import ema  # noqa: E402,F401
from . import distill  # noqa: E402,F401
from . import outputs  # noqa: E402,F401  (checkpoints, metrics, plots, tensorboard: after the weights' callbacks)

__all__ = ["CALLBACKS", "Callback", "Callbacks", "build_callbacks", "list_callbacks", "register_callback"]
