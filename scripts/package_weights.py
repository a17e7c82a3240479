"""Turn a training run into the weights shipped in the package, and write the model card.

    python scripts/package_weights.py --run /work/runs/camvid_holdout_bf16 --data-root ../shared/data/camvid

Evaluates the run's best checkpoint (or --weights, e.g. `dabnet average` of its last epochs; eager
fp32) on the held-out sequences it was selected on, if any, and on CamVid val (marked as trained on
when the run trained on val), times it on this CPU, stores weights + metadata as
dabnet/weights/dabnet-camvid.safetensors, and writes docs/reports/MODEL_CARD.md with the learning curve
(docs/reports/camvid_learning_curve.png) and the README's demo picture (docs/reports/demo_side_by_side.png). With
--sample-frames, frames of the held-out drive (never trained on) first replace the demo frames in
dabnet/assets/samples. Every figure in the card comes from here, except the previous weights'
test-split figure, which was measured independently (the test split is held out from this project).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from dabnet.commands.bench import count_params
from dabnet.commands.demo import run_demo, sample_frames, sample_ground_truth
from dabnet.commands.evaluate import run_evaluation
from dabnet.config import DemoConfig, EvalConfig, TrainConfig, build_config, from_saved
from dabnet.data.datasets import build_dataset, shares_frames
from dabnet.inference.segmenter import Segmenter
from dabnet.io.checkpoint import NEGLIGIBLE, flush_negligible, read_checkpoint, save_safetensors
from dabnet.io.images import read_image
from dabnet.util.hardware import describe_hardware
from dabnet.util.metrics import ConfusionMatrix

ROOT = Path(__file__).resolve().parents[1]
KEEP = ["model_name", "num_classes", "model_kwargs", "class_names", "palette", "ignore_index", "raw_ignore",
        "mean", "std", "config", "data_splits", "epoch", "iteration", "best_miou", "dataset", "selected_on", "averaged_from"]  # fmt: skip
# Earlier bundled weights and their CamVid test-split mIoU, measured independently (the test split is held out here).
HISTORY = [("v1", "240x320 crops, train split, 100 CPU epochs, epoch chosen on val", 57.64),
           ("v2", "the official recipe on train+val without drive 0006R0, 300 CPU epochs, epoch chosen on 0006R0", 60.84),
           ("v3", "the official recipe on all 468 train+val frames from v2, 700 CPU epochs, the mean of the last 10", 65.76)]  # fmt: skip
# The weights bundled before held-out-drive validation, as their starting point (CamVid test measured independently).
PREVIOUS = ("`dabnet-camvid` v1 (240x320 crops, train split, batch 8, 100 CPU epochs, epoch chosen on val): 69.05% val "
            "mIoU, **57.6% on the CamVid test split** (233 images, measured independently)")  # fmt: skip
SAMPLES = ROOT / "dabnet" / "assets" / "samples"
# Options that do not change the weights a run produces.
NOT_RECIPE = ("out", "data_root", "device", "log_every", "check_data", "keep_every", "distill_cache")


def replace_samples(cfg: TrainConfig, data_root: str, names: Sequence[str], folder: Path) -> None:
    """Make the frames `names` of the run's held-out drive(s) the demo frames in `folder` (JPEG + label PNG),
    removing the ones there: the README's picture and the regression guard then show frames the weights never saw."""
    unseen = build_dataset(cfg.dataset, data_root, cfg.train_split, include=cfg.holdout) if cfg.holdout else None
    pairs = {image.stem: (image, mask) for image, mask in (unseen.pairs if unseen else [])}
    missing = [n for n in names if Path(n).stem not in pairs]
    if missing:
        where = f"held-out drive(s) {', '.join(cfg.holdout)} of {data_root}/{cfg.train_split}" if cfg.holdout else "nothing: the run held no drive out"
        raise SystemExit(f"--sample-frames {' '.join(missing)}: not a frame of the {where}; demo frames must be ones "
                         f"the weights never trained on (e.g. {', '.join(sorted(pairs)[:2]) or 'train with a holdout'})")  # fmt: skip
    from PIL import Image

    for old in list(folder.glob("*.jpg")) + list(folder.glob("*_label.png")):
        old.unlink()
    for name in names:
        image, mask = pairs[Path(name).stem]
        Image.fromarray(read_image(image)).save(folder / f"{image.stem}.jpg", quality=90)
        shutil.copyfile(mask, folder / f"{image.stem}_label.png")  # raw CamVid ids: the demo maps 11 to ignore


