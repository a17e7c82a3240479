"""dabnet.inference.admission: an image's network cost from its size (as Segmenter runs it), the ledger of accepted
seconds, the memory budget, the per-client limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dabnet
from dabnet.data.classes import CAMVID_CLASSES, CAMVID_MEAN, CAMVID_PALETTE, CAMVID_STD
from dabnet.inference.admission import ClientLimit, CostModel, MemoryBudget, Refused, WorkLedger
from dabnet.inference.segmenter import Segmenter
from dabnet.io.preprocessing import MIN_SIDE


def _segmenter(scale: float = 1.0) -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(dabnet.create_model("dabnet", 11), CAMVID_MEAN, CAMVID_STD, CAMVID_CLASSES, CAMVID_PALETTE, scale=scale)


@pytest.mark.parametrize("scale", [1.0, 1.5, 0.5])
@pytest.mark.parametrize("shape", [(1, 5000), (3000, 1), (700, 900), (301, 257), (1, 1), (90, 20)])
def test_the_plan_counts_the_passes_and_pixels_segmenter_runs(shape, scale):
    """The plan's passes and covered pixels are what predict_batch runs, tiles and padding included (a mirror of the
    tiling that drifted would misjudge every large image)."""
    seg = _segmenter(scale)
    seg.max_pixels = 256 * 256  # tiles at a small size: every kind of cut, fast
    seg.tile_margin = 32
    seen = []

    def labels(images):  # instead of the network: what it would be given
        h, w = images[0].shape[:2]
        seen.append((len(images), max(MIN_SIDE, h) * max(MIN_SIDE, w)))
        return np.zeros((len(images), h, w), np.uint8)

    seg._labels = labels
    seg.predict_batch([np.zeros((*shape, 3), np.uint8)])
    plan = CostModel(seg, per_pass_s=0.5, per_pixel_s=1e-6).plan(*shape)
    assert (plan.passes, plan.seen_pixels) == (len(seen), sum(n * px for n, px in seen))
    assert plan.seconds == pytest.approx(0.5 * plan.passes + 1e-6 * plan.seen_pixels)


def test_a_thin_image_costs_its_passes_not_its_pixels():
    """Issue 50, case 2: 1x16,000,000 pixels are under 16.7 megapixels, but each pass pads the strip to MIN_SIDE
    rows, so it covers 16 times its pixels; it runs as strips that fill the budget (once 8929 square tiles)."""
    seg = _segmenter()
    plan = CostModel(seg, per_pass_s=0.004, per_pixel_s=1e-7).plan(1, 16_000_000)
    square = CostModel(seg, per_pass_s=0.004, per_pixel_s=1e-7).plan(4000, 4000)
    core_w = (seg.max_pixels // MIN_SIDE - 2 * seg.tile_margin) // 8 * 8
    assert plan.passes == -(-16_000_000 // core_w) < 100 and plan.seen_pixels >= MIN_SIDE * 16_000_000
    assert plan.seconds > 10 * square.seconds


def test_the_cost_model_is_calibrated_from_timed_passes():
    cost = CostModel(_segmenter()).calibrate(repeats=1)
    assert cost.per_pass_s > 0 and cost.per_pixel_s > 0
    assert cost.plan(2000, 2000).seconds > cost.plan(100, 100).seconds > cost.plan(1, 1).seconds > 0


def test_the_cost_model_fits_its_two_timings_from_the_passes_it_timed(monkeypatch):
    """On a clock where a pass takes 20 ms plus 0.3 us a pixel (the first at each size, the warm-up, 1 s more), the
    fit is the smallest pass's time per pass and the larger pass's extra time over its pixels."""
    import dabnet.inference.admission as admission

    now, seen = [0.0], []

    def timed_pass(run, images, normalize):
        h, w = images[0].shape[:2]
        now[0] += 0.02 + 3e-7 * h * w + (1.0 if (h, w) not in seen else 0.0)
        seen.append((h, w))
        return torch.zeros(1)

    monkeypatch.setattr(admission, "predict_image_labels", timed_pass)
    monkeypatch.setattr(admission.time, "perf_counter", lambda: now[0])
    cost = CostModel(_segmenter()).calibrate(side=128, repeats=2)
    assert seen == [(MIN_SIDE, MIN_SIDE)] * 3 + [(128, 128)] * 3
    assert cost.per_pass_s == pytest.approx(0.02 + 3e-7 * MIN_SIDE**2)
    assert cost.per_pixel_s == pytest.approx(3e-7 * (128**2 - MIN_SIDE**2) / 128**2)


def test_measured_times_correct_the_estimate():
    cost = CostModel(_segmenter(), per_pass_s=0.01, per_pixel_s=0.0)
    assert cost.factor == 1.0
    cost.observe(1.0, 3.0)  # the machine runs three times slower than calibrated
    assert cost.factor == pytest.approx(3.0) and cost.plan(10, 10).seconds == pytest.approx(0.03)
    for _ in range(50):
        cost.observe(1.0, 100.0)
    assert cost.factor == 8.0  # bounded: one stall does not close the server for long


def _plan(seconds: float):
    return CostModel(_segmenter(), per_pass_s=seconds).plan(10, 10)


def test_the_ledger_refuses_for_good_what_alone_is_over_the_budget_and_for_now_what_does_not_fit():
    ledger = WorkLedger(budget_s=10)
    cheap = _plan(0.01)
    with pytest.raises(Refused) as e:
        ledger.admit(_plan(11), cheap)
    assert e.value.status == 413 and "--timeout" in e.value.detail and ledger.pending_s == 0
    first = ledger.admit(_plan(6), cheap)
    with pytest.raises(Refused) as e:
        ledger.admit(_plan(6), cheap)
    assert e.value.status == 503 and e.value.retry_after == 2
    second = ledger.admit(_plan(4), cheap)
    first.release()
    first.release()  # once only
    assert ledger.pending_s == pytest.approx(4)
    second.release()
    with pytest.raises(Refused) as e:  # even the smallest image is over: the server is slow, not the image large
        ledger.admit(_plan(11), _plan(11))
    assert e.value.status == 503


def test_the_memory_budget_reserves_resizes_and_says_when_it_drains():
    drained = []
    budget = MemoryBudget(100, on_drained=lambda: drained.append(1), drained_after=50, retry_after=lambda: 7)
    a, b = [0], [0]
    budget.take(60, a)
    with pytest.raises(Refused) as e:
        budget.take(41, b)
    assert e.value.status == 503 and e.value.retry_after == 7 and "--max-inflight-mb" in e.value.detail
    with pytest.raises(Refused) as e:  # alone over the limit: it never fits
        budget.take(101, b)
    assert e.value.status == 413 and b == [0]
    budget.resize(a, 20)
    budget.resize(b, 80)
    assert (budget.used, a, b) == (100, [20], [80])
    budget.give_back(a)
    assert drained == []
    budget.give_back(b)
    assert drained == [1] and budget.used == 0


def test_each_client_has_its_own_limit():
    limit = ClientLimit(2)
    limit.acquire("10.0.0.1")
    limit.acquire("10.0.0.1")
    with pytest.raises(Refused) as e:
        limit.acquire("10.0.0.1")
    assert e.value.status == 429 and e.value.retry_after == 1
    limit.acquire("10.0.0.2")
    limit.release("10.0.0.1")
    limit.acquire("10.0.0.1")
    for _ in range(2):
        limit.release("10.0.0.1")
    limit.release("10.0.0.2")
    assert limit.open == {}
