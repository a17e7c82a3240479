"""Admission of work by its cost, before the work is done: what an image will take in network time (from its
header's size, the way `Segmenter` tiles it, and timings of this machine), the seconds of work already accepted,
the bytes all requests in flight hold, and how many requests each client has open.

`serve` asks these before decoding an image; a refusal is a `Refused` with an HTTP status and, where waiting
helps, the seconds to wait. Nothing here knows HTTP beyond those two numbers.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..io.preprocessing import MIN_SIDE
from ..runtimes.runner import predict_image_labels
from .segmenter import pass_pixels, tile_cores


class Refused(Exception):
    """Work not admitted: `status` (413: never, as sent; 429: too many from this client; 503: not now) and, where
    waiting helps, `retry_after` seconds."""

    def __init__(self, status: int, detail: str, retry_after: Optional[int] = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after


@dataclass(frozen=True)
class Plan:
    """What the network will do for one image: its passes and the pixels they cover, and the seconds they take."""

    width: int
    height: int
    passes: int
    seen_pixels: int  # what the passes cover: tiles with their margins, sides under MIN_SIDE padded
    model_s: float  # seconds by the fitted timings
    seconds: float  # model_s corrected by what the worker measured since

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _axis(n: int, core: int, margin: int) -> Tuple[int, int]:
    """(tiles, the sum of their padded extents) along one side of `n` pixels, as `Segmenter._tiled` cuts it."""
    starts = np.arange(0, n, core, dtype=np.int64)
    extents = np.minimum(n, starts + core + margin) - np.maximum(0, starts - margin)
    return len(starts), int(np.maximum(MIN_SIDE, extents).sum())


class CostModel:
    """Seconds a `Segmenter` takes for an image of a given size: `per_pass_s` a network pass plus `per_pixel_s` a pixel it
    covers, its passes counted as `predict_batch` makes them (one, or tiles with margins past `max_pixels`; sides
    padded to MIN_SIDE; resized by its `scale`). Fitted by `calibrate`, then corrected by what `observe` is told."""

    def __init__(self, seg, per_pass_s: float = 0.0, per_pixel_s: float = 0.0) -> None:
        self.seg, self.per_pass_s, self.per_pixel_s = seg, float(per_pass_s), float(per_pixel_s)
        self._measured = self._predicted = 0.0
        self._lock = threading.Lock()

    def calibrate(self, side: int = 128, repeats: int = 1) -> "CostModel":
        """Fit the two timings from passes at MIN_SIDE and `side` pixels a side (the fastest of `repeats`, after one
        that warms the runtime up)."""

        def timed(n: int) -> float:
            image = np.zeros((n, n, 3), np.uint8)
            best = math.inf
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                predict_image_labels(self.seg.run, [image], self.seg.normalize).cpu()  # .cpu(): waits for a GPU to finish
                if i:
                    best = min(best, time.perf_counter() - t0)
            return best

        small, large = timed(MIN_SIDE), timed(side)
        # The smallest pass is nearly all fixed cost: counted whole as the cost of a pass (a slight overestimate).
        per_pixel = (large - small) / (side * side)
        if per_pixel <= 0:  # noise larger than the difference: all of the larger pass counted as pixels
            per_pixel = large / (side * side)
        self.per_pass_s, self.per_pixel_s = small, per_pixel
        return self

    @property
    def factor(self) -> float:
        """Measured over predicted seconds, weighted to recent batches (1 before any): a busy machine runs slower
        than it did at calibration, batches of several images faster than their sum."""
        with self._lock:
            if self._predicted <= 0:
                return 1.0
            return min(8.0, max(0.5, self._measured / self._predicted))

    def observe(self, model_s: float, measured_s: float) -> None:
        """Tell the model that work it put at `model_s` (Plan.model_s, summed over a batch) took `measured_s`."""
        with self._lock:
            self._measured = 0.8 * self._measured + measured_s
            self._predicted = 0.8 * self._predicted + model_s

    def plan(self, height: int, width: int) -> Plan:
        """The passes, covered pixels and seconds of an image of `height` x `width`."""
        seg = self.seg
        h, w = height, width
        if seg.scale != 1.0:  # as Segmenter._rescaled sizes it
            h, w = max(1, round(height * seg.scale)), max(1, round(width * seg.scale))
        if pass_pixels(h, w) > seg.max_pixels:  # as Segmenter._tiled cuts it
            m = seg.tile_margin
            core_h, core_w = tile_cores(h, w, seg.max_pixels, m)
            (ny, sy), (nx, sx) = _axis(h, core_h, m), _axis(w, core_w, m)
            passes, seen = ny * nx, sy * sx
        else:
            passes, seen = 1, pass_pixels(h, w)
        model_s = passes * self.per_pass_s + seen * self.per_pixel_s
        return Plan(width, height, passes, seen, model_s, model_s * self.factor)


class Ticket:
    """Seconds of work a request holds in the ledger, given back once (by whichever of the request or the worker
    is done with it first)."""

    def __init__(self, ledger: "WorkLedger", seconds: float) -> None:
        self.ledger, self.seconds, self._open = ledger, seconds, True

    def release(self) -> None:
        """Give the seconds back (the second call does nothing)."""
        with self.ledger._lock:
            if self._open:
                self._open = False
                self.ledger.pending_s = max(0.0, self.ledger.pending_s - self.seconds)


class WorkLedger:
    """Seconds of network work accepted and not yet done, against `budget_s`, the time a request may take: an image
    that alone takes longer is refused for good (413), one that does not fit behind the others for now (503)."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s, self.pending_s = float(budget_s), 0.0
        self._lock = threading.Lock()

    def retry_after(self) -> int:
        """Seconds until the work accepted now is done, by its estimate (1 at least)."""
        return max(1, math.ceil(self.pending_s))

    def admit(self, plan: Plan, cheapest: Plan) -> Ticket:
        """A Ticket for `plan`'s seconds, or Refused; `cheapest` is the plan of the smallest image (when even that does
        not fit, the server is slow, not the image large)."""
        over = plan.seconds > self.budget_s
        if over and cheapest.seconds <= self.budget_s:
            raise Refused(413, f"this {plan.width}x{plan.height} image would take about {plan.seconds:.0f} s of network time "
                          f"here ({plan.passes} passes over {plan.seen_pixels:,} pixels), over the {self.budget_s:g} s a "
                          "request may take (--timeout): send a smaller image")  # fmt: skip
        with self._lock:
            if over or (self.pending_s > 0 and self.pending_s + plan.seconds > self.budget_s):
                wait = max(1, math.ceil(self.pending_s + plan.seconds - self.budget_s)) if not over else self.retry_after()
                raise Refused(503, f"the server has about {self.pending_s:.1f} s of work accepted and this image adds about "
                              f"{plan.seconds:.1f} s, more than the {self.budget_s:g} s a request may take (--timeout): try "
                              f"again in {wait} s", wait)  # fmt: skip
            self.pending_s += plan.seconds
        return Ticket(self, plan.seconds)


