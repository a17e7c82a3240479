"""Distillation (`distill_from: CHECKPOINT`): the loss adds, to the cross-entropy on the ground truth, a
pixel-wise KL divergence to a teacher's class probabilities, weighted and temperature-scaled (Hinton et al.
2015). The teacher is any checkpoint of a network with the run's classes, optionally run as its own
ensemble (`distill_scales`, `distill_flip`): its averaged probabilities are computed once per training
frame, at the frame's own size, and kept in a store checked by content (`TeacherCache`); the loader scales, crops
and flips them with the same draws as the image and its mask (data.transforms.TrainTransform)."""

from __future__ import annotations

import hashlib
import io
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..io.checkpoint import CheckpointError, load_model
from ..models.fused import run_compiled
from ..runtimes.cache import hash_weights, source_digest
from ..runtimes.runner import predict_logits
from ..util import distributed as D
from ..util.files import check_output_folder
from ..util.store import TAG, DamagedEntry, Entry, Store, file_digest, key_digest, package_versions
from .callbacks import Callback, register_callback

# The maps are stored at 1/CACHE_STRIDE of the frame's size: DABNet's logits are at 1/8 of its input, so even
# the teacher's 2x scale carries no detail finer than 1/4 of the frame, and a quarter of the pixels loses nothing
# that the bilinear resize back to the frame does not restore.
CACHE_STRIDE = 2
_LOG_FLOOR = 1e-6  # probabilities below one uint8 step are stored as 0; their log is taken at this floor


class DistillError(ValueError):
    """A teacher that cannot teach this run (missing, other classes, a cache folder that is not ours)."""


def _kl_and_grad(logits: torch.Tensor, soft: torch.Tensor, target: torch.Tensor, ignore_index: int, temperature: float):
    """distillation_loss's value and its gradient with respect to `logits`, in one pass (no autograd graph):
    d/dz of T^2 * KL(q_t || softmax(z / T)) is T * (softmax(z / T) - q_t)."""
    p = soft.float()
    total = p.sum(1, keepdim=True)
    if temperature == 1.0:  # q_t is the teacher's probabilities themselves
        q_t = p / total.clamp_min(1.0)
        log_qt = torch.log(q_t.clamp_min(_LOG_FLOOR))
    else:
        log_qt = torch.log_softmax(torch.log((p / total.clamp_min(1.0)).clamp_min(_LOG_FLOOR)) / temperature, 1)
        q_t = log_qt.exp()
    log_qs = torch.log_softmax(logits.float() / temperature, 1)
    valid = ((target != ignore_index) & (total[:, 0] > 0)).to(torch.float32).unsqueeze(1)
    scale = valid * (temperature * temperature / valid.sum().clamp_min(1.0))
    loss = (q_t * (log_qt - log_qs) * scale).sum()
    grad = (log_qs.exp() - q_t) * (scale / temperature)
    return loss, grad.to(logits.dtype)


class _DistillationLoss(torch.autograd.Function):
    """The KL term with its gradient computed alongside, so that backward is one multiplication."""

    @staticmethod
    def forward(ctx, logits, soft, target, ignore_index: int, temperature: float, fused: bool):  # type: ignore[override]
        out = run_compiled(_kl_and_grad, logits.detach(), soft, target, ignore_index, temperature) if fused else None
        loss, grad = _kl_and_grad(logits.detach(), soft, target, ignore_index, temperature) if out is None else out
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None, None


def distillation_loss(logits: torch.Tensor, soft: torch.Tensor, target: torch.Tensor, ignore_index: int,
                      temperature: float = 1.0, fused: bool = False) -> torch.Tensor:  # fmt: skip
    """T^2 * mean over labelled pixels of KL(teacher_T || student_T): the teacher's uint8 probabilities (NCHW,
    any scale: they are normalised per pixel), sharpened or softened as softmax(log p / T), against
    softmax(logits / T). Pixels whose mask is `ignore_index`, or whose teacher map is all zero (padding), count not.
    `fused`: value and gradient on one compiled kernel (models.fused.run_compiled), where kernels compile."""
    return _DistillationLoss.apply(logits, soft, target, ignore_index, float(temperature), fused)


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    hash_weights(h, model)
    return h.hexdigest()[:16]