def sample_frames_miou(seg: Segmenter, folder: Optional[Path] = None) -> float:
    """mIoU of the model on the frames bundled with the demo (the regression guard's figure)."""
    cm = ConfusionMatrix(seg.model.num_classes)
    for frame in sample_frames(folder):
        cm.update(torch.from_numpy(seg.predict(read_image(frame))), torch.from_numpy(sample_ground_truth(frame)))
    return cm.compute()["miou"]


def cpu_latency_ms(seg: Segmenter, folder: Optional[Path] = None, repeats: int = 20) -> float:
    image = read_image(sample_frames(folder)[0])
    seg.predict(image)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        seg.predict(image)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def val_is_trained_on(cfg: TrainConfig, data_root: str) -> bool:
    """Whether the run's training frames include any of CamVid val (trainval does): the check training warns with."""
    train = build_dataset(cfg.dataset, data_root, cfg.train_split, exclude=cfg.holdout)
    return shares_frames(train, build_dataset(cfg.dataset, data_root, "val"))


def figures(checkpoint: Path, data_root: str, cfg: TrainConfig) -> Dict[str, Dict[str, Any]]:
    """Eager fp32 results of `checkpoint`: 'holdout' (the held-out sequences of the train split, when the
    run had them) and 'val' (CamVid val)."""
    def on(split: str, sequences: List[str]) -> Dict[str, Any]:
        return evaluated(checkpoint, data_root, split, sequences, "eager")

    out = {"holdout": on(cfg.train_split, list(cfg.holdout))} if cfg.holdout else {}
    out["val"] = on("val", [])
    return out


def evaluated(checkpoint: Path, data_root: str, split: str, sequences: List[str], backend: str) -> Dict[str, Any]:
    """`dabnet eval`'s result of `checkpoint` on a split (or some of its drives) with `backend`, single scale."""
    ev = EvalConfig(checkpoint=str(checkpoint), data_root=data_root, split=split, sequences=sequences, workers=1, backend=backend)
    return run_evaluation(ev, log=print)


def default_backend_figure(weights: Path, data_root: str, cfg: TrainConfig) -> Dict[str, Any]:
    """The shipped file's mIoU with the default backend (`auto`: what users get) on the split the card's first
    figure is on, for the card's 'default backend' row (the target: within a few tenths of eager)."""
    split, sequences = (cfg.train_split, list(cfg.holdout)) if cfg.holdout else ("val", [])
    res = evaluated(weights, data_root, split, sequences, "auto")
    return {"miou": res["miou"], "backend": res["backend"], "on": "holdout" if cfg.holdout else "val"}


def readme_figure(weights: Path, path: Path, folder: Path) -> None:
    """The README's picture: `dabnet demo`'s side-by-side of the first demo frame in `folder`, with `weights`."""
    with tempfile.TemporaryDirectory() as tmp:
        run_demo(DemoConfig(checkpoint=str(weights), out=tmp, backend="eager", samples=str(folder)), log=lambda *a: None)
        shutil.copyfile(Path(tmp) / f"{sample_frames(folder)[0].stem}_side_by_side.png", path)


def learning_curve(history: List[Dict[str, Any]], holdout: List[str], path: Path) -> None:
    """Train loss and the validation mIoU curves of the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4), dpi=100)
    ax1.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax2 = ax1.twinx()
    for key, label, colour in (("holdout", f"held-out {', '.join(holdout)}", "tab:red"), ("val", "val (0016E5)", "tab:green")):
        pts = [(h["epoch"], 100 * h[f"{key}_miou"]) for h in history if h.get(f"{key}_miou") is not None]
        if pts:
            ax2.plot(*zip(*pts), color=colour, marker="o", markersize=3, label=f"{label} mIoU")
    ax2.set_ylabel("mIoU (%)")
    ax2.legend(loc="lower right")
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def base_config(cfg: TrainConfig) -> str:
    """The shipped config a run's recipe starts from: held-out drives, every labelled frame, or the train split."""
    return "camvid_holdout" if cfg.holdout else "camvid_trainval" if cfg.train_split == "trainval" else "camvid"


