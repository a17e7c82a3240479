"""A training run around `engine.train_one_epoch`: data, model, optimiser, checkpoints that survive a kill at any
moment, validation, logs and plots; single process or DDP. `train(cfg)` (`dabnet.train`) runs one from a
`dabnet.config.TrainConfig`."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import DatasetError, SegmentationDataset, build_dataset, select_sequences, shares_frames
from ..data.stats import class_weights, compute_stats
from ..data.transforms import EvalTransform, TrainTransform
from ..io.checkpoint import TRAINING_STATE, CheckpointError, RunState, load_model, make_checkpoint
from ..io.preprocessing import Normalize
from ..models import create_model
from ..models.fused import set_fused
from ..models.layers import BROKEN_LIMIT, broken_channels, reinit_channels
from ..util import distributed as D
from ..util.compiler import usable_compile_cache
from ..util.hardware import describe_hardware
from ..util.options import ConfigError, save_config
from ..util.state import setting
from .callbacks import CallbackSpec, Callbacks, build_callbacks, weights_in
from .engine import NonFiniteLossError, evaluate, poly_warmup_lambda, train_one_epoch
from .losses import build_loss
from .reshard import reshard
from .resume import check_resume_config, claim_out, resume_point, rng_state, same_resume_point, set_rng_state
from .sampling import ResumableSampler, build_loaders
from .signals import StopFlag

# A dabnet.config.TrainConfig: the config layer sits above this one, so it is read by its fields only.
TrainConfig = Any


def _resolve_device(cfg: TrainConfig) -> torch.device:
    device, _ = D.init_distributed(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crops: let cuDNN pick its fastest algorithms
    return device


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
        val_sets["holdout"] = build_dataset(cfg.dataset, cfg.data_root, cfg.train_split, EvalTransform(), include=cfg.holdout)
    if cfg.val_split:
        # In-sequence validation: val_split without the held-out sequences, which it may or may not hold;
        # none when it holds nothing else (then the held-out sequences are the only validation).
        val_ds = build_dataset(cfg.dataset, cfg.data_root, cfg.val_split, EvalTransform())
        held = tuple(s for s in cfg.holdout if any(i.name.startswith(s) for i, _ in val_ds.pairs))  # select_sequences refuses absent ones
        if any(not i.name.startswith(held) for i, _ in val_ds.pairs):  # startswith(()) is False: nothing held keeps all
            val_sets["val"] = select_sequences(val_ds, exclude=held)
    return train_ds, val_sets


def selection_set(cfg: TrainConfig) -> Optional[str]:
    """The validation set best.pth is chosen on: the held-out sequences when there are any."""
    return "holdout" if cfg.holdout else ("val" if cfg.val_split else None)


def _check_files(cfg: TrainConfig, log) -> None:
    from ..data.check import check_split

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
    """The optimiser `cfg.optimizer` names (sgd, adam or adamw: TrainConfig has checked it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


@dataclass
class Run:
    """The pieces of a training run, built once from its config."""

    cfg: TrainConfig
    device: torch.device
    out: Path
    model: nn.Module
    forward: nn.Module  # the model as trained: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: Optional[torch.amp.GradScaler]
    loss_fn: nn.Module
    train_ds: SegmentationDataset
    sampler: ResumableSampler
    loader: Any
    val_loaders: Dict[str, DataLoader]
    select_on: Optional[str]
    meta: Dict[str, Any]
    callbacks: Callbacks

    @property
    def iters_per_epoch(self) -> int:
        return len(self.sampler.inner) // self.cfg.batch_size

    def checkpoint(self, state: RunState, finished: bool = False) -> Dict[str, Any]:
        """Everything to resume exactly (or to use the model), in one self-describing dict: `model` holds the weights
        the callbacks publish (EMA's average), `train_model` the trained ones where those differ."""
        progress = dataclasses.replace(state, iteration=self.scheduler.last_epoch, finished=finished)
        trained = self.model.state_dict()
        published = self.callbacks.published(trained)
        training = (self.optimizer.state_dict(), self.scheduler.state_dict(),
                    self.scaler.state_dict() if self.scaler is not None else None, rng_state(self.device),
                    None if published is trained else trained, self.callbacks.state_dict())  # fmt: skip
        ckpt = make_checkpoint(self.model, **self.meta, **progress.to_checkpoint(), **dict(zip(TRAINING_STATE, training)))
        ckpt["model"] = published
        return ckpt

    def restore(self, ckpt: Dict[str, Any]) -> RunState:
        """Load weights, optimiser, schedule, scaler and RNG from a training checkpoint."""
        if ckpt.get("num_classes") != self.train_ds.num_classes:
            raise CheckpointError(f"cannot resume: checkpoint has {ckpt.get('num_classes')} classes, dataset {self.train_ds.num_classes}")
        optimizer, scheduler, scaler, rng, trained, callbacks = (ckpt.get(k) for k in TRAINING_STATE)
        self.model.load_state_dict(trained if trained is not None else ckpt["model"])
        self.callbacks.load_state_dict(callbacks)
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)
        if self.scaler is not None and scaler:
            self.scaler.load_state_dict(scaler)
        set_rng_state(rng, self.device)
        return RunState.from_checkpoint(ckpt)