MAP_FORMAT = 1  # of a stored map (HxWxC uint8 .npy at 1/CACHE_STRIDE): a change of it makes new keys


class TeacherCache:
    """The teacher's map of each training frame, one entry of a store checked by content (`util.store`) under
    `folder`. An entry's key holds what made the map: the teacher (weights, network, code), the views, the stride, the
    normalisation, the versions that decode and run it, and the frame's own bytes; so runs that share the folder
    with other options keep their entries beside each other's, a frame replaced in place is another entry, and
    nothing but its own damage removes one. A damaged map (or one of the wrong shape) is made again where it is
    read, with one warning naming the file."""

    def __init__(self, folder: Path, options: Dict[str, Any], source: str) -> None:
        self.folder, self.options, self.source = Path(folder), options, source
        self.store = Store(self.folder, "teacher map")
        self.names: List[str] = []  # the entry of each dataset index (`index` fills it)
        self.frames: List[str] = []
        self._runner: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __getstate__(self) -> Dict[str, Any]:  # a loader worker loads its own teacher, if it ever needs one
        return {**self.__dict__, "_runner": None}

    def claim(self) -> None:
        """Refuse a folder that holds other files than a teacher cache's (a typo must not fill someone's folder)."""
        check_output_folder(self.folder, "distill_cache")
        if self.folder.is_dir() and not (self.folder / TAG).is_file() and not (self.folder / "cache.json").is_file():
            if any(self.folder.iterdir()):  # cache.json: one made by an older dabnet, whose files are left as they are
                raise DistillError(f"distill_cache={self.folder} holds files that are not a teacher cache; "
                                   "give an empty or new folder")  # fmt: skip

    def index(self, frames: Sequence[Path]) -> List[int]:
        """Name each frame's entry by the options and the frame's bytes; the indices whose map is still to make."""
        options = key_digest(self.options)
        self.frames = [str(p) for p in frames]
        self.names = [key_digest(options, file_digest(p)) for p in frames]
        return [i for i, name in enumerate(self.names) if not self.store.has(name)]

    def _key(self, index: int) -> Dict[str, Any]:
        return {"frame": self.frames[index], "teacher": self.source,
                **{k: self.options[k] for k in ("scales", "flip", "stride")}}  # fmt: skip

    def store_map(self, index: int, probs: np.ndarray) -> None:
        """Keep frame `index`'s map (hxwxC uint8)."""
        self.store.write(self.names[index], lambda folder: np.save(folder / "map.npy", probs), key=self._key(index))

    def load(self, index: int, image: np.ndarray) -> np.ndarray:
        """Frame `index`'s map, checked against what was written and against the frame's size; made again here
        when it is missing or damaged."""
        h, w = image.shape[:2]
        shape = (math.ceil(h / CACHE_STRIDE), math.ceil(w / CACHE_STRIDE), int(self.options["classes"]))

        def load(entry: Entry) -> np.ndarray:
            try:
                probs = np.load(io.BytesIO(entry.files["map.npy"]), allow_pickle=False)
            except (KeyError, ValueError, OSError, EOFError) as e:
                raise DamagedEntry(f"not a map: {str(e)[:80]}", "map.npy") from None
            if probs.dtype != np.uint8 or probs.shape != shape:
                raise DamagedEntry(f"a {probs.dtype} map of shape {probs.shape}, where this frame's is uint8 {shape}", "map.npy")
            return probs

        build = lambda folder: np.save(folder / "map.npy", self._make(image))  # noqa: E731
        return self.store.get(self.names[index], build, load, key=self._key(index))

    def _make(self, image: np.ndarray) -> np.ndarray:
        """The teacher's map of `image`, made in this process (a loader worker's included) on the CPU."""
        if self._runner is None:
            from ..runtimes import prepare

            teacher = load_teacher(self.source)
            if _weights_digest(teacher) != self.options["weights"]:
                raise DistillError(f"distill_from={self.source} changed since this run started, so a damaged teacher map "
                                   f"cannot be made again from it; restart the run")  # fmt: skip
            self._runner = prepare(teacher, "fold", "fp32", "cpu")
        o = self.options
        return teacher_probabilities(self._runner, image, o["mean"], o["std"], o["scales"], o["flip"], torch.device("cpu"))


