"""Training images/s of dabnet's loop (engine.train_one_epoch) with each speed switch, against a
plain eager fp32 PyTorch loop of the same network, measured in one run on this machine.

    python benchmarks/train_speed.py                 # CPU, CamVid-sized 360x480 crops
    python benchmarks/train_speed.py --device cuda --batch 16
    python benchmarks/train_speed.py --profile       # and the top operators of one step, eager vs fused

Writes docs/reports/TRAIN_SPEED.md (or --out). Each variant is timed `--repeats` times over `--steps`
steps after warm-up (which also compiles the fused kernels); the table gives medians and the ratio
to the plain loop.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F

import dabnet
from dabnet.models.fused import set_fused
from dabnet.training import Callbacks
from dabnet.training.distill import Distill
from dabnet.training.engine import train_one_epoch
from dabnet.training.losses import CrossEntropy
from dabnet.util.hardware import cpu_has_bf16, describe_hardware, isa_caps
from dabnet.util.precision import autocast

from benchlib import write_section


def _data(batch: int, crop, device, steps: int, soft: bool = False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *crop, generator=g)
    y = torch.randint(0, 11, (batch, *crop), generator=g)
    if soft:  # a teacher's uint8 probabilities, as the distillation loader gives them
        p = torch.rand(batch, 11, *crop, generator=g) ** 4
        return [(x, y, (p / p.sum(1, keepdim=True) * 255).round().to(torch.uint8))] * steps, x.to(device), y.to(device)
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


def our_loop(device, batch, crop, steps, repeats, warmup, precision="fp32", channels_last=False, compile=False, fused=False,
             distill=False) -> List[float]:  # fmt: skip
    """engine.train_one_epoch with the given switches (what `dabnet train` runs); `distill`: with the distillation
    callback's loss on teacher maps that come with each batch (the loader's work on them is not timed here)."""
    torch.manual_seed(0)
    model = dabnet.create_model("dabnet", 11).to(device).train()
    set_fused(model, fused)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile else model
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    batches, _, _ = _data(batch, crop, device, steps, soft=distill)
    loss_fn = CrossEntropy(None, fused=fused).to(device)
    callbacks = Callbacks([Distill(None, "synthetic", [1.0], False, 1.0, 1.0, Path("."), device, fused=fused)] if distill else [])
    rates = []
    for r in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        res = train_one_epoch(fwd, batches, loss_fn, opt, sched, device, precision, scaler, 0.0, channels_last, callbacks=callbacks)
        _sync(device)
        if r >= warmup:
            rates.append(res["images"] / (time.perf_counter() - t0))
    return rates


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_step(device, batch, crop, precision: str, fused: bool, rows: int) -> List[str]:
    """A markdown table of the `rows` operators with the most self time in one training step (after two
    warm-up steps), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = dabnet.create_model("dabnet", 11).to(device).train()
    set_fused(model, fused)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = CrossEntropy(None, fused=fused).to(device)
    _, x, y = _data(batch, crop, device, 1)

    def step():
        with autocast(device, precision):
            logits = model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(), step()
    _sync(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])) as prof:
        step()
        _sync(device)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    out = [f"One step, {precision}, fused={'true' if fused else 'false'}: {total / 1e6:.2f} s of CPU time.", "",
           "| operator | self time (s) | share | calls |", "|---|---:|---:|---:|"]  # fmt: skip
    for e in events[:rows]:
        name = "compiled kernel (fused)" if e.key.startswith("## Call CompiledFxGraph") else e.key
        out.append(f"| `{name}` | {e.self_cpu_time_total / 1e6:.3f} | {100 * e.self_cpu_time_total / total:.1f}% | {e.count} |")
    return out


