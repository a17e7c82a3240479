"""The v4 recipe's proxy on the held-out drive 0006R0: the v2 weights (trained without that drive) trained on
for the same epochs, the same seed and a fresh poly schedule, plain or distilled from v2's own multi-scale +
flip ensemble, with weight EMA. EMA does not feed back into training, so one distilled run with EMA on gives
two arms: its trained weights (B) and their average (C).

    python benchmarks/distill_proxy.py run A --runs /work/runs        # train (or resume) an arm in the foreground
    python benchmarks/distill_proxy.py run BC --runs /work/runs
    python benchmarks/distill_proxy.py run D --runs /work/runs
    python benchmarks/distill_proxy.py report --runs /work/runs       # docs/reports/DISTILL_PROXY.md + distill_proxy.png
    python benchmarks/distill_proxy.py run v4 --runs /work/runs       # the v4 run, with the recipe the rule chose

`run` needs the v2 weights at RUNS/v2.safetensors (`git show da77c38:dabnet/weights/dabnet-camvid.safetensors`);
`run v4` needs every arm at epoch 100 and copies the bundled v3 weights to RUNS/v3.safetensors (its start and
its teacher, kept by path: the bundled name will mean v4 once v4 ships).
Arms run in the background as `nohup nice -n 10 python benchmarks/distill_proxy.py run ARM --runs RUNS >>
RUNS/proxy_ARM/log.txt 2>&1 &`; the same command resumes an arm exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
ENSEMBLE = [1.0, 1.25, 1.5, 1.75, 2.0]  # the teacher's scales, with flips: v2's best ensemble on 0006R0
COMMON = ["epochs=100", "lr=2e-4", "warmup_iters=110", "val_every=5", "keep_every=5"]
ARMS: Dict[str, List[str]] = {
    "A": [],
    "BC": ["distill_from={v2}", f"distill_scales=[{', '.join(map(str, ENSEMBLE))}]", "distill_flip=true", "distill_weight=2",
           "distill_temperature=1", "distill_cache={runs}/teacher_v2_ensemble", "ema=0.998"],
}
# Added on 2026-12-07 with A at epoch 75 and BC at 49, every arm then below the weights it started from, the
# drop largest at the peak learning rate: C's recipe at a quarter of the peak rate (same teacher maps).
ARMS["D"] = [*ARMS["BC"], "lr=5e-5"]
# Written on 2026-12-06, with the arms at epoch 8 of 100 (A) and 0 (BC), before any result could sway them.
RULES = [
    "- **The v4 recipe** is the arm with the highest mean held-out mIoU over the last five evaluations (epochs "
    "80-100). An arm within 0.2 points of a simpler one loses to it (A is simpler than B, B than C): a lever "
    "must pay for itself.",
    "- **Arm D** (C at lr 5e-5) was added on 2026-12-07, after the first 75 epochs of A and 49 of B and C had been "
    "seen; it comes last in that order, so it must beat every other arm by 0.2 points to be chosen.",
    "- **Do no harm** (written on 2026-12-07, before any arm reached epoch 80): if the chosen arm's mean is below the "
    "start's figure (v2, single scale, on 0006R0), no recipe tried improves on the weights it starts from; then no v4 "
    "run is started, v3 stays bundled, and the issue says so.",
    "- **What v4 ships**: the weights the v4 run saves at its last epoch (with EMA in the recipe, that epoch's "
    "average), chosen by nothing else: with every labelled CamVid frame trained on, no figure is left to choose by.",
]
FINAL = [80, 85, 90, 95, 100]  # the last five evaluations, which the rule averages
MARGIN = 0.2  # points a lever must add over the simpler arm
SIMPLEST_FIRST = ["A: plain", "B: distilled", "C: distilled + EMA", "D: C at lr 5e-5"]
# What each table column reads: (arm's run folder, metrics key).
COLUMNS = {
    "A: plain": ("proxy_A", "holdout_miou"),
    "B: distilled": ("proxy_BC", "holdout_trained_miou"),
    "C: distilled + EMA": ("proxy_BC", "holdout_miou"),
    "D: C at lr 5e-5": ("proxy_D", "holdout_miou"),
}
# Which arm's run each column's recipe is.
RUN_OF = {name: folder.removeprefix("proxy_") for name, (folder, _) in COLUMNS.items()}


def overriding(common: List[str], own: List[str]) -> List[str]:
    """`common` without the options that `own` sets, then `own`: each option once in a command."""
    keys = {s.split("=", 1)[0] for s in own}
    return [s for s in common if s.split("=", 1)[0] not in keys] + own


def train_argv(arm: str, runs: Path) -> List[str]:
    """The `dabnet train` command of an arm."""
    sets = [s.format(v2=runs / "v2.safetensors", runs=runs) for s in ["init_from={v2}", *overriding(COMMON, ARMS[arm])]]
    return ["dabnet", "train", "--config", "camvid_holdout", "--out", str(runs / f"proxy_{arm}")] + sum((["--set", s] for s in sets), [])


def history(folder: Path) -> List[dict]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def table(runs: Path) -> Tuple[List[str], Dict[str, Dict[int, float]]]:
    """Markdown rows of held-out mIoU per evaluated epoch, and the curves behind them."""
    curves: Dict[str, Dict[int, float]] = {}
    for name, (folder, key) in COLUMNS.items():
        curves[name] = {h["epoch"]: 100 * h[key] for h in history(runs / folder) if h.get(key) is not None}
    epochs = sorted(set().union(*curves.values()))
    others = [name.split(":")[0] for name in list(COLUMNS)[1:]]
    rows = ["| epoch | " + " | ".join(COLUMNS) + " | " + " | ".join(f"{o} - A" for o in others) + " |",
            "|---:|" + "---:|" * (2 * len(COLUMNS) - 1)]  # fmt: skip
    for e in epochs:
        vals = [curves[n].get(e) for n in COLUMNS]
        cells = ["–" if v is None else f"{v:.2f}" for v in vals]
        diffs = ["–" if vals[0] is None or v is None else f"{v - vals[0]:+.2f}" for v in vals[1:]]
        rows.append(f"| {e} | " + " | ".join(cells + diffs) + " |")
    return rows, curves


def choose(curves: Dict[str, Dict[int, float]]) -> Optional[Tuple[str, Dict[str, float]]]:
    """The arm the written rule picks (and each arm's mean over FINAL), or None before every arm has all of FINAL:
    the best mean, unless an arm earlier in SIMPLEST_FIRST is within MARGIN of it; then the first such arm."""
    if not all(all(e in curves.get(name, {}) for e in FINAL) for name in SIMPLEST_FIRST):
        return None
    means = {name: statistics.mean(curves[name][e] for e in FINAL) for name in SIMPLEST_FIRST}
    best = max(means.values())
    return next(name for name in SIMPLEST_FIRST if means[name] >= best - MARGIN), means


def harms(mean: float, start: Optional[float]) -> bool:
    """Whether the chosen arm's mean over FINAL is below the start's figure (the rule 'do no harm')."""
    return start is not None and mean < start


def v4_argv(arm: str, runs: Path) -> List[str]:
    """The v4 run: the chosen arm's recipe from the bundled v3 weights on all 468 train+val frames, the teacher (where
    the recipe has one) v3's own ensemble; the weights it ships are its last epoch's (RULES)."""
    v3 = runs / "v3.safetensors"
    recipe = [s for s in ARMS[RUN_OF[arm]] if arm != "B: distilled" or not s.startswith("ema=")]  # B: BC's trained weights
    recipe = [s.format(v2=v3, runs=runs).replace("teacher_v2_ensemble", "teacher_v3_ensemble") for s in recipe]
    sets = [f"init_from={v3}", *overriding([*COMMON[:3], "val_every=10", "keep_every=10"], recipe)]
    return ["dabnet", "train", "--config", "camvid_trainval", "--out", str(runs / "camvid_v4")] + sum((["--set", s] for s in sets), [])


def start_figures(runs: Path, data_root: Optional[Path] = None) -> Optional[Dict[str, object]]:
    """Single-scale 0006R0 mIoU and per-class IoU (percent) of the arms' common start (RUNS/v2.safetensors, eager
    fp32), the figures each arm is measured against before it trains; kept in RUNS/proxy_start.json beside the
    weights' digest. The data are `data_root`, by default the arms' config's (relative to the repository)."""
    import hashlib

    from dabnet.commands.evaluate import run_evaluation
    from dabnet.config import EvalConfig, TrainConfig, build_config

    v2, kept = runs / "v2.safetensors", runs / "proxy_start.json"
    if not v2.is_file():
        return None
    digest = hashlib.sha256(v2.read_bytes()).hexdigest()
    known = json.loads(kept.read_text()) if kept.is_file() else {}
    if known.get("sha256") == digest and "iou" in known:  # a file kept before the per-class figures: evaluated again
        return known
    cfg = build_config(TrainConfig, "camvid_holdout")
    root = data_root or (Path(cfg.data_root) if Path(cfg.data_root).is_absolute() else REPO / cfg.data_root)
    if not root.is_dir():
        return None
    ev = EvalConfig(checkpoint=str(v2), data_root=str(root), split=cfg.train_split, sequences=list(cfg.holdout), workers=1, backend="eager")
    res = run_evaluation(ev, log=lambda *a: None)
    iou = [None if v is None else 100 * v for v in res["per_class_iou"].values()]  # class order, None: absent class
    figures = {"sha256": digest, "miou": 100 * res["miou"], "iou": iou}
    kept.write_text(json.dumps(figures))
    return figures