def _class_weights(cfg: TrainConfig, train_ds: SegmentationDataset, device: torch.device, log) -> Optional[torch.Tensor]:
    if cfg.class_weights == "none":
        return None
    # One writer of the statistics cache: rank 0 computes (or reads) them and shares them; a failure there is every rank's.
    stats = D.rank0_first(lambda: compute_stats(train_ds, progress=True), share=True)
    weights = torch.tensor(class_weights(stats, cfg.class_weights, cfg.enet_c), dtype=torch.float32, device=device)
    log(f"class weights ({cfg.class_weights}): " + ", ".join(f"{n} {w:.2f}" for n, w in zip(train_ds.classes, weights.tolist())))
    return weights


def _channels_text(broken: Dict[str, List[int]]) -> str:
    return f"{sum(map(len, broken.values()))} channel(s) (" + "; ".join(f"{k} {v}" for k, v in broken.items()) + ")"


def _init_from(model: nn.Module, cfg: TrainConfig, log) -> None:
    """Load `cfg.init_from` into `model`: every tensor whose name and shape match; with another class count the
    classifier (whatever depends on the classes) keeps its fresh initialisation: a new head on pretrained weights."""
    source = load_model(cfg.init_from)
    if source.model_name != cfg.model:
        raise ConfigError(f"init_from={cfg.init_from} holds a {source.model_name}, but this run trains model={cfg.model}; "
                          f"use weights of a {cfg.model}, or --set model={source.model_name}")  # fmt: skip
    theirs, ours = source.state_dict(), model.state_dict()
    kept = {k: v for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
    new = [k for k in ours if k not in kept]
    if len(kept) < len(ours) // 2:
        raise ConfigError(f"init_from={cfg.init_from} shares only {len(kept)} of {len(ours)} tensors with this {cfg.model} "
                          f"(model_kwargs {cfg.model_kwargs} against {source.model_kwargs}); give weights of the same network")  # fmt: skip
    model.load_state_dict(kept, strict=False)
    if not new:
        log(f"initialised from {cfg.init_from}")
        return
    log(f"initialised from {cfg.init_from}: {len(kept)} tensors kept, {len(new)} new for {model.num_classes} classes instead "
        f"of {source.num_classes} ({', '.join(new)})")  # fmt: skip


def _build_model(cfg: TrainConfig, num_classes: int, device: torch.device, init: bool, log) -> Tuple[nn.Module, nn.Module]:
    """(model, forward): the network on its device, and what the steps call (DDP, compiled)."""
    model = create_model(cfg.model, num_classes, **cfg.model_kwargs)
    if cfg.init_from and init:
        _init_from(model, cfg, log)
        broken = broken_channels(model)
        if broken:  # dead for good otherwise: see broken_channels
            reinit_channels(model, broken)
            log(f"re-initialised {_channels_text(broken)} of {cfg.init_from}: weights or statistics non-finite or beyond "
                f"{BROKEN_LIMIT:g}")
    if cfg.channels_last and cfg.precision == "bf16" and device.type == "cpu" and not cfg.fused:
        # torch 2.13's CPU kernel returns garbage weight gradients (inf, 1e34) for dilated depth-wise convolutions
        # in bf16 with channels_last (docs/reports/TRAIN_SPEED.md); the fused kernels do not use it.
        raise ConfigError("channels_last=true with precision=bf16 on a CPU needs fused=true: PyTorch's dilated depth-wise "
                          "convolution returns wrong weight gradients there (docs/reports/TRAIN_SPEED.md)")  # fmt: skip
    set_fused(model, cfg.fused)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and D.is_dist():
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log("sync_bn ignored: PyTorch's SyncBatchNorm runs on CUDA only; each CPU process keeps its own statistics")
    net: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if D.is_dist() else model
    return model, (torch.compile(net) if cfg.compile else net)


def build_run(cfg: TrainConfig, device: torch.device, fresh: bool, log: Callable[..., None],
              callbacks: Optional[Sequence[CallbackSpec]] = None) -> Run:
    """Datasets, model, optimiser, schedule, scaler, loss, loaders and callbacks of `cfg` (`fresh`: not a resume;
    `callbacks`: as `train` takes them)."""
    callbacks = build_callbacks(cfg, device, log, callbacks)  # a teacher that cannot be read stops the run here
    torch.manual_seed(cfg.seed)  # after the callbacks: building a teacher draws from the generator
    train_ds, val_sets = build_datasets(cfg)  # file lists only
    drawn = callbacks.on_data(train_ds)  # checks against the data (a teacher's classes) before any work
    if cfg.check_data and fresh:  # rank 0 reads every file; a problem it finds is every rank's error
        D.rank0_first(lambda: _check_files(cfg, log))
    select_on = selection_set(cfg)
    for key, ds in val_sets.items():
        if shares_frames(ds, train_ds):
            chosen = ", and best.pth is chosen on it" if key == select_on else ""
            log(f"warning: {key} set {ds.name} holds images of the training set {train_ds.name}: its mIoU measures "
                f"fitting, not generalisation{chosen}. Validate on a held-out sequence (--set holdout=[PREFIX]).")
    weights = _class_weights(cfg, train_ds, device, log)
    model, forward = _build_model(cfg, train_ds.num_classes, device, fresh, log)
    # data_on_device under DDP: each rank keeps its own share on its GPU (not the whole dataset on every one)
    sampler = ResumableSampler(train_ds, cfg.seed, cfg.batch_size, fixed_shard=cfg.data_on_device and D.is_dist())
    iters_per_epoch = len(sampler.inner) // cfg.batch_size
    if iters_per_epoch == 0:
        raise DatasetError(f"{train_ds.name} has {len(train_ds)} images per process, fewer than batch_size={cfg.batch_size}")
    optimizer = _optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_warmup_lambda(cfg.epochs * iters_per_epoch, cfg.poly_power, cfg.warmup_iters, cfg.warmup_ratio)
    )
    scaler = torch.amp.GradScaler(device.type) if (cfg.precision == "fp16" and device.type == "cuda") else None
    min_kept = cfg.ohem_min_kept if cfg.ohem_min_kept is not None else cfg.batch_size * cfg.crop_size[0] * cfg.crop_size[1] // 16
    loss_fn = build_loss(cfg.loss, weights, train_ds.ignore_index, cfg.ohem_thresh, min_kept, cfg.fused).to(device)
    loader, val_loaders = build_loaders(cfg, train_ds, drawn, val_sets, sampler, device)
    meta = dict(train_ds.describe(), config=dataclasses.asdict(cfg), selected_on=select_on, hardware=describe_hardware(device),
                world_size=D.world_size(),  # a resume with another number of processes maps its schedule (reshard)
                data_splits={"train": cfg.train_split, "val": cfg.val_split, "holdout": list(cfg.holdout)})  # fmt: skip
    return Run(cfg, device, Path(cfg.out), model, forward, optimizer, scheduler, scaler, loss_fn, train_ds, sampler, loader,
               val_loaders, select_on, meta, callbacks)  # fmt: skip