TITLE = "# Training speed: dabnet's loop vs a plain PyTorch loop"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, nargs=2, default=(360, 480))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variants", nargs="*", default=None, help="subset of the variant names (eager, bf16, 'bf16 + fused', ...)")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS", help="add the top ROWS operators of one step, eager vs fused")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "reports" / "TRAIN_SPEED.md"))
    args = ap.parse_args()
    capped = bool(isa_caps())
    if capped and not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        # Inductor's cache does not tell kernels compiled under the cap from those compiled without it on this
        # machine: reused, they wrote garbage (fused) or crashed (compile). A capped run compiles afresh.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dabnet-inductor-capped-")
    device = torch.device(args.device)
    crop = tuple(args.crop)
    # Since the fused kernels became training's default, the other rows switch them off to show each
    # switch on its own; "fused" rows are what `dabnet train` runs.
    bf16_ok = device.type == "cuda" or cpu_has_bf16()
    variants: Dict[str, dict] = {
        "eager, fused=false": {},
        "channels_last, fused=false": {"channels_last": True},
        "compile, fused=false": {"compile": True},
        "fused": {"fused": True},
        "fused + distill": {"fused": True, "distill": True},
        "bf16, fused=false": {"precision": "bf16"},
    }
    if bf16_ok:
        variants["bf16 + fused"] = {"precision": "bf16", "fused": True}
        variants["bf16 + fused + distill"] = {"precision": "bf16", "fused": True, "distill": True}
    if device.type == "cuda":
        variants["fp16 + channels_last, fused=false"] = {"precision": "fp16", "channels_last": True}
        variants["bf16 + channels_last + fused"] = {"precision": "bf16", "channels_last": True, "fused": True}
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
        f"Generated on {hardware} by `python benchmarks/train_speed.py --device {args.device} --batch {args.batch} --crop {crop[0]} {crop[1]} "
        f"--steps {args.steps} --repeats {args.repeats}{f' --profile {args.profile}' if args.profile else ''}"
        f"{''.join(f' {shlex.quote(v)}' for v in ([] if not args.variants else ['--variants', *args.variants]))}`, "
        f"torch {torch.__version__}. DABNet, 11 classes, Adam, batch {args.batch} at {crop[0]}x{crop[1]}, {args.steps} steps "
        f"per timing, {args.repeats} timings per variant after {args.warmup} warm-up; the plain eager fp32 loop was timed "
        "before and after all variants and its median is the baseline."
        + (" Capped (an AVX2-only CPU emulated): compiled into an inductor cache of its own, as the cap needs." if capped else ""),
        "",
        "| loop | images/s (median) | all timings | vs plain eager fp32 |",
        "|---|---:|---|---:|",
        f"| plain PyTorch loop, eager fp32 | {base:.2f} | {', '.join(f'{v:.2f}' for v in plain)} | 1.00x |",
    ]
    for name, _, r in rows:
        lines.append(f"| dabnet loop, {name} | {statistics.median(r):.2f} | {', '.join(f'{v:.2f}' for v in r)} | {statistics.median(r) / base:.2f}x |")
    medians = {name: statistics.median(r) for name, _, r in rows}
    pairs = [(p, fused, plain_) for p, fused, plain_ in (("fp32", "fused", "eager, fused=false"), ("bf16", "bf16 + fused", "bf16, fused=false"))
             if fused in medians and plain_ in medians]  # fmt: skip
    if pairs:
        lines += ["", "The fused kernels (training's default) against the same loop without them: "
                  + ", ".join(f"{p} {medians[f] / medians[e]:.2f}x" for p, f, e in pairs) + " (ratios of the medians above)."]
    distilled = [(f, f"{f} + distill") for f in ("fused", "bf16 + fused") if f in medians and f"{f} + distill" in medians]
    if distilled:
        lines += ["", "A distilled step (the teacher's maps in the batch, the KL term added to the loss) against the same "
                  "step without it: " + ", ".join(f"{f}: {medians[f] / medians[d]:.2f}x the time" for f, d in distilled) + "."]
    if args.profile:
        precision = "bf16" if bf16_ok else "fp32"
        for fused in (False, True):
            lines += [""] + profile_step(device, args.batch, crop, precision, fused, args.profile)
    write_section(Path(args.out), TITLE, hardware, lines[1:])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