@torch.inference_mode()
def teacher_probabilities(teacher: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray, mean: Sequence[float], std: Sequence[float],
                          scales: Sequence[float], flip: bool, device: torch.device) -> np.ndarray:  # fmt: skip
    """The teacher's class probabilities of an HxWx3 uint8 image, averaged over its views, at 1/CACHE_STRIDE of
    the image's size, as hxwxC uint8 (probability * 255, rounded)."""
    x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float()
    x = (x - torch.tensor(mean, device=device).view(1, 3, 1, 1)) / torch.tensor(std, device=device).view(1, 3, 1, 1)
    out = predict_logits(teacher, x, scales, flip)
    views = len(scales) * (2 if flip else 1)
    probs = out.softmax(1) if views == 1 else out / views  # predict_logits sums probabilities over several views
    h, w = image.shape[:2]
    probs = F.interpolate(probs, size=(math.ceil(h / CACHE_STRIDE), math.ceil(w / CACHE_STRIDE)), mode="area")
    return (probs[0] * 255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class DistillDataset(Dataset):
    """A training dataset whose samples also carry the teacher's map: (image, mask, soft)."""

    def __init__(self, base: Any, cache: TeacherCache) -> None:
        self.base, self.cache = base, cache

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, mask = self.base.load_pair(index)
        rng = np.random.default_rng([self.base.seed, self.base.epoch, index])  # the base dataset's own draws
        return self.base.transform(image, mask, rng, soft=self.cache.load(index, image))


class Distill(Callback):
    """Adds `weight` * distillation_loss to the loss of every step; reports the epoch's mean KL as `distill_kl`."""

    name = "distill"

    def __init__(self, teacher: nn.Module, source: str, scales: Sequence[float], flip: bool, weight: float,
                 temperature: float, cache_folder: Path, device: torch.device, fused: bool = False, log=print) -> None:  # fmt: skip
        self.teacher, self.source = teacher, source
        self.scales, self.flip = [float(s) for s in scales], bool(flip)
        self.weight, self.temperature = float(weight), float(temperature)
        self.cache_folder, self.device, self.fused, self.log = Path(cache_folder), device, fused, log
        self.ignore_index = 255
        self.kl_sum, self.kl_steps = 0.0, 0

    def check(self, dataset: Any) -> None:
        """The teacher's classes are the dataset's (by name where the teacher names them)."""
        meta = getattr(self.teacher, "checkpoint_meta", {}) or {}
        names = meta.get("class_names")
        if self.teacher.num_classes != dataset.num_classes or (names is not None and list(names) != list(dataset.classes)):
            theirs = names if names is not None else f"{self.teacher.num_classes} classes"
            raise DistillError(f"distill_from={self.source} predicts {theirs}, but {dataset.name} has {dataset.classes}; "
                               "give a teacher trained on these classes")  # fmt: skip

    def on_data(self, dataset: Any) -> Any:
        self.check(dataset)
        self.ignore_index = dataset.ignore_index
        meta = self.teacher.checkpoint_meta or {}
        self.mean, self.std = list(meta.get("mean") or dataset.mean), list(meta.get("std") or dataset.std)
        options = {"format": MAP_FORMAT, "model": self.teacher.model_name, "kwargs": getattr(self.teacher, "model_kwargs", {}),
                   "weights": _weights_digest(self.teacher), "classes": self.teacher.num_classes, "scales": self.scales,
                   "flip": self.flip, "stride": CACHE_STRIDE, "mean": self.mean, "std": self.std,
                   "code": source_digest(self.teacher, sys.modules[__name__], sys.modules[predict_logits.__module__]),
                   "versions": package_versions(("dabnet", "torch", "numpy", "pillow"))}  # fmt: skip
        self.dataset, self.cache = dataset, TeacherCache(self.cache_folder, options, self.source)
        self.cache.claim()
        return DistillDataset(dataset, self.cache)

    def on_start(self, model: nn.Module) -> None:
        """The teacher's maps of every training frame not cached yet (by the main process; the others wait)."""
        todo = self.cache.index([image for image, _ in self.dataset.pairs])  # every rank: its loader reads by these names

        def make_maps() -> None:
            if todo:
                from ..runtimes import prepare
                from ..util.progress import progress_bar

                # BatchNorm folded into the convolutions: the same probabilities to float rounding, fewer passes.
                runner = prepare(self.teacher.to(self.device), "fold", "fp32", str(self.device))
                views = f"scales {self.scales}{' + flip' if self.flip else ''}"
                for i in progress_bar(todo, desc=f"teacher maps ({views}) -> {self.cache_folder}", unit="img", leave=False):
                    image = self.dataset.load_pair(i)[0]
                    self.cache.store_map(i, teacher_probabilities(runner, image, self.mean, self.std, self.scales, self.flip, self.device))
                del runner
            self.log(f"distilling from {self.source} ({len(self.dataset)} teacher maps in {self.cache_folder}, "
                     f"{len(todo)} computed now), weight {self.weight:g}, temperature {self.temperature:g}")  # fmt: skip

        # The others wait for rank 0 under the group's timeout (DABNET_DIST_TIMEOUT), and raise its error if it fails.
        D.rank0_first(make_maps)

    def on_loss(self, batch: Sequence[torch.Tensor], logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        if len(batch) < 3:
            raise DistillError("distillation needs the teacher's maps in each batch (image, mask, soft); this loader gives none")
        _, target, soft = batch[:3]
        kl = distillation_loss(logits, soft, target, self.ignore_index, self.temperature, self.fused and logits.requires_grad)
        self.kl_sum += float(kl.detach())
        self.kl_steps += 1
        return loss + self.weight * kl

    def on_epoch_end(self, record: Dict[str, Any]) -> None:
        record["distill_kl"] = round(self.kl_sum / max(self.kl_steps, 1), 6)
        self.kl_sum, self.kl_steps = 0.0, 0

    def state_dict(self) -> Dict[str, Any]:
        return {"kl_sum": self.kl_sum, "kl_steps": self.kl_steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.kl_sum, self.kl_steps = float(state.get("kl_sum", 0.0)), int(state.get("kl_steps", 0))


def load_teacher(source: str) -> nn.Module:
    """The teacher network from a checkpoint path or a pretrained name; a one-line DistillError otherwise."""
    try:
        return load_model(source)
    except FileNotFoundError:
        raise DistillError(f"distill_from={source}: no such file or pretrained name; give a checkpoint path "
                           "(.pth, .safetensors) or a bundled name such as dabnet-camvid") from None  # fmt: skip
    except (CheckpointError, OSError, ValueError, RuntimeError) as e:
        raise DistillError(f"distill_from={source} cannot be read as a teacher: {e}") from None


@register_callback("distill", "distillation from a teacher's (ensemble's) probabilities (distill_from)")
def _from_config(cfg: Any, device: torch.device, log) -> Optional[Distill]:
    if not getattr(cfg, "distill_from", None):
        return None
    teacher = load_teacher(cfg.distill_from)
    folder = Path(cfg.distill_cache) if cfg.distill_cache else Path(cfg.out) / "teacher_cache"
    return Distill(teacher, cfg.distill_from, cfg.distill_scales, cfg.distill_flip, cfg.distill_weight, cfg.distill_temperature,
                   folder, device, fused=cfg.fused, log=log)  # fmt: skip
