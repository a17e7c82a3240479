"""Admission of `dabnet serve` under the two loads of issue 50: a 1x16,000,000-pixel PNG beside a client of
small images (case 2), and a burst of 16 parallel 4096x4096 PNGs under --max-inflight-mb 512 (case 8).

    python benchmarks/serve_admission.py --checkpoint dabnet-camvid

Starts `python -m dabnet serve` on 127.0.0.1 (a free port), measures the server's resident memory from
/proc (sampled every 10 ms, and its kernel high-water mark), prints one line per figure and stops it.
Only loopback traffic; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from load_test import free_port, wait_until_up


def png(width: int, height: int, noise: bool = False) -> bytes:
    """A PNG of `width` x `height` RGB: black (a few KB per megapixel) or noise (incompressible)."""
    buf = io.BytesIO()
    if noise:
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG",
                                                                                                          compress_level=1)
    else:
        Image.new("RGB", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler:
    """The highest VmRSS of `pid` seen while running (every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> "Sampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def post(url: str, body: bytes, timeout: float = 120) -> tuple:
    t0 = time.perf_counter()
    try:
        res = httpx.post(url, content=body, headers={"content-type": "image/png"}, timeout=timeout)
        return res.status_code, time.perf_counter() - t0, res.text[:160]
    except httpx.HTTPError as e:
        return 0, time.perf_counter() - t0, type(e).__name__


def parallel(url: str, bodies, timeout: float = 120):
    results = [None] * len(bodies)

    def one(i: int) -> None:
        results[i] = post(url, bodies[i], timeout)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def case_thin(base: str) -> None:
    """Case 2: the thin image, and a second client's small requests meanwhile."""
    thin = png(16_000_000, 1)
    small = png(480, 360, noise=True)
    others, stop = [], threading.Event()

    def other() -> None:
        for _ in range(200):
            if stop.is_set():
                return
            others.append(post(base + "/v1/segment", small, 60)[:2])

    t = threading.Thread(target=other)
    t.start()
    time.sleep(0.5)
    code, secs, text = post(base + "/v1/segment", thin, 120)
    time.sleep(1.0)
    stop.set()
    t.join()
    codes = [c for c, _ in others]
    print(f"case 2: {len(thin) / 1000:.0f} KB PNG of 1x16,000,000 -> {code} in {secs * 1000:.0f} ms ({text[:110]})")
    print(f"case 2: the other client meanwhile: {len(codes)} requests, {codes.count(200)} x 200, "
          f"{len(codes) - codes.count(200)} other, slowest {max(s for _, s in others) * 1000:.0f} ms")


def case_burst(base: str, pid: int, n: int, body: bytes, label: str) -> None:
    """Case 8: `n` parallel posts of `body`; peak and idle RSS of the server."""
    before = rss_mb(pid)
    with Sampler(pid) as s:
        results = parallel(base + "/v1/segment", [body] * n)
    codes = [r[0] for r in results]
    time.sleep(3.0)  # idle
    idle = rss_mb(pid)
    counts = ", ".join(f"{codes.count(c)} x {c}" for c in sorted(set(codes)))
    refused = [r[1] for r in results if r[0] != 200]
    print(f"case 8: {n} x {label}: {counts}; RSS before {before:.0f} MiB, peak {s.peak:.0f} MiB, idle 3 s later "
          f"{idle:.0f} MiB; slowest answer {max(r[1] for r in results):.1f} s, slowest refusal "
          f"{max(refused, default=0):.2f} s")


def admission_cost(checkpoint: str, backend: str) -> None:
    """Microseconds the checks before decoding take per request, in this process: header, plan, ledger, memory
    reservation and the Host/Origin check, for a CamVid JPEG and for the thin PNG (median of 2000)."""
    import statistics

    from dabnet.commands.demo import sample_frames
    from dabnet.commands.serve import answer_bytes, host_refusal
    from dabnet.inference.admission import CostModel, MemoryBudget, WorkLedger
    from dabnet.inference.segmenter import Segmenter
    from dabnet.io.header import decode_peak_bytes, read_header

    seg = Segmenter.from_checkpoint(checkpoint, backend=backend, log=None)
    t0 = time.perf_counter()
    cost = CostModel(seg).calibrate()
    calibrate_s = time.perf_counter() - t0
    ledger, budget = WorkLedger(30.0), MemoryBudget(512 * 2**20)
    for name, data in (("480x360 JPEG", sample_frames()[0].read_bytes()), ("1x16,000,000 PNG", png(16_000_000, 1))):
        times = []
        for _ in range(2000):
            t0 = time.perf_counter()
            host_refusal("127.0.0.1:8000", "http://127.0.0.1:8000", {"localhost", "127.0.0.1", "::1"})
            header = read_header(data, 16_777_216)
            plan = cost.plan(header.height, header.width)
            try:
                ticket = ledger.admit(plan, cost.plan(1, 1))
            except Exception:
                ticket = None
            held = [0]
            budget.take(min(budget.limit, max(decode_peak_bytes(header), answer_bytes(header.pixels, "json"))), held)
            budget.give_back(held)
            if ticket is not None:
                ticket.release()
            times.append(time.perf_counter() - t0)
        print(f"admission cost: {name}: {statistics.median(times) * 1e6:.0f} us a request (median of 2000); plan "
              f"{plan.passes} passes, {plan.seconds:.3g} s")
    print(f"admission cost: calibration at start {calibrate_s * 1000:.0f} ms ({cost.per_pass_s * 1000:.2f} ms a pass, "
          f"{cost.per_pixel_s * 1e9:.0f} ns a pixel)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="dabnet-camvid")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--max-inflight-mb", default="512")
    ap.add_argument("--cases", default="2,8", help="which cases, comma-separated: 2, 8, 8big, cost (in this process)")
    ap.add_argument("--server-args", default="", help="more options for the server, e.g. '--timeout 600 --max-per-client 16'")
    args = ap.parse_args()
    cases = args.cases.split(",")
    if "cost" in cases:
        admission_cost(args.checkpoint, args.backend)
        if cases == ["cost"]:
            return
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "dabnet", "serve", "--checkpoint", args.checkpoint, "--backend", args.backend,
                               "--port", str(port), "--max-inflight-mb", args.max_inflight_mb, *args.server_args.split()])  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, 1200)
        post(base + "/v1/segment", png(480, 360, noise=True))  # warm-up
        print(f"server up: RSS {rss_mb(server.pid):.0f} MiB")
        if "2" in cases:
            case_thin(base)
        if "8" in cases:
            case_burst(base, server.pid, 16, png(4096, 4096), f"{len(png(4096, 4096)) / 1000:.0f} KB 4096x4096 PNG")
        if "8big" in cases:
            big = png(2560, 2560, noise=True)
            case_burst(base, server.pid, 12, big, f"{len(big) / 2**20:.0f} MiB 2560x2560 noise PNG")
        print(f"server high-water mark (VmHWM): {rss_mb(server.pid, 'VmHWM'):.0f} MiB; /healthz: "
              f"{httpx.get(base + '/healthz', timeout=5).json()}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a worker still busy with work nobody waits for
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
