"""`dabnet train`: the training run around `engine.train_one_epoch` — data, model, optimiser,
checkpoints that survive a kill at any moment, validation, logs and plots; single process or DDP."""

from __future__ import annotations

import dataclasses
import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from . import distributed as D
from .checkpoint import CheckpointError, load_model, make_checkpoint, read_checkpoint, save_checkpoint
from .config import TrainConfig, save_config
from .data.datasets import DatasetError, SegmentationDataset, build_dataset, collate_eval, select_sequences
from .data.stats import class_weights, compute_stats
from .data.transforms import EvalTransform, TrainTransform
from .engine import NonFiniteLossError, evaluate, poly_warmup_lambda, train_one_epoch
from .losses import build_loss
from .models import create_model


class ResumableSampler(Sampler):
    """A DistributedSampler (shuffled by seed + epoch, sharded by rank) that can skip the
    batches already trained in an interrupted epoch."""

    def __init__(self, dataset: SegmentationDataset, seed: int, batch_size: int) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=D.world_size(), rank=D.rank(), shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip_batches * self.batch_size, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip_batches * self.batch_size


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves and exits at the next step boundary."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _worker_ignores_stop_signals(worker_id: int) -> None:
    """Ctrl-C, or a scheduler's SIGTERM, reaches every process of the group. A worker killed by it
    would make PyTorch raise in the main process at any point, even mid-step; so workers leave the
    signal to the main process, which saves and stops at the next step boundary. They still exit
    through the loader's shutdown, or by its watchdog if the main process dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _resolve_device(cfg: TrainConfig) -> torch.device:
    device, _ = D.init_distributed(cfg.device)
    return device


def _rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def build_datasets(cfg: TrainConfig):
    """The train dataset with the paper's augmentation, and the validation sets by name ('holdout':
    the held-out sequences of train_split; 'val': val_split without them), normalised alike."""
    train_ds = build_dataset(cfg.dataset, cfg.data_root, cfg.train_split, seed=cfg.seed, exclude=cfg.holdout)
    mean = tuple(cfg.mean) if cfg.mean is not None else train_ds.mean
    std = tuple(cfg.std) if cfg.std is not None else train_ds.std
    train_ds.transform = TrainTransform(tuple(cfg.crop_size), tuple(cfg.scales), cfg.flip, mean, std, train_ds.ignore_index)
    train_ds.mean, train_ds.std = mean, std
    val_sets = {}
    if cfg.holdout:
        val_sets["holdout"] = build_dataset(cfg.dataset, cfg.data_root, cfg.train_split, EvalTransform(mean, std), include=cfg.holdout)
    if cfg.val_split:
        val_ds = build_dataset(cfg.dataset, cfg.data_root, cfg.val_split, EvalTransform(mean, std))
        drop = tuple(s for s in cfg.holdout if any(i.name.startswith(s) for i, _ in val_ds.pairs))
        if not all(i.name.startswith(drop) for i, _ in val_ds.pairs):  # drop=(): startswith(()) is False
            val_sets["val"] = select_sequences(val_ds, exclude=drop)
    return train_ds, val_sets


def selection_set(cfg: TrainConfig) -> Optional[str]:
    """The validation set best.pth is chosen on: the held-out sequences when there are any."""
    return "holdout" if cfg.holdout else ("val" if cfg.val_split else None)


def _check_files(cfg: TrainConfig, log) -> None:
    from .data.check import check_split

    for split in filter(None, [cfg.train_split, cfg.val_split]):
        report = check_split(cfg.dataset, cfg.data_root, split, progress=True)
        if report.problems:
            shown = "\n  ".join(report.problems[:5])
            raise DatasetError(
                f"{len(report.problems)} problem(s) in {cfg.dataset}:{split}, found before training:\n  {shown}\n"
                f"Run `dabnet data check {cfg.dataset} {cfg.data_root}` for the full list, or --set check_data=false to skip."
            )
    log("data check: every image and mask reads cleanly")


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, adam or adamw")


def _write_logs(out: Path, history: List[Dict[str, Any]], class_names: List[str]) -> None:
    """metrics.jsonl, metrics.csv and the loss/mIoU curves, rewritten from the checkpoint's history."""
    (out / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    keys = ["epoch", "iteration", "lr", "train_loss", "images_per_s", "val_miou", "val_pixel_acc", "holdout_miou",
            "holdout_pixel_acc", "seconds"]
    rows = [",".join(keys)] + [",".join("" if h.get(k) is None else str(h.get(k)) for k in keys) for h in history]
    (out / "metrics.csv").write_text("\n".join(rows) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for keys, name, ylabel in [(["train_loss"], "loss.png", "train loss"), (["val_miou", "holdout_miou"], "miou.png", "mIoU")]:
        curves = {k: [(h["epoch"], h[k]) for h in history if h.get(k) is not None] for k in keys}
        curves = {k: pts for k, pts in curves.items() if pts}
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for k, pts in curves.items():
            ax.plot(*zip(*pts), marker="." if len(pts) < 50 else None, label=k.replace("_miou", ""))
        if len(curves) > 1:
            ax.legend()
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))