def every_frame(cfg: TrainConfig, meta: Dict[str, Any]) -> bool:
    """Whether the run trained on every labelled frame (val included, nothing held out): no figure left to choose by."""
    return not cfg.holdout and bool(meta.get("val_trained_on"))


def file_name(where: Optional[str]) -> Optional[str]:
    """A checkpoint option as the card writes it: a path by its file name, a bundled name (or nothing) as it is."""
    return Path(where).name if where and ("/" in where or where.endswith((".pth", ".pt", ".safetensors"))) else where


def extensions(cfg: TrainConfig) -> str:
    """The card's words for the run's training extensions (distillation, weight EMA), or nothing."""
    words = []
    if cfg.distill_from:
        views = f"scales {cfg.distill_scales}" + (" + flips" if cfg.distill_flip else "")
        words.append(f"distilled from `{file_name(cfg.distill_from)}` run as its own ensemble ({views}, probabilities averaged): "
                     f"loss = CE + {cfg.distill_weight:g} * T^2 * KL, T = {cfg.distill_temperature:g}")  # fmt: skip
    if cfg.ema:
        words.append(f"weight EMA {cfg.ema:g} (the weights are the average)")
    return "; ".join(words)


def reproduce_command(cfg: TrainConfig, out: str) -> str:
    """The `dabnet train` command that re-runs `cfg`: its shipped base config plus the options that differ."""
    base_name = base_config(cfg)
    base = dataclasses.asdict(build_config(TrainConfig, base_name))
    # The run's own paths mean nothing elsewhere: files by name, fetched as the card says.
    cfg = dataclasses.replace(cfg, init_from=file_name(cfg.init_from), distill_from=file_name(cfg.distill_from))
    def text(v: Any) -> str:
        return v if isinstance(v, str) and v.isidentifier() else json.dumps(v).replace(" ", "")

    sets = [f"--set {k}={text(v)}" for k, v in dataclasses.asdict(cfg).items() if k not in NOT_RECIPE and v != base[k]]
    return " ".join([f"dabnet train --config {base_name} --out {out} --set data_root=../shared/data/camvid", *sets])


def check_inputs(run: Path, weights: Path, out: Path, card: Path, samples: Path, sample_names: Sequence[str]) -> None:
    """Refuse, before minutes of evaluation, what would fail or lose work at the end: demo frames that are not
    there, or an output that is one of the files being read. Makes the output folders."""
    read = {p.resolve(): p for p in (weights, run / "last.pth")}
    for option, path in (("--out", out), ("--card", card)):
        if path.resolve() in read:
            raise SystemExit(f"{option} {path}: that is the checkpoint being packaged ({read[path.resolve()]}); "
                             f"write the {'weights' if option == '--out' else 'card'} somewhere else")  # fmt: skip
    if not sample_names and not (samples.is_dir() and sample_frames(samples)):
        raise SystemExit(f"--samples {samples}: no demo frames there (*.jpg beside *_label.png); pass the folder that "
                         "holds them, or --sample-frames to fill it from the run's held-out drive")  # fmt: skip
    for folder in (out.parent, card.parent, samples):
        folder.mkdir(parents=True, exist_ok=True)


