"""Shared settings of the property-based tests (Hypothesis): a small budget by default, so that every test run
fuzzes, and a `deep` profile, chosen with DABNET_FUZZ=deep, that runs far more examples. Each run draws its seed
(or takes DABNET_FUZZ_SEED) and a failure prints it, with Hypothesis's @reproduce_failure blob; no example
database is written (tests write nothing into the working folder)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
from typing import Callable, Iterator

from hypothesis import HealthCheck, note, seed, settings
from hypothesis.errors import InvalidArgument

_COMMON = dict(deadline=None, database=None, print_blob=True, derandomize=False,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                      HealthCheck.function_scoped_fixture])  # capsys, read where an example uses it  # fmt: skip
settings.register_profile("dabnet-default", max_examples=30, **_COMMON)
settings.register_profile("dabnet-deep", max_examples=3000, **_COMMON)

PROFILE = "dabnet-deep" if os.environ.get("DABNET_FUZZ") == "deep" else "dabnet-default"
SEED = int(os.environ.get("DABNET_FUZZ_SEED") or random.SystemRandom().randrange(2**32))


def fuzz(max_examples: int = 0) -> Callable:
    """The decorator of a property test: this run's profile and seed (`max_examples` scales the default budget of one
    test; the deep profile takes 100 times as many)."""
    profile = settings.get_profile(PROFILE)
    n = profile.max_examples if not max_examples else max_examples * (100 if PROFILE == "dabnet-deep" else 1)

    def wrap(test: Callable) -> Callable:
        return seed(SEED)(settings(profile, max_examples=n)(test))

    return wrap


class TooSlow(AssertionError):
    """An example ran past the property's time bound (a hang, or work the check should have refused)."""


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail the example if its block runs longer than `seconds` (SIGALRM: the main thread, as pytest runs tests);
    a failing example's report says how to replay this run."""
    with contextlib.suppress(InvalidArgument):  # outside a Hypothesis test there is no example to note it on
        note(f"this run's seed: DABNET_FUZZ_SEED={SEED} (profile {PROFILE}) replays it")

    def expire(signum, frame):
        raise TooSlow(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
