"""docs/reports/CAMVID_RECIPES.md: every CamVid training run, judged on a drive it never trained on.

    python benchmarks/camvid_recipes.py /work/runs/camvid_holdout_bf16 /work/runs/camvid_old_recipe_holdout ...

For each run folder (written by `dabnet train`) it reads config.yaml, metrics.jsonl and last.pth and
writes one row: recipe, epochs run of the schedule, hardware, wall time, the held-out-drive (proxy)
mIoU (best epoch and last epoch), and the in-sequence val mIoU (only when val was not trained on).
Equal-epoch comparisons (the bundling rule of the CamVid weights) come from the same histories:
`--compare-at N` adds each run's proxy mIoU at epoch N, and `--pair A B` (repeatable) tabulates two
runs at every epoch both validated on the held-out drive. Per class: each run's held-out IoU at its best
held-out epoch, beside each class's share of the held-out drive's pixels (`--data-root`), since a class
the drive barely holds (Bicyclist: 0.07% of 0006R0's pixels) moves the proxy mIoU by its noise alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml
from benchlib import describe_recipe, pct

import dabnet
from dabnet.commands.demo import bundled_weights_available
from dabnet.data import get_dataset

ROOT = Path(__file__).resolve().parents[1]


def _history(folder: Path) -> List[Dict[str, Any]]:
    metrics = folder / "metrics.jsonl"  # absent until a first epoch ends
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []


def best_holdout(history: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The epoch record with the highest held-out mIoU (the one best.pth holds), or None before any."""
    scored = [h for h in history if h.get("holdout_miou") is not None]
    return max(scored, key=lambda h: h["holdout_miou"]) if scored else None


def pair_lines(a: Path, b: Path) -> List[str]:
    """Markdown: runs `a` and `b` side by side at every epoch both validated on the held-out drive."""
    pa, pb = ({h["epoch"]: h["holdout_miou"] for h in _history(f) if h.get("holdout_miou") is not None} for f in (a, b))
    common = sorted(set(pa) & set(pb))
    lines = [f"### {a.name} against {b.name}", ""]
    if not common:
        return lines + ["No epoch validated by both yet.", ""]
    diffs = [100 * (pa[e] - pb[e]) for e in common]
    lines += [f"| epoch | {a.name} | {b.name} | difference (points) |", "|---:|---:|---:|---:|"]
    lines += [f"| {e} | {pct(pa[e])} | {pct(pb[e])} | {d:+.2f} |" for e, d in zip(common, diffs)]
    lines += ["", f"{a.name} is ahead at {sum(d > 0 for d in diffs)} of {len(common)} common epochs; mean difference "
              f"{sum(diffs) / len(diffs):+.2f} points, over the last {min(5, len(diffs))} of them "
              f"{sum(diffs[-5:]) / len(diffs[-5:]):+.2f}.", ""]  # fmt: skip
    return lines