def package(run: Path, data_root: str, out: Path, card: Path, note: str = "", hardware: str = "",
            samples: Path = SAMPLES, sample_names: Sequence[str] = (), weights: Optional[Path] = None, rule: str = "",
            init_from_how: str = "", default_backend: bool = True) -> Dict[str, Any]:  # fmt: skip
    """Evaluate, store and describe `run`'s best.pth, or `weights` from that run (e.g. `dabnet average` of its
    epochs), with `sample_names` as the demo frames in `samples`; returns the stored metadata. A run that trained
    on every labelled frame needs `rule`: how the shipped weights were chosen, written down before the run ended.
    `default_backend`: also evaluate the shipped file with the default backend, for the card."""
    weights = weights or run / "best.pth"
    check_inputs(run, weights, out, card, samples, sample_names)
    ckpt, history = read_checkpoint(weights), read_checkpoint(run / "last.pth")["history"]
    cfg = from_saved(TrainConfig, ckpt["config"])
    if not cfg.holdout and val_is_trained_on(cfg, data_root) and not rule:
        raise SystemExit(f"{run} trained on every labelled frame, so no figure can have chosen its weights: pass --rule, the "
                         "rule written down before the run ended (e.g. 'the mean of epochs 691-700, made by dabnet average')")  # fmt: skip
    if sample_names:
        replace_samples(cfg, data_root, sample_names, samples)
    res = figures(weights, data_root, cfg)
    meta = {k: ckpt[k] for k in KEEP if k in ckpt}
    if "averaged_from" in meta:  # the run's own paths say nothing where the weights are shipped
        meta["averaged_from"] = [{"path": Path(a["path"]).name, "epoch": a["epoch"]} for a in meta["averaged_from"]]
    for key, r in res.items():
        meta.update({f"{key}_miou": r["miou"], f"{key}_per_class_iou": r["per_class_iou"], f"{key}_pixel_acc": r["pixel_acc"]})
    checks = [h["holdout_miou"] for h in history if h.get("holdout_miou") is not None]  # the figures an epoch was chosen among
    hardware = hardware or ckpt.get("hardware") or f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"
    meta.update(val_trained_on=val_is_trained_on(cfg, data_root), holdout_sequences=list(cfg.holdout), epochs_run=len(history),
                holdout_validations=len(checks), holdout_median_last_20=statistics.median(checks[-20:]) if checks else None,
                trained_minutes=round(sum(h["seconds"] for h in history) / 60, 1), hardware=hardware,
                torch_version=torch.__version__)  # fmt: skip
    meta["model"], meta["negligible_zeroed"] = flush_negligible(ckpt["model"])  # as every load does: shipped as used
    if rule:
        meta["selection_rule"] = rule
    if cfg.init_from:
        meta["init_from"] = file_name(cfg.init_from)
    if extensions(cfg):
        meta["extensions"] = extensions(cfg)
    meta["trained_on_every_labelled_frame"] = every_frame(cfg, meta)
    save_safetensors(meta, out)
    if default_backend:
        auto = default_backend_figure(out, data_root, cfg)
        meta.update(default_backend=auto["backend"], default_backend_miou=auto["miou"],
                    default_backend_change=auto["miou"] - res[auto["on"]]["miou"])  # fmt: skip
    seg = Segmenter.from_checkpoint(out, backend="eager")
    meta["sample_frames_miou"] = sample_frames_miou(seg, samples)
    meta["sample_frames"] = [f.stem for f in sample_frames(samples)]
    save_safetensors(meta, out)
    learning_curve(history, list(cfg.holdout), card.with_name("camvid_learning_curve.png"))
    readme_figure(out, card.with_name("demo_side_by_side.png"), samples)
    card.write_text(model_card(run, weights, out, meta, cfg, res, cpu_latency_ms(seg, samples), count_params(seg.model), note, init_from_how))
    return meta


def why_every_frame(cfg: TrainConfig, meta: Dict[str, Any], res: Dict[str, Dict[str, Any]]) -> str:
    """The card's account of a run on every labelled frame: why all of it, where it started, what ships and why."""
    start = (f"- **Started from `{meta['init_from']}`** with a fresh {cfg.epochs}-epoch poly schedule: those weights had\n"
             f"  already learned the task, and a fresh schedule over all the frames costs less CPU time than the\n"
             f"  official 1000 epochs from scratch."
             if meta.get("init_from") else f"- **{cfg.epochs} epochs from scratch**, the official schedule's shape.")  # fmt: skip
    taught = (f"- **Taught by an ensemble**: {meta['extensions']}. The recipe was chosen on a held-out drive before\n"
              f"  this run ([DISTILL_PROXY.md](DISTILL_PROXY.md)).\n" if meta.get("extensions") else "")  # fmt: skip
    return f"""
## Why this data and this length

- **Every labelled frame** ({res['val']['images']} of val among them; train+val, as the official run): the drive
  the previous weights left out to choose an epoch by is now learned from. Nothing is held out, so no
  figure here says how the weights do on a new drive; val below is trained on (a fitting figure).
{start}
{taught}- **{meta['epochs_run']} epochs run**, {meta['trained_minutes'] / 60:.1f} hours of training on {meta['hardware']}.
- **The weights that ship: {meta['selection_rule']}.** The rule was written down before the run ended
  and nothing else was considered: with every frame trained on, choosing by a figure would choose by
  fitting.
"""