def _progress(run: Run, state: RunState) -> Tuple[Any, Callable[..., None]]:
    """A progress bar for the epoch (rank 0) and the step callback that feeds it."""
    bar = None
    if D.is_main():
        from ..util.progress import progress_bar

        bar = progress_bar(total=run.iters_per_epoch, initial=state.iter_in_epoch, desc=f"epoch {state.epoch + 1}/{run.cfg.epochs}",
                   leave=False, dynamic_ncols=True, mininterval=1.0)  # fmt: skip

    def on_step(step: int, loss: float, lr: float, ips: float) -> None:
        if bar is not None:
            bar.update(1)
            if step % max(run.cfg.log_every, 1) == 0 or step == 1:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}", refresh=False)

    return bar, on_step


def end_of_epoch(run: Run, state: RunState, log: Callable[..., None]) -> None:
    """Validate when due, record the epoch, and hand it to the callbacks (which save the checkpoints and write the logs)."""
    cfg, epoch = run.cfg, state.epoch + 1
    record = {"epoch": epoch, "iteration": run.scheduler.last_epoch, "lr": run.optimizer.param_groups[0]["lr"],
              "train_loss": round(state.loss_sum / max(state.loss_steps, 1), 6), "images_per_s": round(state.images_sum / max(state.seconds_sum, 1e-9), 2),
              "seconds": round(state.seconds_sum, 2), "val_miou": None, "val_pixel_acc": None}  # fmt: skip
    finished = epoch == cfg.epochs
    run.callbacks.on_epoch_end(record)
    trained = run.model.state_dict()
    published = run.callbacks.published(trained)
    # Each rank's BatchNorm statistics (and EMA's average of them) come from its own batches: rank 0's, the ones it
    # saves, go to every rank, so that the validation, sharded over the ranks, measures the saved weights.
    D.broadcast_from_rank0(trained.values())
    if published is not trained:
        D.broadcast_from_rank0(published.values())
    if epoch % max(cfg.val_every, 1) == 0 or finished:
        # The published weights (EMA's) are the run's figures; the trained ones, where they differ, are shown beside.
        for weights, suffix in [(published, "")] + ([(trained, "_trained")] if published is not trained else []):
            with weights_in(run.model, weights):
                for key, loader in run.val_loaders.items():
                    metrics = evaluate(run.model, loader, run.train_ds.num_classes, run.device, run.train_ds.ignore_index,
                                       precision=cfg.precision, channels_last=cfg.channels_last,
                                       normalize=Normalize(run.train_ds.mean, run.train_ds.std, run.device)).compute()  # fmt: skip
                    record[f"{key}{suffix}_miou"] = round(metrics["miou"], 6)
                    if not suffix:
                        record[f"{key}_pixel_acc"] = round(metrics["pixel_acc"], 6)
                        record[f"{key}_iou"] = [None if np.isnan(v) else round(float(v), 6) for v in metrics["iou"]]
    score = record.get(f"{run.select_on}_miou")
    improved = score is not None and score > state.best_miou
    state.history.append(record)
    state.close_epoch()
    if improved:
        state.best_miou = score
    # last.pth, best.pth, epoch_NNNN.pth, the logs (training.outputs), on rank 0: a file it cannot write (a full disk)
    # stops every rank with its error
    D.rank0_first(lambda: run.callbacks.on_epoch_complete(run, state, improved))
    mious = "".join(f"  {k} mIoU {100 * record[f'{k}_miou']:.2f}%{' (best)' if improved and k == run.select_on else ''}"
                    for k in run.val_loaders if record.get(f"{k}_miou") is not None)  # fmt: skip
    mious += "".join(f" ({100 * record[f'{k}_trained_miou']:.2f}% trained weights)" for k in run.val_loaders
                     if record.get(f"{k}_trained_miou") is not None)  # fmt: skip
    mious += f"  distill KL {record['distill_kl']:.4f}" if "distill_kl" in record else ""
    log(f"epoch {epoch}/{cfg.epochs}  loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  {record['images_per_s']:.1f} img/s{mious}")
    broken = broken_channels(run.model)
    if broken:  # a corrupted update: the channels are dead from here on, and the loss does not show it
        log(f"warning: after epoch {epoch} {_channels_text(broken)} hold non-finite weights or weights beyond "
            f"{BROKEN_LIMIT:g}; they are dead. "
            "Resume from an earlier epoch_NNNN.pth with grad_clip, or start from these weights with init_from, "
            "which re-initialises them.")  # fmt: skip


