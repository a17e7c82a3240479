"""The Hypothesis budget of dabnet's fuzz tests, chosen by the environment, and the time bound of one example.

- `DABNET_FUZZ` unset (or `ci`): each fuzz test runs its own small number of examples from a fixed seed, so CI
  tries the same inputs every run and stays within its time budget.
- `DABNET_FUZZ=deep`: 20 times as many examples each, from a fresh random seed.
- `DABNET_FUZZ_SEED=N`: that seed in either profile.

No example database is kept (tests write nothing into the tree). A failure prints the shrunk example, the blob
for `@reproduce_failure`, and a line with the profile and seed that replay the whole run."""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import functools
import inspect
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from hypothesis import HealthCheck, Phase, seed, settings

PROFILE = os.environ.get("DABNET_FUZZ", "ci") or "ci"
if PROFILE not in ("ci", "deep"):
    raise RuntimeError(f"DABNET_FUZZ={PROFILE!r}: choose ci (the default) or deep")
DEEP_FACTOR = 20
SEED = int(os.environ.get("DABNET_FUZZ_SEED") or (random.SystemRandom().randrange(2**32) if PROFILE == "deep" else 0))

# No deadline: time_bound() bounds each example instead, a hang included. No explain phase: it traces every line, so
# slowly that it would trip the bound, for a hint the shrunk example already gives.
_common = dict(deadline=None, database=None, print_blob=True, phases=[p for p in Phase if p != Phase.explain],
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])  # capsys: read where an example uses it  # fmt: skip
settings.register_profile("dabnet-ci", **_common)
settings.register_profile("dabnet-deep", **_common)
settings.load_profile(f"dabnet-{PROFILE}")


def examples(ci: int) -> int:
    """A test's number of examples: `ci` by default, DEEP_FACTOR times as many in the deep profile."""
    return ci * DEEP_FACTOR if PROFILE == "deep" else ci


def fuzz(max_examples: int) -> Callable:
    """Decorator for a @given test: its budget (`examples(max_examples)`), the run's seed, and on failure a note
    with the environment that replays it."""

    def wrap(test: Callable) -> Callable:
        inner = seed(SEED)(settings(max_examples=examples(max_examples))(test))

        @functools.wraps(inner)
        def run(*args, **kwargs):
            try:
                return inner(*args, **kwargs)
            except BaseException as e:
                e.add_note(f"fuzz seed {SEED}: replay with DABNET_FUZZ={PROFILE} DABNET_FUZZ_SEED={SEED} "
                           f"python3 -m pytest -p no:cacheprovider -n 0 {_where(test)}::{test.__name__}")  # fmt: skip
                raise

        return run

    return wrap


def _where(test: Callable) -> str:
    path = Path(inspect.getfile(test)).resolve()
    root = Path(__file__).resolve().parents[1]
    return str(path.relative_to(root)) if root in path.parents else str(path)


_HANG_LOG: list = []


def _hang_log():
    """Where a hang's tracebacks go: dabnet-fuzz-hang-PID.txt in the temp folder (pytest holds stderr, and a process
    stopped from native code never hands it back); removed at exit when nothing hung."""
    if not _HANG_LOG:
        path = Path(tempfile.gettempdir()) / f"dabnet-fuzz-hang-{os.getpid()}.txt"
        _HANG_LOG.append(open(path, "w"))  # noqa: SIM115  open for as long as the process runs
        atexit.register(lambda: path.stat().st_size or path.unlink())
    return _HANG_LOG[0]


class TimeBoundExceeded(AssertionError):
    """One fuzz example ran past its time bound."""


@contextlib.contextmanager
def time_bound(seconds: float, what: str = "the example") -> Iterator[None]:
    """Fail an example that runs past `seconds`: interrupted by SIGALRM where Python code is looping (main thread
    only; should the code under test turn the interruption into an error of its own, the example fails all the
    same), and, should native code hang without returning to Python, the process is stopped with every thread's
    traceback written to a file in the temp folder (dabnet-fuzz-hang-PID.txt) at 3x the bound rather than hanging
    the suite."""
    start = time.monotonic()
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    fired = []

    def expired(signum, frame):
        fired.append(True)
        raise TimeBoundExceeded(f"{what} ran past its bound of {seconds:g} s")

    if main:
        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(3 * seconds, exit=True, file=_hang_log())
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        elapsed = time.monotonic() - start
        if fired or elapsed > seconds:
            raise TimeBoundExceeded(f"{what} took {elapsed:.1f} s, over its bound of {seconds:g} s")