def why_section(cfg: TrainConfig, meta: Dict[str, Any], res: Dict[str, Dict[str, Any]]) -> str:
    """The card's account of what the weights were trained on and for how long (held-out-drive runs, and runs
    on every labelled frame)."""
    if every_frame(cfg, meta):
        return why_every_frame(cfg, meta, res)
    if not cfg.holdout:
        return ""
    held = ", ".join(cfg.holdout)
    return f"""
## Why this data and this length

- **Everything but drive {held}** ({res['holdout']['images']} frames left out): so that the epoch is chosen, and
  recipes are compared, on a drive these weights never saw. v1 was chosen on val, a drive it also
  trained on: 69.05% there, 57.6% on the test split's new drives. Trained on every frame, a run
  has no honest figure left to choose an epoch by; the price is that {held}'s frames are not learned from.
- **{meta['epochs_run']} epochs of a {cfg.epochs}-epoch schedule**, not the official 1000: what the CPU time
  allowed ({meta['trained_minutes'] / 60:.1f} hours of training); the held-out curve below shows where it levelled off.
{which_bullet(meta, held)}
"""


def averaged_epochs(meta: Dict[str, Any]) -> List[int]:
    """The epochs the weights are the mean of (`dabnet average`); empty for a single epoch's weights."""
    return [a["epoch"] for a in meta.get("averaged_from", [])]


def which_bullet(meta: Dict[str, Any], held: str) -> str:
    """The card's reason for shipping these weights: the best held-out epoch, or a mean of epochs."""
    checks = meta["holdout_validations"]
    averaged = averaged_epochs(meta)
    if not averaged:
        return (f"- **Epoch {meta['epoch']}**, the best of {checks} validations on {held}. Neighbouring epochs score points\n"
                f"  apart there, so part of its lead is luck: the median of the run's last 20 validations is\n"
                f"  {100 * meta['holdout_median_last_20']:.2f}% ([CAMVID_AVERAGING.md](CAMVID_AVERAGING.md): the last epochs alone and averaged).")
    return (f"- **The mean of epochs {averaged[0]}-{averaged[-1]}** ({len(averaged)} epochs, `dabnet average`), not the best single\n"
            f"  epoch: neighbouring epochs score points apart on {held}, so the best of {checks} validations is partly\n"
            f"  luck, while the mean is one of a few windows and beats the typical single epoch\n"
            f"  ([CAMVID_AVERAGING.md](CAMVID_AVERAGING.md) has both on {held}).")


def reproduce_steps(cfg: TrainConfig, meta: Dict[str, Any], out: str, init_from_how: str = "") -> str:
    """The card's commands: fetch the starting weights, train, average the kept epochs when the weights are a
    mean, package."""
    averaged = averaged_epochs(meta)
    fetch = f"{init_from_how}\n" if init_from_how else ""
    rule = f" --rule {shlex.quote(meta['selection_rule'])}" if meta.get("selection_rule") else ""
    if not averaged:
        return f"{fetch}{reproduce_command(cfg, out)}\npython scripts/package_weights.py --run {out}{rule}"
    kept = " ".join(f"{out}/epoch_{e:04d}.pth" for e in averaged)
    keep = "" if build_config(TrainConfig, base_config(cfg)).keep_every == 1 else " --set keep_every=1"  # the shipped config may keep them
    return (f"{fetch}{reproduce_command(cfg, out)}{keep}\ndabnet average {kept} --out {out}/averaged.pth\n"
            f"python scripts/package_weights.py --run {out} --weights {out}/averaged.pth{rule}")


