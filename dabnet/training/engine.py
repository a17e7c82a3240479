"""Plain training and evaluation functions: one epoch of training, one pass of evaluation."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..io.preprocessing import Normalize
from ..runtimes.runner import FunctionRunner, Runner, predict_image_labels
from ..util.distributed import agree, every_rank, raise_together, rank
from ..util.metrics import ConfusionMatrix
from ..util.precision import autocast


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops and keeps the last good checkpoint."""


def poly_warmup_lambda(total_iters: int, power: float = 0.9, warmup_iters: int = 0, warmup_ratio: float = 1 / 3) -> Callable[[int], float]:
    """LR factor per iteration: poly decay (1 - it/total)^power, times a linear warm-up from `warmup_ratio`."""

    def factor(it: int) -> float:
        poly = max(0.0, 1.0 - it / max(total_iters, 1)) ** power
        if it < warmup_iters:
            return poly * (warmup_ratio + (1.0 - warmup_ratio) * it / warmup_iters)
        return poly

    return factor


MAX_SKIPPED_IN_A_ROW = 10  # steps with non-finite gradients in a row before training stops


def clip_and_check(model: nn.Module, grad_clip: float = 0.0) -> bool:
    """Clip the gradients' total norm to `grad_clip` (when > 0); False when a gradient is inf, NaN or
    so large that its square is inf. One such step would poison Adam's moments for good (an inf second
    moment freezes its weight), so the caller skips it, as GradScaler does under fp16."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return True
    if grad_clip > 0:  # clipped gradients are small whenever their norm is finite
        return bool(torch.isfinite(nn.utils.clip_grad_norm_(params, grad_clip)))
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
    # Squared, as Adam's second moment squares each gradient: above ~1.8e19 that overflows fp32 to inf.
    return bool(torch.isfinite(norm * norm))


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    precision: str = "fp32",
    scaler: Optional[torch.amp.GradScaler] = None,
    grad_clip: float = 0.0,
    channels_last: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    on_step: Optional[Callable[[int, float, float, float], None]] = None,
    skipped_in_a_row: int = 0,
    callbacks: Optional[Any] = None,
) -> Dict[str, float]:
    """Train over `batches` of (images, masks, *extra); stops early (cleanly, between steps) when `should_stop()`
    turns true. A step whose gradients are inf or NaN is skipped and counted (`skipped_steps`); `skipped_in_a_row`
    carries the count of such steps that ended the previous epoch, so that a run of them across epochs stops
    training. `callbacks` (training.callbacks.Callbacks) see each step's batch, logits and loss (and may add to the
    loss), and each step's end."""
    model.train()
    total_loss, steps, images, skipped = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    stopped = False
    it = iter(batches)
    try:
        while True:
            batch, failure, ran_dry = None, None, False
            try:
                batch = next(it)
            except StopIteration:
                ran_dry = True
            except Exception as e:
                failure = e
            # One agreement per step, before the forward (DDP's first collective), so that every rank leaves the loop
            # at the same step and in the same way: a loader that failed or ran dry on one rank, or a stop signal that
            # reached one process, is every rank's. The trainer's loader workers ignore SIGINT/SIGTERM, but a loader
            # that fails while a stop is pending (a worker killed along with the group) is that stop. should_stop() is
            # asked once per step taken (and on a failure): a stop that came during a step ends the epoch after it.
            stop_here = should_stop() if (steps > 0 or failure is not None) else False
            own_failure = failure if failure is not None and not stop_here else None
            failed, ran_dry, stop_now = agree(own_failure is not None, ran_dry, stop_here)
            if failed:
                raise_together(own_failure)
            if stop_now:
                stopped = True
                break
            if ran_dry:
                break
            assert batch is not None
            x, y, *extra = (t.to(device, non_blocking=True) for t in batch)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = model(x)
            loss = loss_fn(logits, y)
            if callbacks is not None:
                loss = callbacks.on_loss((x, y, *extra), logits, loss)
            losses = every_rank(loss)  # every rank stops together on a non-finite loss, the bad one or not
            bad = next((r for r, v in enumerate(losses) if not math.isfinite(v)), None)
            if bad is not None:
                where = f" in process {bad}" if len(losses) > 1 else ""
                raise NonFiniteLossError(f"loss is {losses[bad]}{where} after {steps} step(s) of this epoch")
            own_loss = losses[rank()]  # this rank's, read once: no further host sync for the logs
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:  # fp16: the scaler skips steps with inf/NaN gradients itself
                scaler.scale(loss).backward()
                if grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if clip_and_check(model, grad_clip):
                    optimizer.step()
                    skipped_in_a_row = 0
                else:
                    skipped += 1
                    skipped_in_a_row += 1
                    if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                        raise NonFiniteLossError(f"gradients were inf or NaN (the loss finite) at {skipped_in_a_row} steps in a row")
            if callbacks is not None:
                callbacks.on_step_end(model)
            scheduler.step()
            steps += 1
            images += x.shape[0]
            total_loss += own_loss
            if on_step is not None:
                on_step(steps, own_loss, optimizer.param_groups[0]["lr"], images / (time.perf_counter() - t0))
    finally:
        # An exception's traceback keeps this frame alive, and with it the loader's workers; they ignore
        # SIGTERM (see signals.py), so the terminate() of interpreter exit could not end them and the process
        # would hang. Dropping the iterator now shuts them down in order.
        del it
    seconds = time.perf_counter() - t0
    return {
        "loss": total_loss / max(steps, 1),
        "steps": steps,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / max(seconds, 1e-9),
        "stopped": stopped,
        "skipped_steps": skipped,
        "skipped_in_a_row": skipped_in_a_row,
    }


def live_runner(model: nn.Module, device: torch.device, precision: str = "fp32", channels_last: bool = False) -> Runner:
    """The network being trained as a runner, in place (no copy, no folding): autocast to `precision`, NHWC input when
    `channels_last`, fp32 logits."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            return model(x.to(device)).float()

    return FunctionRunner(forward)


@torch.inference_mode()
def evaluate(
    model: Union[nn.Module, Runner],
    batches: Iterable[Tuple[Union[torch.Tensor, List[torch.Tensor]], Union[torch.Tensor, List[torch.Tensor]]]],
    num_classes: int,
    device: torch.device,
    ignore_index: int = 255,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    precision: str = "fp32",
    channels_last: bool = False,
    *,
    normalize: Normalize,
) -> ConfusionMatrix:
    """Confusion matrix of whole, full-resolution images (NxHxWx3 RGB uint8, as `EvalTransform` gives them), summed
    over DDP ranks. Labels come from `runtimes.predict_image_labels`, the route predict takes, with `normalize`;
    `model` is the network being trained (run by `live_runner`) or a runner (dabnet.runtimes)."""
    if isinstance(model, nn.Module):
        model.eval()
        model = live_runner(model, device, precision, channels_last)
    cm = ConfusionMatrix(num_classes, ignore_index, device)
    for images, masks in batches:
        # Batches of one size arrive stacked; images of mixed sizes arrive as lists.
        pairs = [(images, masks)] if isinstance(images, torch.Tensor) else [(i[None], m[None]) for i, m in zip(images, masks)]
        for x, y in pairs:
            pred = predict_image_labels(model, x.cpu().numpy(), normalize, scales, flip)
            cm.update(pred.to(cm.mat.device), y.to(cm.mat.device))  # a runner on the CPU (an exported file) beside a GPU matrix
    return cm.all_reduce()
