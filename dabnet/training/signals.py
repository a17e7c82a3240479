"""The stop signals of a training run: SIGINT and SIGTERM set a flag the loop reads at each step boundary, and the
loader workers ignore them (starting with them blocked), so that a signal to the whole process group never kills a
worker mid-step."""

from __future__ import annotations

import signal
from typing import Any, Dict, Optional

import torch
from torch.utils.data import DataLoader

# The signals that stop a run: the trainer handles them, its loader workers ignore them (and start with them blocked).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves and exits at the next step boundary."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        for s in STOP_SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def worker_ignores_stop_signals(worker_id: int) -> None:
    """Ctrl-C, or a scheduler's SIGTERM, reaches every process of the group. A worker killed by it
    would make PyTorch raise in the main process at any point, even mid-step or mid-validation; so the
    workers of training and validation leave the signal to the main process, which saves and stops at
    the next step boundary (after the validation under way). They still exit through the loader's
    shutdown, or by its watchdog if the main process dies."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by SignalSafeLoader until now; pending ones are dropped


class SignalSafeLoader(DataLoader):
    """A DataLoader whose workers start with the stop signals blocked (they inherit the mask of the thread that
    forks them): a signal between a worker's start and its `worker_ignores_stop_signals` would kill it. In the
    trainer the block lasts while the workers are made, and a signal that came then is handled after it. Each pass
    draws its workers' base seed from a generator of its own, not torch's global one: a run resumed mid-epoch
    starts that epoch's pass again, and an extra draw there would leave the global RNG (dropout's) one draw off
    the run it continues, and the checkpoints' RNG state unequal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(*args, **kwargs)

    def __iter__(self):
        if not hasattr(signal, "pthread_sigmask"):
            return super().__iter__()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