def which_weights(meta: Dict[str, Any]) -> str:
    """The card's words for the epoch(s) the weights come from."""
    averaged = averaged_epochs(meta)
    if not averaged:
        return f"best at epoch {meta['epoch']}"
    return f"the mean of the weights of epochs {', '.join(map(str, averaged))} (`dabnet average`)"


def history_row(meta: Dict[str, Any], cfg: TrainConfig) -> str:
    """The card's row for earlier weights: v1's starting point on held-out-drive cards, every version's test figure
    (measured independently) on a card of weights trained on every frame."""
    if not every_frame(cfg, meta):
        return f"| starting point | {PREVIOUS} |"
    versions = "; ".join(f"{v} ({what}): **{test:.2f}%**" for v, what, test in HISTORY)
    return f"| earlier weights, CamVid test mIoU (measured independently) | {versions} |"


def model_card(run: Path, weights: Path, out: Path, meta: Dict[str, Any], cfg: TrainConfig, res: Dict[str, Dict[str, Any]],
               latency: float, params: int, note: str, init_from_how: str = "") -> str:  # fmt: skip
    """docs/reports/MODEL_CARD.md: what the weights are, what each figure was measured on, how to get them again."""
    held = ", ".join(cfg.holdout)
    trained_on = f"`{cfg.train_split}`" + (f" without drive(s) {held}" if held else "")
    selected = f"epoch selected on the held-out drive(s) {held}, never trained on" if held else "epoch selected on `val`"
    if every_frame(cfg, meta):
        trained_on += ": every labelled frame, nothing held out"
        selected = "no figure selected anything (see the rule below)"
    val_note = "trained on: these frames are in the training split, so this measures fitting" if meta["val_trained_on"] else "in-sequence: its drive 0016E5 is also in train"  # fmt: skip
    columns = list(res)
    header = " | ".join({"holdout": f"held-out {held}", "val": "val (0016E5)"}[k] for k in columns)
    rows = "\n".join(f"| {name} | " + " | ".join("-" if res[k]["per_class_iou"][name] is None else f"{100 * res[k]['per_class_iou'][name]:.2f}"
                                                for k in columns) + " |" for name in meta["class_names"])  # fmt: skip
    zeroed = (f"; {meta['negligible_zeroed']:,} weights below {NEGLIGIBLE:g} in magnitude stored as zero, as every load "
              "sets them (they change no output; as subnormal numbers they slow a CPU many times)") if meta.get("negligible_zeroed") else ""
    figures_rows = ""
    if "holdout" in res:
        figures_rows += f"| **held-out drive {held} mIoU** | **{100 * res['holdout']['miou']:.2f}%** (pixel accuracy {100 * res['holdout']['pixel_acc']:.2f}%; {len(cfg.holdout)} drive(s), {res['holdout']['images']} frames): the proxy for a new drive |\n"  # fmt: skip
    figures_rows += f"| val (0016E5) mIoU | {100 * res['val']['miou']:.2f}% (pixel accuracy {100 * res['val']['pixel_acc']:.2f}%; {val_note}) |\n"
    if "default_backend_miou" in meta:
        where = f"held-out {held}" if "holdout" in res else "val"
        figures_rows += (f"| default backend | {100 * meta['default_backend_miou']:.2f}% on {where} with `{meta['default_backend']}` "
                         f"(`--backend auto`), {100 * meta['default_backend_change']:+.2f} points against eager fp32 |\n")  # fmt: skip
    return f"""# Model card: `dabnet-camvid`

Generated by `python scripts/package_weights.py --run {run}` from `{weights.name}` (figures: eager fp32, single scale).

| | |
|---|---|
| network | DABNet (Li & Kim, BMVC 2019), {params:,} parameters, {meta['num_classes']} classes |
| file | `dabnet/weights/{out.name}` ({out.stat().st_size / 2**20:.2f} MiB), loads with `dabnet.load_model("dabnet-camvid")`{zeroed} |
| data | CamVid (SegNet layout, 360x480), trained on {trained_on}; {selected}; the test split was never used |
| recipe | official CamVid recipe: Adam lr {cfg.lr}, betas {cfg.betas}, wd {cfg.weight_decay}, poly {cfg.poly_power}, warm-up {cfg.warmup_iters} it, ENet class weights (c = {cfg.enet_c}), random scale {cfg.scales}, crop {cfg.crop_size[0]}x{cfg.crop_size[1]}, flip, batch {cfg.batch_size}, {cfg.precision} autocast, schedule of {cfg.epochs} epochs{'; ' + meta['extensions'] if meta.get('extensions') else ''} |
| trained | {meta['epochs_run']} epochs ({which_weights(meta)}), {meta['trained_minutes']:.0f} minutes on {meta['hardware']}{'; ' + note if note else ''} |
| normalisation | RGB, mean {[round(v, 2) for v in meta['mean']]}, std {[round(v, 2) for v in meta['std']]} (0-255 scale) |
{figures_rows}| CamVid test | not measured here (the test split is held out from this project); the paper: 66.4% after 1000 GPU epochs |
{history_row(meta, cfg)}
| speed | {latency:.1f} ms per 360x480 frame on {describe_hardware(torch.device("cpu"))} (median of 20, batch 1, eager fp32, `Segmenter.predict`; `dabnet bench` for the default backend) |
{why_section(cfg, meta, res)}
## Per-class IoU

| class | {header} |
|---|{'---:|' * len(columns)}
{rows}

## Learning curve

![learning curve](camvid_learning_curve.png)

## Reproduce

```bash
{reproduce_steps(cfg, meta, f"runs/{run.name}", init_from_how)}
```

Re-running the `dabnet train` command continues the run from `last.pth` (training here spans
several sessions). On a GPU, add `--set data_on_device=true` for the full recipe's speed.

## Limitations

- CamVid is small (468 train+val frames from three drives) and filmed in one city (Cambridge, UK)
  from one car, in daylight: expect poor results at night, in rain or snow, on other continents'
  road layouts, and from viewpoints other than a forward-facing car camera.
- It knows {meta['num_classes']} classes only: no sky/terrain split, no trucks, buses, trains, traffic lights or
  riders as such; anything else is forced into one of them.
- Thin and rare classes (Pole, SignSymbol, Pedestrian, Bicyclist, Fence) are the weakest, as the
  table shows. The weights were trained on a CPU for {meta['epochs_run']} epochs, the paper for 1000 on a GPU.
- Not for safety-critical use.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="run folder with best.pth and last.pth")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "camvid"))
    ap.add_argument("--out", default=str(ROOT / "dabnet" / "weights" / "dabnet-camvid.safetensors"))
    ap.add_argument("--card", default=str(ROOT / "docs" / "reports" / "MODEL_CARD.md"))
    ap.add_argument("--note", default="", help="how the run deviated from its config (e.g. a schedule changed on resume)")
    ap.add_argument("--hardware", default="", help="default: what the run recorded")
    ap.add_argument("--sample-frames", nargs="+", default=[], metavar="NAME",
                    help="frames of the held-out drive to bundle as the demo frames (e.g. 0006R0_f01050), replacing the current ones")
    ap.add_argument("--samples", default=str(SAMPLES), help="the demo frames' folder")
    ap.add_argument("--weights", default=None, help="a checkpoint of the run to ship instead of its best.pth (e.g. `dabnet average`'s)")
    ap.add_argument("--rule", default="", help="how the shipped weights were chosen, written before the run ended (needed when "
                    "the run trained on every labelled frame)")  # fmt: skip
    ap.add_argument("--init-from-how", default="", help="the command that fetches the run's init_from file, for the card")
    ap.add_argument("--no-default-backend", action="store_true", help="skip the default backend's figure (an OpenVINO int8 "
                    "evaluation where it is installed)")  # fmt: skip
    args = ap.parse_args()
    meta = package(Path(args.run), args.data_root, Path(args.out), Path(args.card), args.note, args.hardware,
                   Path(args.samples), args.sample_frames, Path(args.weights) if args.weights else None, args.rule,
                   args.init_from_how, not args.no_default_backend)  # fmt: skip
    print(f"wrote {args.out}, {args.card}; sample-frames mIoU {100 * meta['sample_frames_miou']:.2f}%")


if __name__ == "__main__":
    main()
