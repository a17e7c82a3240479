"""What checking every cache read by content (`dabnet.util.store`) costs: a warm start of the bundled model through
the OpenVINO cache (`Segmenter.from_checkpoint('dabnet-camvid')` and its first predict), and one teacher map load,
each with the check and without it (`Store._verify` made a no-op: the same reads, no size or CRC-32 comparison).

    python benchmarks/cache_check_cost.py --rounds 7 --maps 40

Warm starts run in fresh processes (the cache filled by a first one), alternating the two modes; the time inside
the CRC-32 of those reads is counted as well, which the noise of whole starts on a busy machine cannot hide.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str) -> None:
    """One warm start in this process; prints its timings as JSON."""
    import dabnet.util.store as store

    spent = {"crc_s": 0.0, "bytes": 0}
    real = store.content_digest

    def counted(data):
        t = time.perf_counter()
        out = real(data)
        spent["crc_s"] += time.perf_counter() - t
        spent["bytes"] += len(data)
        return out

    store.content_digest = counted
    if mode == "off":
        store.Store._verify = staticmethod(lambda *a: None)
    from dabnet import Segmenter
    from dabnet.commands.demo import sample_frames
    from dabnet.io.images import read_image

    image = read_image(sample_frames()[0])
    t0 = time.perf_counter()
    seg = Segmenter.from_checkpoint("dabnet-camvid", log=None)
    seg.predict(image)
    total = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "total_s": total, "backend": seg.backend, **spent}))


def warm_starts(rounds: int) -> dict:
    env = {**os.environ, "DABNET_CACHE": tempfile.mkdtemp(prefix="dabnet-cost-"), "PYTHONPATH": str(ROOT)}
    run = lambda mode: json.loads(subprocess.run([sys.executable, __file__, "--child", mode], env=env, check=True,  # noqa: E731
                                                 capture_output=True, text=True).stdout.splitlines()[-1])  # fmt: skip
    filled = run("on")  # the first start converts, quantizes and compiles; every later one is warm
    results = {"on": [], "off": []}
    for _ in range(rounds):
        for mode in ("on", "off"):
            results[mode].append(run(mode))
    on, off = ([r["total_s"] for r in results[m]] for m in ("on", "off"))
    crc = [r["crc_s"] for r in results["on"]]
    return {"backend": filled["backend"], "cold_s": filled["total_s"], "warm_on_s": statistics.median(on),
            "warm_off_s": statistics.median(off), "crc_s": statistics.median(crc), "bytes_checked": results["on"][0]["bytes"],
            "crc_share": statistics.median(crc) / statistics.median(on), "on": on, "off": off}  # fmt: skip


def map_loads(maps: int, rounds: int) -> dict:
    """Per-map cost with CamVid-sized maps (360x480 frames: 180x240x11 uint8) in a TeacherCache."""
    import numpy as np

    import dabnet.util.store as store
    from dabnet.training.distill import TeacherCache

    folder = Path(tempfile.mkdtemp(prefix="dabnet-maps-"))
    frames = []
    for i in range(maps):
        frames.append(folder / f"frame{i}.bin")
        frames[-1].write_bytes(os.urandom(64))
    cache = TeacherCache(folder / "cache", {"classes": 11, "scales": [1.0], "flip": False, "stride": 2}, "none")
    cache.index(frames)
    rng = np.random.default_rng(0)
    for i in range(maps):
        cache.store_map(i, rng.integers(0, 256, (180, 240, 11), dtype=np.uint8))
    image = np.zeros((360, 480, 3), np.uint8)
    paths = [cache.store.folder(name) / "map.npy" for name in cache.names]
    real_verify = store.Store.__dict__["_verify"]  # the staticmethod itself

    def one_pass(fn) -> float:
        t = time.perf_counter()
        for i in range(maps):
            fn(i)
        return (time.perf_counter() - t) / maps

    unchecked = staticmethod(lambda *a: None)
    real_crc, in_crc = store.content_digest, []

    def counted(data):  # the CRC-32 as the check runs it: on bytes just read, not on a buffer hot in the cache
        t = time.perf_counter()
        out = real_crc(data)
        in_crc.append(time.perf_counter() - t)
        return out

    times = {"old": [], "on": [], "off": []}
    for _ in range(rounds):  # interleaved, so that the machine's drift falls on each alike
        times["old"].append(one_pass(lambda i: np.load(paths[i])))  # what the old cache did: np.load, nothing checked
        store.content_digest = counted
        times["on"].append(one_pass(lambda i: cache.load(i, image)))
        store.content_digest = real_crc
        store.Store._verify = unchecked
        times["off"].append(one_pass(lambda i: cache.load(i, image)))
        store.Store._verify = real_verify
    old, on, off = (statistics.median(times[k]) for k in ("old", "on", "off"))
    return {"map_bytes": paths[0].stat().st_size, "np_load_s": old, "load_on_s": on, "load_off_s": off,
            "crc_s": statistics.median(in_crc)}


def sample_load(rounds: int) -> dict:
    """One training sample of a distilled CamVid run (decode, the camvid config's augmentation, the map) on a
    bundled 480x360 frame, for scale."""
    import numpy as np

    from dabnet.commands.demo import sample_frames
    from dabnet.config import TrainConfig, build_config
    from dabnet.data.transforms import TrainTransform
    from dabnet.io.images import read_image

    cfg = build_config(TrainConfig, "camvid")
    path = sample_frames()[0]
    image = read_image(path)
    soft = np.random.default_rng(0).integers(0, 256, ((image.shape[0] + 1) // 2, (image.shape[1] + 1) // 2, 11), dtype=np.uint8)
    mask = np.zeros(image.shape[:2], np.uint8)
    tf = TrainTransform(crop_size=tuple(cfg.crop_size), scales=tuple(cfg.scales), flip=True)
    times = []
    for i in range(rounds):
        t = time.perf_counter()
        tf(read_image(path), mask, np.random.default_rng(i), soft=soft)
        times.append(time.perf_counter() - t)
    return {"frame": f"{image.shape[1]}x{image.shape[0]}", "sample_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["on", "off"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--maps", type=int, default=40)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    maps = map_loads(args.maps, args.rounds)
    sample = sample_load(max(args.rounds, 10))
    extra = maps["load_on_s"] - maps["load_off_s"]
    print(f"teacher map ({maps['map_bytes']} bytes): old np.load {1e6 * maps['np_load_s']:.0f} us; store load checked "
          f"{1e6 * maps['load_on_s']:.0f} us, unchecked {1e6 * maps['load_off_s']:.0f} us (the check: {1e6 * extra:.0f} us, its "
          f"CRC-32 {1e6 * maps['crc_s']:.0f} us); a distilled training sample ({sample['frame']}, decode + augment + map) "
          f"{1e3 * sample['sample_s']:.1f} ms: the check is {100 * extra / sample['sample_s']:.2f}% of it")  # fmt: skip
    warm = warm_starts(args.rounds)
    print(f"warm start ({warm['backend']}; cold {warm['cold_s']:.1f} s): median {warm['warm_on_s']:.3f} s checked, "
          f"{warm['warm_off_s']:.3f} s unchecked, fastest {min(warm['on']):.3f} s and {min(warm['off']):.3f} s ({args.rounds} fresh "
          f"processes each); CRC-32 of the "
          f"{warm['bytes_checked'] / 1e6:.2f} MB read: {1e3 * warm['crc_s']:.2f} ms = {100 * warm['crc_share']:.2f}% of the warm start")  # fmt: skip
    print(json.dumps({"maps": maps, "sample": sample, "warm": warm}))


if __name__ == "__main__":
    main()
