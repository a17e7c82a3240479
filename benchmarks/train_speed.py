"""Training images/s of dabnet's loop (engine.train_one_epoch) with each speed switch, against a
plain eager fp32 PyTorch loop of the same network, measured in one run on this machine.

    python benchmarks/train_speed.py                 # CPU, CamVid-sized 360x480 crops
    python benchmarks/train_speed.py --device cuda --batch 16

Writes docs/TRAIN_SPEED.md (or --out). Each variant is timed `--repeats` times over `--steps`
steps after warm-up; the table gives medians and the ratio to the plain loop.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F

import dabnet
from dabnet.distributed import describe_hardware
from dabnet.engine import train_one_epoch
from dabnet.losses import CrossEntropy
from dabnet.precision import cpu_has_bf16


def _data(batch: int, crop, device, steps: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *crop, generator=g)
    y = torch.randint(0, 11, (batch, *crop), generator=g)
    return [(x, y)] * steps, x.to(device), y.to(device)


def plain_loop(device, batch, crop, steps, repeats, warmup) -> List[float]:
    """The textbook loop: eager fp32, contiguous tensors, Adam, cross-entropy."""
    torch.manual_seed(0)
    model = dabnet.create_model("dabnet", 11).to(device).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    _, x, y = _data(batch, crop, device, steps)
    rates = []
    for r in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y, ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
        _sync(device)
        if r >= warmup:
            rates.append(batch * steps / (time.perf_counter() - t0))
    return rates


def our_loop(device, batch, crop, steps, repeats, warmup, precision="fp32", channels_last=False, compile=False) -> List[float]:
    """engine.train_one_epoch with the given switches (what `dabnet train` runs)."""
    torch.manual_seed(0)
    model = dabnet.create_model("dabnet", 11).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile else model
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    batches, _, _ = _data(batch, crop, device, steps)
    loss_fn = CrossEntropy(None).to(device)
    rates = []
    for r in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        res = train_one_epoch(fwd, batches, loss_fn, opt, sched, device, precision, scaler, 0.0, channels_last)
        _sync(device)
        if r >= warmup:
            rates.append(res["images"] / (time.perf_counter() - t0))
    return rates


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


TITLE = "# Training speed: dabnet's loop vs a plain PyTorch loop"


def write_section(path: Path, hardware: str, lines: List[str]) -> None:
    """Put this machine's table into `path`, keeping the other machines' sections (CPUs differ: a
    bf16 or compile win on one is a loss on another)."""
    sections = {}
    if path.exists():
        for chunk in path.read_text().split("\n## ")[1:]:
            head, _, body = chunk.partition("\n")
            sections[head.strip()] = body.strip("\n")
    sections[hardware] = "\n".join(lines[1:]).strip("\n")
    text = "\n\n".join([TITLE, "One section per machine, each generated on it by the command it names."]
                       + [f"## {h}\n\n{b}" for h, b in sections.items()])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, nargs=2, default=(360, 480))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variants", nargs="*", default=None, help="subset of the variant names (eager, bf16, 'bf16 + compile', ...)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "TRAIN_SPEED.md"))
    args = ap.parse_args()
    device = torch.device(args.device)
    crop = tuple(args.crop)
    variants: Dict[str, dict] = {
        "eager": {},
        "channels_last": {"channels_last": True},
        "bf16": {"precision": "bf16"},
        "compile": {"compile": True},
    }
    if device.type == "cpu" and cpu_has_bf16():
        variants["bf16 + compile"] = {"precision": "bf16", "compile": True}
    if device.type == "cuda":
        variants["fp16 + channels_last"] = {"precision": "fp16", "channels_last": True}
        variants["bf16 + channels_last + compile"] = {"precision": "bf16", "channels_last": True, "compile": True}
    if args.variants:
        variants = {k: v for k, v in variants.items() if k in args.variants}
    common = (device, args.batch, crop, args.steps, args.repeats, args.warmup)
    # Interleave: the plain loop is timed before and after ours, so drift on a noisy machine shows.
    plain = plain_loop(*common)
    rows = []
    for name, kw in variants.items():
        ours = our_loop(*common, **kw)
        rows.append((name, kw, ours))
        print(f"{name:<32} {statistics.median(ours):7.2f} img/s (plain {statistics.median(plain):.2f})")
    plain += plain_loop(*common)
    base = statistics.median(plain)
    hardware = describe_hardware(device)
    lines = [
        f"## {hardware}",
        "",
        f"`python benchmarks/train_speed.py --device {args.device} --batch {args.batch} --crop {crop[0]} {crop[1]} "
        f"--steps {args.steps} --repeats {args.repeats}`, "
        f"torch {torch.__version__}. DABNet, 11 classes, Adam, batch {args.batch} at {crop[0]}x{crop[1]}, {args.steps} steps "
        f"per timing, {args.repeats} timings per variant after {args.warmup} warm-up; the plain eager fp32 loop was timed "
        "before and after all variants and its median is the baseline.",
        "",
        "| loop | images/s (median) | all timings | vs plain eager fp32 |",
        "|---|---:|---|---:|",
        f"| plain PyTorch loop, eager fp32 | {base:.2f} | {', '.join(f'{v:.2f}' for v in plain)} | 1.00x |",
    ]
    for name, _, r in rows:
        lines.append(f"| dabnet loop, {name} | {statistics.median(r):.2f} | {', '.join(f'{v:.2f}' for v in r)} | {statistics.median(r) / base:.2f}x |")
    write_section(Path(args.out), hardware, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