def per_class_lines(folders: List[Path], class_names: List[str], shares: Optional[List[float]], held: str) -> List[str]:
    """Markdown: each run's held-out IoU per class at its best held-out epoch (and the drive's class shares)."""
    cols, rows = [], []
    for folder in folders:
        best = best_holdout(_history(folder))
        if best:
            cols.append(f"{folder.name} (ep {best['epoch']})")
            rows.append(best["holdout_iou"])
    if not cols:
        return []
    head = ([f"pixels of {held} (%)"] if shares else []) + cols
    lines = ["## Held-out IoU per class, at each run's best held-out epoch", "",
             "| class | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]  # fmt: skip
    for c, name in enumerate(class_names):
        cells = ([f"{100 * shares[c]:.2f}"] if shares else []) + [pct(r[c]) for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def holdout_shares(data_root: Path, prefixes: List[str]) -> List[float]:
    """Each class's share of the labelled pixels of the held-out frames (CamVid train+val)."""
    from dabnet.data.datasets import build_dataset
    from dabnet.data.stats import compute_stats

    ds = build_dataset("camvid", data_root, "trainval", include=prefixes)
    return [float(f) for f in compute_stats(ds).frequencies]


def run_row(folder: Path, compare_at: Optional[int]) -> Dict[str, Any]:
    """One table row from a run folder."""
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    history = _history(folder)
    last = torch.load(folder / "last.pth", map_location="cpu", weights_only=True) if (folder / "last.pth").exists() else {}
    proxy = [(h["epoch"], h["holdout_miou"]) for h in history if h.get("holdout_miou") is not None]
    in_seq = [(h["epoch"], h["val_miou"]) for h in history if h.get("val_miou") is not None]
    best = best_holdout(history)
    val_trained_on = cfg.get("train_split") == "trainval"  # CamVid val is inside trainval
    at = dict(proxy).get(compare_at) if compare_at else None
    return {
        "run": folder.name, "recipe": describe_recipe(cfg), "epochs": f"{len(history)} / {cfg['epochs']}",
        "hardware": last.get("hardware", "not recorded"), "hours": sum(h.get("seconds", 0) for h in history) / 3600,
        "proxy_best": f"{pct(best['holdout_miou'])} (ep {best['epoch']})" if best else "–", "proxy_last": pct(proxy[-1][1]) if proxy else "–",
        "proxy_at": pct(at), "in_sequence": "trained on" if val_trained_on else (pct(in_seq[-1][1]) if in_seq else "–"),
    }  # fmt: skip


def bundled_line(folders: List[Path]) -> str:
    """Which of `folders` the package's `dabnet-camvid` weights come from, if any (their config names the run folder)."""
    meta = dabnet.load_model("dabnet-camvid").checkpoint_meta if bundled_weights_available() else {}
    source = Path((meta.get("config") or {}).get("out") or "").name
    if source not in {f.name for f in folders}:
        return ""
    chosen = f"the mean of epochs {meta['averaged_from'][0]['epoch']}-{meta['averaged_from'][-1]['epoch']}" if meta.get("averaged_from") else f"epoch {meta['epoch']}"  # fmt: skip
    figure = (f"{pct(meta['holdout_miou'])}% on the held-out drive, eager fp32" if meta.get("holdout_miou") is not None
              else "trained on every labelled frame: no held-out figure")  # fmt: skip
    return f"Bundled now as `dabnet-camvid`: {source}, {chosen} ({figure}; [MODEL_CARD.md](MODEL_CARD.md))."


def write_table(rows: List[Dict[str, Any]], compare_at: Optional[int], pairs: List[List[Path]], per_class: List[str], path: Path,
                bundled: str = "") -> None:  # fmt: skip
    cols = ["run", "recipe", "epochs", "hardware", "hours", "proxy_best", "proxy_last"] + (["proxy_at"] if compare_at else []) + ["in_sequence"]
    names = {"run": "run", "recipe": "recipe", "epochs": "epochs run / schedule", "hardware": "hardware",
             "hours": "train hours", "proxy_best": "held-out 0006R0 mIoU, best", "proxy_last": "held-out, last epoch",
             "proxy_at": f"held-out at epoch {compare_at}", "in_sequence": "in-sequence val (0016E5) mIoU"}  # fmt: skip
    lines = [
        "# CamVid recipes, judged on a held-out drive",
        "",
        "Generated by `python benchmarks/camvid_recipes.py RUN_FOLDER ...` from the run folders' `config.yaml`,",
        "`metrics.jsonl` and `last.pth`; the curves in camvid_recipes.png. The proxy is drive **0006R0** (101 frames), left out of training:",
        "CamVid's val split (101 frames of 0016E5, a drive train also holds) measures how a trained-on drive",
        "is fitted, while the test split is new drives (Seq05VD, 0001TP). Epochs are selected on the proxy",
        "only. Training hours are summed per-epoch wall time (the runs share a 2-core machine with other",
        "work, so they are upper bounds; an epoch stopped and resumed by a version before 2026-11-24 counts",
        "only its part after the resume). The test split is held out from this project.",
        "",
        "| " + " | ".join(names[c] for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.1f}" if c == "hours" else str(r[c]) for c in cols) + " |")
    if pairs:
        lines += ["", "## Equal-epoch comparisons on the held-out drive", ""]
        for a, b in pairs:
            lines += pair_lines(a, b)
    lines += [""] + per_class if per_class else []
    lines += ["", "![held-out-drive mIoU per epoch](camvid_recipes.png)", ""] + ([bundled, ""] if bundled else [])
    lines += ["Bundled before this table existed: `dabnet-camvid` v1 (240x320 crops, train split, batch 8, 100 CPU",
              "epochs, best epoch chosen on val): 69.05% val mIoU, **57.6% on the CamVid test split** (measured",
              "independently), its held-out-drive figure not measurable (it trained on all three drives).", ""]  # fmt: skip
    path.write_text("\n".join(lines))


def plot_curves(folders: List[Path], path: Path) -> None:
    """Held-out-drive (and in-sequence val) mIoU against epochs, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for folder in folders:
        history = _history(folder)
        for key, style in (("holdout_miou", "-"), ("val_miou", ":")):
            pts = [(h["epoch"], 100 * h[key]) for h in history if h.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, marker=".", label=f"{folder.name} ({'held-out 0006R0' if key == 'holdout_miou' else 'in-sequence val'})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mIoU %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders written by dabnet train")
    ap.add_argument("--compare-at", type=int, default=None, help="also give each run's held-out mIoU at this epoch")
    ap.add_argument("--pair", nargs=2, type=Path, action="append", default=[], metavar=("A", "B"),
                    help="compare two runs at every epoch both validated on the held-out drive")
    ap.add_argument("--data-root", type=Path, default=None, help="CamVid root: adds the held-out drive's class shares")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "reports" / "CAMVID_RECIPES.md")
    args = ap.parse_args()
    rows = [run_row(f, args.compare_at) for f in args.runs]
    holdout = yaml.safe_load((args.runs[0] / "config.yaml").read_text()).get("holdout") or ["0006R0"]
    shares = holdout_shares(args.data_root, holdout) if args.data_root else None
    per_class = per_class_lines(args.runs, get_dataset("camvid").classes, shares, "+".join(holdout))
    write_table(rows, args.compare_at, args.pair, per_class, args.out, bundled_line(args.runs))
    plot_curves(args.runs, args.out.with_name("camvid_recipes.png"))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