def stop_run(run: Run, state: RunState, signum: int, log, saved: bool = False) -> Dict[str, Any]:
    """The one way a run stops early: the callbacks save where it stands (unless the epoch's end just did); say how to go on."""
    D.rank0_first(lambda: run.callbacks.on_stop(run, state, saved))
    name = signal.Signals(signum).name
    where = f"at epoch {state.epoch + 1}, iteration {state.iter_in_epoch}" if state.iter_in_epoch else f"after epoch {state.epoch}"
    last = run.out / "last.pth"
    log(f"{name}: saved {last} {where}; run the same command to resume" if last.exists() else
        f"{name}: stopped {where}; no checkpoint was written (no `checkpoints` callback), so there is nothing to resume")  # fmt: skip
    return {"interrupted": name, "epoch": state.epoch, "iter_in_epoch": state.iter_in_epoch, "best_miou": state.best_miou, "out": str(run.out)}


def train(cfg: TrainConfig, resume: Optional[str] = None, restart: bool = False, log: Callable[..., None] = print,
          callbacks: Optional[Sequence[CallbackSpec]] = None) -> Dict[str, Any]:  # fmt: skip
    """Run (or continue) training as `cfg` (a dabnet.config.TrainConfig) says; returns a summary (with `interrupted`
    after a stop). Continues OUT/last.pth unless `restart`, or `resume` names another checkpoint; exits cleanly on
    SIGINT/SIGTERM. `callbacks`: the run's callbacks in call order, registered names or Callback objects (None: every
    registered kind, `training.list_callbacks()`); leave out "tensorboard", say, or put your own beside them."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) and hasattr(cfg, "epochs")):
        raise TypeError(f"train() takes a dabnet.config.TrainConfig, e.g. build_config(TrainConfig, 'camvid', data_root=...), "
                        f"not {type(cfg).__name__}")  # fmt: skip
    # torchrun's processes all get here before the process group exists: RANK tells the first one.
    lock = claim_out(cfg, restart, log) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        with setting(torch.backends.cudnn, "benchmark"):  # _resolve_device turns it on for CUDA: for this run only
            return _train(cfg, resume, restart, log, callbacks)
    finally:
        D.cleanup()  # the process group of a torchrun run ends with it
        if lock is not None:
            lock.close()


def _train(cfg: TrainConfig, resume: Optional[str], restart: bool, log, callbacks: Optional[Sequence[CallbackSpec]]) -> Dict[str, Any]:
    usable_compile_cache()  # before the optimizer, the fused kernels or compile import torch._dynamo, which needs it
    device = _resolve_device(cfg)
    log = log if D.is_main() else (lambda *a, **k: None)
    ckpt = resume_point(cfg, resume, restart)
    same_resume_point(cfg, ckpt, resume)  # before any rank acts on it alone
    if ckpt is not None and ckpt["epoch"] >= cfg.epochs:
        # A longer schedule (--set epochs=N) continues a finished run; the poly decay stretches to it.
        log(f"{resume or Path(cfg.out) / 'last.pth'} already finished {ckpt['epoch']} epochs; raise epochs, use --restart or another --out")
        return {"best_miou": ckpt.get("best_miou"), "epoch": ckpt["epoch"], "out": cfg.out, "finished": True}
    if ckpt is not None:
        check_resume_config(ckpt.get("config") or {}, cfg, resume or str(Path(cfg.out) / "last.pth"), log)
    run = build_run(cfg, device, fresh=ckpt is None, log=log, callbacks=callbacks)
    state = run.restore(ckpt) if ckpt is not None else RunState()
    if ckpt is not None:  # another number of processes than the checkpoint's: its schedule, or a one-line refusal
        reshard(state, ckpt, D.world_size(), run.iters_per_epoch, run.scheduler, cfg.data_on_device,
                resume or str(Path(cfg.out) / "last.pth"), log)  # fmt: skip
    run.callbacks.on_start(run.model)
    if ckpt is not None:
        log(f"resuming {run.out} at epoch {state.epoch + 1}, iteration {state.iter_in_epoch} of {run.iters_per_epoch}")
    D.rank0_first(lambda: save_config(cfg, run.out / "config.yaml"))
    stop = StopFlag()
    stop.install()
    log(f"training {cfg.model} on {run.train_ds.name} ({len(run.train_ds)} images, {run.iters_per_epoch} it/epoch, "
        f"{D.world_size()} process(es), {device}) for {cfg.epochs} epochs -> {run.out}")  # fmt: skip
    t_start, skipped_in_a_row = time.time(), 0
    try:
        while state.epoch < cfg.epochs:
            run.train_ds.set_epoch(state.epoch)
            run.sampler.set_epoch(state.epoch, state.iter_in_epoch)
            bar, on_step = _progress(run, state)
            try:
                result = train_one_epoch(run.forward, run.loader, run.loss_fn, run.optimizer, run.scheduler, device,
                                         cfg.precision, run.scaler, cfg.grad_clip, cfg.channels_last, should_stop=stop,
                                         on_step=on_step, skipped_in_a_row=skipped_in_a_row, callbacks=run.callbacks)  # fmt: skip
            finally:
                if bar is not None:
                    bar.close()
            skipped_in_a_row = result["skipped_in_a_row"]
            if result["skipped_steps"]:
                log(f"warning: epoch {state.epoch + 1}: {result['skipped_steps']} step(s) skipped, their gradients inf or NaN "
                    "(weights and optimiser state left as they were)")  # fmt: skip
            state.add_steps(result)
            epoch_done = state.iter_in_epoch >= run.iters_per_epoch or not result["stopped"]  # the loader ran dry
            if epoch_done:
                end_of_epoch(run, state, log)
            if result["stopped"]:  # agreed by every process (train_one_epoch): the one signalled, or not
                return stop_run(run, state, stop.signum or signal.SIGTERM, log, saved=epoch_done)
    except NonFiniteLossError as e:
        last = run.out / "last.pth"  # named only when there is one: a run can fail before its first epoch ends
        kept = f"the last good checkpoint is kept at {last}" if last.exists() else "no epoch finished, so no checkpoint was saved"
        raise NonFiniteLossError(f"{e} (epoch {state.epoch + 1}). Training stopped; {kept}. Lower lr, enable grad_clip, "
                                 "or check the data.") from None  # fmt: skip
    finally:
        stop.restore()
        run.callbacks.on_end(run)
    best = run.out / "best.pth"
    log(f"done: {cfg.epochs} epochs, best {run.select_on} mIoU {100 * state.best_miou:.2f}% -> {best}" if state.best_miou >= 0 else f"done -> {run.out / 'last.pth'}")
    return {"epochs": cfg.epochs, "epoch": state.epoch, "best_miou": state.best_miou, "out": str(run.out), "minutes": round((time.time() - t_start) / 60, 2)}