def train(cfg: TrainConfig, resume: Optional[str] = None, restart: bool = False, log=print) -> Dict[str, Any]:
    """Run (or continue) training as `cfg` says; returns a summary. Exits cleanly on SIGINT/SIGTERM."""
    device = _resolve_device(cfg)
    main = D.is_main()
    log = log if main else (lambda *a, **k: None)
    out = Path(cfg.out)
    last_path, best_path = out / "last.pth", out / "best.pth"
    ckpt = None
    if resume:
        ckpt = read_checkpoint(resume)
    elif last_path.exists() and not restart:
        ckpt = read_checkpoint(last_path)
    if ckpt is not None and ckpt.get("format") is None:
        raise CheckpointError(f"{resume or last_path} is not a dabnet training checkpoint (use init_from= for weights)")
    if ckpt is not None and ckpt["epoch"] >= cfg.epochs:
        # A longer schedule (--set epochs=N) continues a finished run; the poly decay stretches to it.
        log(f"{last_path if not resume else resume} already finished {ckpt['epoch']} epochs; raise epochs, use --restart or another --out")
        return {"best_miou": ckpt.get("best_miou"), "epoch": ckpt["epoch"], "out": str(out), "finished": True}
    torch.manual_seed(cfg.seed)

    if cfg.check_data and main and ckpt is None:
        _check_files(cfg, log)
    D.barrier()
    train_ds, val_sets = build_datasets(cfg)
    select_on = selection_set(cfg)
    for key, ds in val_sets.items():
        if set(ds.pairs) & set(train_ds.pairs):
            chosen = ", and best.pth is chosen on it" if key == select_on else ""
            log(f"warning: {key} set {ds.name} holds images of the training set {train_ds.name}: its mIoU measures "
                f"fitting, not generalisation{chosen}. Validate on a held-out sequence (--set holdout=[PREFIX]).")
    stats = compute_stats(train_ds, progress=main) if cfg.class_weights != "none" else None
    weights = None
    if stats is not None:
        weights = torch.tensor(class_weights(stats, cfg.class_weights, cfg.enet_c), dtype=torch.float32, device=device)
        log("class weights (" + cfg.class_weights + "): " + ", ".join(f"{n} {w:.2f}" for n, w in zip(train_ds.classes, weights.tolist())))

    model = create_model(cfg.model, train_ds.num_classes, **cfg.model_kwargs)
    if cfg.init_from and ckpt is None:
        source = load_model(cfg.init_from, num_classes=train_ds.num_classes, model_name=cfg.model)
        model.load_state_dict(source.state_dict())
        log(f"initialised from {cfg.init_from}")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and D.is_dist():
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log("sync_bn ignored: PyTorch's SyncBatchNorm runs on CUDA only; each CPU process keeps its own statistics")
    net: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if D.is_dist() else model
    fwd = torch.compile(net) if cfg.compile else net

    sampler = ResumableSampler(train_ds, cfg.seed, cfg.batch_size)
    iters_per_epoch = len(sampler.inner) // cfg.batch_size
    if iters_per_epoch == 0:
        raise DatasetError(f"{train_ds.name} has {len(train_ds)} images per process, fewer than batch_size={cfg.batch_size}")
    total_iters = cfg.epochs * iters_per_epoch
    optimizer = _optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_warmup_lambda(total_iters, cfg.poly_power, cfg.warmup_iters, cfg.warmup_ratio)
    )
    scaler = torch.amp.GradScaler(device.type) if (cfg.amp == "fp16" and device.type == "cuda") else None
    min_kept = cfg.ohem_min_kept if cfg.ohem_min_kept is not None else cfg.batch_size * cfg.crop_size[0] * cfg.crop_size[1] // 16
    loss_fn = build_loss(cfg.loss, weights, train_ds.ignore_index, cfg.ohem_thresh, min_kept).to(device)

    start_epoch, skip, best_miou, history = 0, 0, -1.0, []
    if ckpt is not None:
        if ckpt.get("num_classes") != train_ds.num_classes:
            raise CheckpointError(f"cannot resume: checkpoint has {ckpt.get('num_classes')} classes, dataset {train_ds.num_classes}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], device)
        start_epoch, skip = ckpt["epoch"], ckpt.get("iter_in_epoch", 0)
        best_miou, history = ckpt.get("best_miou", -1.0), list(ckpt.get("history", []))
        log(f"resuming {out} at epoch {start_epoch + 1}, iteration {skip} of {iters_per_epoch}")
    if main:
        save_config(cfg, out / "config.yaml")
    meta = dict(train_ds.describe(), config=dataclasses.asdict(cfg), selected_on=select_on,
                data_splits={"train": cfg.train_split, "val": cfg.val_split, "holdout": list(cfg.holdout)})

    def checkpoint(epoch: int, iter_in_epoch: int, finished: bool = False) -> Dict[str, Any]:
        return make_checkpoint(
            model, **meta, epoch=epoch, iter_in_epoch=iter_in_epoch, iteration=scheduler.last_epoch,
            best_miou=best_miou, history=history, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None, rng=_rng_state(device), finished=finished,
        )  # fmt: skip

    if cfg.data_on_device:
        from .data.device import DeviceBatches

        loader = DeviceBatches(train_ds, sampler, cfg.batch_size, device, tuple(cfg.crop_size), cfg.scales, cfg.flip,
                               train_ds.mean, train_ds.std, progress=main)  # fmt: skip
    else:
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                            drop_last=True, pin_memory=device.type == "cuda", worker_init_fn=_worker_ignores_stop_signals)  # fmt: skip
    val_loaders = {}
    for key, ds in val_sets.items():
        shard = list(range(D.rank(), len(ds), D.world_size()))  # no padding: every image counted once
        val_loaders[key] = DataLoader(torch.utils.data.Subset(ds, shard), batch_size=cfg.val_batch_size,
                                      num_workers=min(cfg.workers, 2), collate_fn=collate_eval)  # fmt: skip
    writer = _tensorboard(out) if main else None
    stop = StopFlag()
    stop.install()
    log(f"training {cfg.model} on {train_ds.name} ({len(train_ds)} images, {iters_per_epoch} it/epoch, "
        f"{D.world_size()} process(es), {device}) for {cfg.epochs} epochs -> {out}")  # fmt: skip
    t_start = time.time()
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_ds.set_epoch(epoch)
            sampler.set_epoch(epoch, skip)
            bar = None
            if main:
                from tqdm import tqdm

                bar = tqdm(total=iters_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                           dynamic_ncols=True, mininterval=1.0)  # fmt: skip

            def on_step(step, loss, lr, ips, bar=bar):
                if bar is not None:
                    bar.update(1)
                    if step % max(cfg.log_every, 1) == 0 or step == 1:
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")

            try:
                result = train_one_epoch(fwd, loader, loss_fn, optimizer, scheduler, device, cfg.amp, scaler,
                                         cfg.grad_clip, cfg.channels_last, should_stop=stop, on_step=on_step)  # fmt: skip
            finally:
                if bar is not None:
                    bar.close()
            done = skip + result["steps"]
            skip = 0
            if result["stopped"] and done < iters_per_epoch:
                if main:
                    save_checkpoint(checkpoint(epoch, done), last_path)
                name = signal.Signals(stop.signum).name
                log(f"{name}: saved {last_path} at epoch {epoch + 1}, iteration {done}; run the same command to resume")
                return {"interrupted": name, "epoch": epoch, "iter_in_epoch": done, "best_miou": best_miou, "out": str(out)}
            record = {"epoch": epoch + 1, "iteration": scheduler.last_epoch, "lr": optimizer.param_groups[0]["lr"],
                      "train_loss": round(result["loss"], 6), "images_per_s": round(result["images_per_s"], 2),
                      "seconds": round(result["seconds"], 2), "val_miou": None, "val_pixel_acc": None}  # fmt: skip
            last_epoch = epoch + 1 == cfg.epochs
            if (epoch + 1) % max(cfg.val_every, 1) == 0 or last_epoch:
                for key, val_loader in val_loaders.items():
                    metrics = evaluate(model, val_loader, train_ds.num_classes, device, train_ds.ignore_index,
                                       amp=cfg.amp, channels_last=cfg.channels_last).compute()  # fmt: skip
                    record[f"{key}_miou"] = round(metrics["miou"], 6)
                    record[f"{key}_pixel_acc"] = round(metrics["pixel_acc"], 6)
                    record[f"{key}_iou"] = [None if np.isnan(v) else round(float(v), 6) for v in metrics["iou"]]
            history.append(record)
            score = record.get(f"{select_on}_miou")
            improved = score is not None and score > best_miou
            if improved:
                best_miou = score
            if main:
                state = checkpoint(epoch + 1, 0, finished=last_epoch)
                save_checkpoint(state, last_path)
                if improved:
                    save_checkpoint(state, best_path)
                _write_logs(out, history, train_ds.classes)
                if writer is not None:
                    for k in ("train_loss", "lr", "images_per_s", "val_miou", "val_pixel_acc"):
                        if record.get(k) is not None:
                            writer.add_scalar(k, record[k], epoch + 1)
            miou = "".join(f"  {k} mIoU {100 * record[f'{k}_miou']:.2f}%{' (best)' if improved and k == select_on else ''}"
                           for k in val_sets if record.get(f"{k}_miou") is not None)
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
                f"{record['images_per_s']:.1f} img/s{miou}")  # fmt: skip
            if stop():
                name = signal.Signals(stop.signum).name
                log(f"{name}: saved {last_path} after epoch {epoch + 1}; run the same command to resume")
                return {"interrupted": name, "epoch": epoch + 1, "iter_in_epoch": 0, "best_miou": best_miou, "out": str(out)}
    except NonFiniteLossError as e:
        raise NonFiniteLossError(
            f"{e} (epoch {epoch + 1}). Training stopped; the last good checkpoint is kept at {last_path}. "
            "Lower lr, enable grad_clip, or check the data."
        ) from None
    finally:
        stop.restore()
        if writer is not None:
            writer.close()
    summary = {"epochs": cfg.epochs, "best_miou": best_miou, "out": str(out), "minutes": round((time.time() - t_start) / 60, 2)}
    log(f"done: {cfg.epochs} epochs, best {select_on} mIoU {100 * best_miou:.2f}% -> {best_path}" if best_miou >= 0 else f"done -> {last_path}")
    return summary