def start_miou(runs: Path, data_root: Optional[Path] = None) -> Optional[float]:
    """The start's single-scale 0006R0 mIoU (`start_figures`), or None where it cannot be evaluated."""
    figures = start_figures(runs, data_root)
    return None if figures is None else float(figures["miou"])


def per_class_rows(runs: Path, start_iou: List[Optional[float]]) -> List[str]:
    """Markdown rows of per-class held-out IoU: the start's, and each column's at its last evaluation with the change
    against the start (columns whose run records per-class figures: not B, whose trained weights give only mIoU)."""
    from dabnet.data.classes import CAMVID_CLASSES

    last: Dict[str, Tuple[int, List[Optional[float]]]] = {}
    for name, (folder, key) in COLUMNS.items():
        per_class = key.replace("miou", "iou")
        rows = [h for h in history(runs / folder) if h.get(per_class) is not None]
        if rows:
            last[name] = (rows[-1]["epoch"], [None if v is None else 100 * v for v in rows[-1][per_class]])
    if not last:
        return []
    out = ["| class | start (v2) | " + " | ".join(f"{n} (epoch {e})" for n, (e, _) in last.items()) + " |",
           "|---|---:|" + "---:|" * len(last)]  # fmt: skip
    for c, cls in enumerate(CAMVID_CLASSES):
        s0 = start_iou[c] if c < len(start_iou) else None
        cells = []
        for _, iou in last.values():
            v = iou[c] if c < len(iou) else None
            cells.append("–" if v is None else f"{v:.1f}" + ("" if s0 is None else f" ({v - s0:+.1f})"))
        out.append(f"| {cls} | {'–' if s0 is None else f'{s0:.1f}'} | " + " | ".join(cells) + " |")
    return out