class MemoryBudget:
    """Bytes held by requests in flight (bodies as they arrive, then what decoding and answering an image will hold,
    reserved before it is allocated), across all of them: what does not fit is refused at once, so a burst cannot
    grow the process past `limit`. When the last request gives its bytes back after a burst of at least
    `drained_after` bytes, `on_drained` runs (to give freed memory back to the OS)."""

    def __init__(self, limit: int, on_drained: Optional[Callable[[], None]] = None, drained_after: int = 64 * 2**20,
                 retry_after: Callable[[], int] = lambda: 1) -> None:  # fmt: skip
        self.limit, self.used, self.peak = int(limit), 0, 0
        self.on_drained, self.drained_after, self.retry_after = on_drained, drained_after, retry_after
        self._lock = threading.Lock()

    def take(self, n: int, held: List[int]) -> None:
        """Reserve `n` more bytes for a request (added to its `held` tally), or Refused: 413 when the request alone
        needs more than the limit (it never fits), 503 when the others leave no room for it now."""
        if held[0] + n > self.limit:
            raise Refused(413, f"this request needs {(held[0] + n) / 2**20:.0f} MiB for its body, decoding and answer, more "
                          f"than the {self.limit / 2**20:.0f} MiB all requests in flight may hold (--max-inflight-mb): send a "
                          "smaller image")  # fmt: skip
        with self._lock:
            if self.used + n > self.limit:
                wait = self.retry_after()
                raise Refused(503, f"the server holds {self.used / 2**20:.0f} MiB of requests in flight and this one needs "
                              f"{n / 2**20:.0f} MiB more, over its limit of {self.limit / 2**20:.0f} MiB "
                              f"(--max-inflight-mb): try again in {wait} s", wait)  # fmt: skip
            self.used += n
            self.peak = max(self.peak, self.used)
        held[0] += n

    def resize(self, held: List[int], n: int) -> None:
        """Make a request's tally `n` bytes: reserve the increase (or Refused), give back the decrease."""
        if n > held[0]:
            self.take(n - held[0], held)
        elif n < held[0]:
            with self._lock:
                self.used -= held[0] - n
            held[0] = n

    def give_back(self, held: List[int]) -> None:
        """Give back all a request holds."""
        with self._lock:
            self.used -= held[0]
            drained = self.used == 0 and self.peak >= self.drained_after
            if self.used == 0:
                self.peak = 0
        held[0] = 0
        if drained and self.on_drained is not None:
            self.on_drained()


class ClientLimit:
    """Requests in flight per client address, at most `limit` each (429 beyond): one client cannot take every slot of
    the queue. Behind a proxy all clients share its address; set the limit for it."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.open: Dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, client: str) -> None:
        """Count one more request of `client`, or Refused (429) at its limit."""
        with self._lock:
            n = self.open.get(client, 0)
            if n >= self.limit:
                raise Refused(429, f"this client already has {n} requests in flight, the limit per client "
                              "(--max-per-client): wait for their answers", 1)  # fmt: skip
            self.open[client] = n + 1

    def release(self, client: str) -> None:
        """Count one request of `client` fewer."""
        with self._lock:
            n = self.open.get(client, 0) - 1
            if n > 0:
                self.open[client] = n
            else:
                self.open.pop(client, None)