def seconds_per_epoch(folder: Path) -> Optional[float]:
    h = history(folder)
    return statistics.median(r["seconds"] for r in h) if h else None


def report(runs: Path, out: Path) -> str:
    import torch

    from dabnet.util.hardware import describe_hardware

    out.parent.mkdir(parents=True, exist_ok=True)
    rows, curves = table(runs)
    figures = start_figures(runs)
    start = None if figures is None else float(figures["miou"])
    if start is not None:  # epoch 0: every arm begins at the same weights
        rows.insert(2, "| 0 (v2, the start) | " + " | ".join([f"{start:.2f}"] * len(COLUMNS) + ["–"] * (len(COLUMNS) - 1)) + " |")
    a_epochs = {n: max(c) if c else 0 for n, c in curves.items()}
    lines = [
        "# The v4 recipe's proxy: distillation and EMA on the held-out drive 0006R0",
        "",
        f"Generated by `python benchmarks/distill_proxy.py report --runs {runs}` from the arms' `metrics.jsonl` "
        f"(machine of the report: {describe_hardware(torch.device('cpu'))}). Each arm starts from the v2 weights "
        "(trained without drive 0006R0; in git at da77c38) and trains the `camvid_holdout` recipe (367 frames of "
        "0001TP and 0016E5, 360x480 crops, scales 0.75-2, flips, batch 16, Adam, ENet weights c=1.10) with "
        f"`{' '.join(COMMON)}` and seed 0: the same frames, crops and order in every arm. Single-scale mIoU on "
        "all 101 frames of 0006R0, every 5 epochs.",
        "",
        f"- A: plain continuation. `{shlex.join(train_argv('A', runs))}`",
        f"- B and C: distilled from v2's own ensemble (scales {ENSEMBLE} + flips, probabilities averaged), weight 2, "
        "temperature 1, with weight EMA 0.998: B is the run's trained weights (`holdout_trained_miou`), C their "
        f"average (`holdout_miou`, what the run saves). `{shlex.join(train_argv('BC', runs))}`",
        "- D: C's recipe at a quarter of the peak learning rate (5e-5), the same teacher maps; its EMA average (added "
        f"later, see the rules). `{shlex.join(train_argv('D', runs))}`",
        "",
        "Last evaluated epoch: " + ", ".join(f"{n} {e}" for n, e in a_epochs.items()) + " of 100.",
        "",
        *rows,
    ]
    means = []
    for name in list(COLUMNS)[1:]:
        common = [e for e in curves[name] if e in curves["A: plain"]]
        if common:
            d = statistics.mean(curves[name][e] - curves["A: plain"][e] for e in common)
            means.append(f"{name} {d:+.2f} over the {len(common)} common evaluations")
    if means:
        lines += ["", "Mean difference to A: " + "; ".join(means) + "."]
    if start is not None:
        last = {n: c[max(c)] for n, c in curves.items() if c}
        lines += ["", f"Against the start ({start:.2f}, the v2 weights before any of these epochs): "
                      + "; ".join(f"{n} {v - start:+.2f} at epoch {max(curves[n])}" for n, v in last.items())
                      + ". The rule 'do no harm' below holds the chosen arm's final mean against this figure."]  # fmt: skip
        classes = per_class_rows(runs, figures["iou"])
        if classes:
            lines += ["", "Per class (IoU %, single scale on 0006R0), each arm at its last evaluation, in brackets its "
                          "change against the start:", "", *classes]  # fmt: skip
    secs = {arm: seconds_per_epoch(runs / f"proxy_{arm}") for arm in ARMS}
    if secs["A"] and secs["BC"]:
        lines += ["", f"Median seconds of training per epoch: A {secs['A']:.0f}, BC {secs['BC']:.0f} "
                      f"({secs['BC'] / secs['A']:.2f}x; the arms shared the machine's 2 cores while both ran)."]  # fmt: skip
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=100)
        for name, c in curves.items():
            if c:
                ax.plot(sorted(c), [c[e] for e in sorted(c)], marker=".", label=name)
        if start is not None:
            ax.axhline(start, color="grey", linestyle="--", linewidth=1, label="start (v2)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("0006R0 mIoU (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out.parent / "distill_proxy.png")
        plt.close(fig)
        lines += ["", "![held-out mIoU per arm](distill_proxy.png)"]
    except ImportError:
        pass
    decided = choose(curves)
    if decided:
        arm, arm_means = decided
        means_text = "Mean held-out mIoU over epochs " + ", ".join(map(str, FINAL)) + ": " + "; ".join(f"{n} {m:.2f}" for n, m in arm_means.items())
        if harms(arm_means[arm], start):
            lines += ["", "## Decision: **no v4 run**", "", f"{means_text}. The rule picks {arm}, whose mean is below the start "
                      f"({start:.2f}): by the rule below, no v4 run is started and v3 stays bundled."]  # fmt: skip
        else:
            lines += ["", f"## Decision: **{arm}**", "", f"{means_text}. By the rule below, v4 trains {arm}'s recipe: "
                      f"`{shlex.join(v4_argv(arm, runs))}`"]  # fmt: skip
    lines += ["", "## Rules, written before the arms finished", "", *RULES]
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["run", "report", "command"])
    ap.add_argument("arm", nargs="?", choices=[*ARMS, "v4"])
    ap.add_argument("--runs", type=Path, default=Path("/work/runs"))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "reports" / "DISTILL_PROXY.md")
    args = ap.parse_args(argv)
    if args.action == "report":
        print(report(args.runs, args.out))
        return
    if args.arm is None:
        ap.error(f"{args.action} needs an arm: {', '.join(ARMS)}")
    if args.arm == "v4":
        decided = choose(table(args.runs)[1])
        if decided is None:
            sys.exit("the proxy has not decided yet: every arm needs held-out figures at epochs " + ", ".join(map(str, FINAL)))
        start = start_miou(args.runs)
        if harms(decided[1][decided[0]], start):
            sys.exit(f"the proxy's choice, {decided[0]}, ends below its start ({decided[1][decided[0]]:.2f} < {start:.2f}): "
                     "by the written rule no v4 run is started (docs/reports/DISTILL_PROXY.md)")  # fmt: skip
        v3 = args.runs / "v3.safetensors"
        if args.action == "run" and not v3.exists():
            import shutil

            shutil.copyfile(REPO / "dabnet" / "weights" / "dabnet-camvid.safetensors", v3)  # v3 by path: the name will be v4's
        argv_ = v4_argv(decided[0], args.runs)
    else:
        argv_ = train_argv(args.arm, args.runs)
    if args.action == "command":
        print(" ".join(argv_))
        return
    if args.arm != "v4" and not (args.runs / "v2.safetensors").is_file():
        sys.exit(f"{args.runs / 'v2.safetensors'} is missing: git show da77c38:dabnet/weights/dabnet-camvid.safetensors > it")
    os.execvp(argv_[0], argv_)


if __name__ == "__main__":
    main()
