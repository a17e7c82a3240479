"""Self-describing checkpoints: atomic writes, safe loads, official DABNet checkpoints too."""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..models import create_model, list_pretrained, pretrained_config
from ..models.dabnet import block_sizes_from_state_dict, convert_official_state_dict, is_official_state_dict
from ..util.files import PathLike, atomic_output

CHECKPOINT_FORMAT = "dabnet-checkpoint/1"
# Weights smaller than this are set to zero when a network is built for use. Weight decay drives the weights of
# channels that never activate towards zero without end; once near or below float32's smallest normal number,
# they and the activations they make fall into subnormal arithmetic, many times slower on CPUs, while adding
# nothing a float32 output can hold.
NEGLIGIBLE = 1e-20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model asked for."""


def save_checkpoint(obj: Dict[str, Any], path: PathLike) -> Path:
    """Write `obj` with torch.save atomically (a temp file in the same folder, fsync, rename); a full disk is an
    OSError naming `path` (atomic_output)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
    return path


@dataclass
class RunState:
    """Where a training run stands, all a resume needs besides the weights and TRAINING_STATE; its fields are
    the checkpoint's run-progress keys (older checkpoints lack some: they take the defaults)."""

    epoch: int = 0  # epochs completed
    iter_in_epoch: int = 0  # steps of the next epoch already trained (after a mid-epoch stop)
    best_miou: float = -1.0
    history: List[Dict[str, Any]] = field(default_factory=list)
    loss_sum: float = 0.0  # loss summed over this epoch's steps so far, so that a resumed epoch's
    loss_steps: int = 0  # train_loss is the mean of the whole epoch, not of the part after the resume
    seconds_sum: float = 0.0  # likewise the epoch's training seconds and images so far, so that a resumed
    images_sum: int = 0  # epoch's seconds and img/s cover all of its steps (the time stopped not counted)
    iteration: int = 0  # optimiser steps taken (the schedule's position)
    finished: bool = False  # the run reached its last epoch

    @classmethod
    def keys(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_checkpoint(cls, ckpt: Dict[str, Any]) -> "RunState":
        defaults = cls()
        return cls(**{k: ckpt[k] if ckpt.get(k) is not None else getattr(defaults, k) for k in cls.keys()})

    def to_checkpoint(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.keys()}

    def add_steps(self, result: Dict[str, Any]) -> None:
        """Add what `train_one_epoch` returned (a whole epoch, or its part up to a stop) to the running epoch."""
        self.iter_in_epoch += result["steps"]
        self.loss_sum += result["loss"] * result["steps"]
        self.loss_steps += result["steps"]
        self.seconds_sum += result["seconds"]
        self.images_sum += result["images"]

    def close_epoch(self) -> None:
        """Count the running epoch as done and clear its sums."""
        self.epoch, self.iter_in_epoch = self.epoch + 1, 0
        self.loss_sum, self.loss_steps, self.seconds_sum, self.images_sum = 0.0, 0, 0.0, 0


# The one checkpoint schema. A checkpoint is NETWORK_KEYS (what rebuilds the network: `model` holds the weights)
# + a description (anything else: dataset, class_names, palette, mean, std, epoch, figures...) + for a training
# checkpoint TRAINING_STATE and the run's progress (RunState's fields). `make_checkpoint` writes it, `Run.restore`
# resumes from it, `load_model` keeps all but weights and training state as `checkpoint_meta`, and
# `average_checkpoints` drops the run's progress.
NETWORK_KEYS = ("format", "model_name", "num_classes", "model_kwargs", "model")
# `train_model`: the trained weights, where a callback publishes others as `model` (EMA's average); `callbacks`: their state.
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng", "train_model", "callbacks")
RUN_PROGRESS = tuple(k for k in RunState.keys() if k != "epoch")  # the epoch also describes the weights


def description(obj: Dict[str, Any]) -> Dict[str, Any]:
    """What a checkpoint says about its weights: everything but the weights themselves and the training state."""
    return {k: v for k, v in obj.items() if k not in ("model", "state_dict", *TRAINING_STATE)}


def make_checkpoint(model: nn.Module, **extra: Any) -> Dict[str, Any]:
    """A checkpoint dict that rebuilds `model` with nothing else (name, classes, kwargs, weights)."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if not hasattr(model, "model_name"):
        raise ValueError("model was not built by dabnet.create_model: its name and arguments are unknown")
    network = (CHECKPOINT_FORMAT, model.model_name, model.num_classes, dict(model.model_kwargs), model.state_dict())
    ckpt: Dict[str, Any] = dict(zip(NETWORK_KEYS, network))
    ckpt.update(extra)
    return ckpt


def resolve_checkpoint(name_or_path: PathLike) -> Path:
    """A file path, or the packaged file behind a pretrained name such as 'dabnet-camvid'."""
    key = str(name_or_path)
    bundled = pretrained_config(key)
    if bundled is not None:
        from importlib import resources

        path = Path(str(resources.files("dabnet") / bundled.file))
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights {key!r} are not in this installation ({path} is missing)")
        return path
    return Path(name_or_path)


def save_safetensors(ckpt: Dict[str, Any], path: PathLike) -> Path:
    """Weights as safetensors, the checkpoint's description as JSON strings in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {k: json.dumps(v) for k, v in ckpt.items() if k != "model"}
    tensors = {k: v.detach().contiguous().cpu() for k, v in ckpt["model"].items()}
    with atomic_output(path, mode=0o644) as tmp:  # package data must be readable by every user
        save_file(tensors, str(tmp), metadata=meta)
    return path


def _read_safetensors(path: Path) -> Dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e
    obj: Dict[str, Any] = {k: json.loads(v) for k, v in meta.items()}
    obj["model"] = state
    return obj


EXPORTED_HINT = "; an exported model runs as it is in predict, eval and serve: elsewhere give the checkpoint it came from"


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load a checkpoint (.pth with `weights_only=True`, or .safetensors), naming the file in any error."""
    path = resolve_checkpoint(path)
    if path.suffix == ".safetensors" and path.is_file():
        return _read_safetensors(path)
    if path.is_dir():
        raise CheckpointError(f"not a dabnet checkpoint: {path} is a folder; give the checkpoint file inside it (e.g. {path}/best.pth)")
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (give a .pth/.safetensors file written by dabnet or the official DABNet "
            f"code, or a bundled name: {', '.join(list_pretrained())})"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # PyTorch's own message suggests weights_only=False, which would run whatever code the file carries:
        # never pass that advice on for a file of unknown origin.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise CheckpointError(f"not a dabnet checkpoint: cannot read {path} as a PyTorch file (it may be truncated or "
                                  f"another kind of file{EXPORTED_HINT})") from None  # fmt: skip
        raise CheckpointError(
            f"not a dabnet checkpoint: {path} holds Python objects beyond tensors and plain containers (a pickled "
            f"{found.group(1)}); dabnet loads weights only. Save `model.state_dict()` or use dabnet.save_checkpoint."
        ) from None
    except Exception as e:  # torch raises several types for truncated and foreign files
        raise CheckpointError(
            f"not a dabnet checkpoint: cannot read {path} as a PyTorch file ({type(e).__name__}: {_first_line(e)}); "
            f"it may be truncated (copy it again) or another kind of file{EXPORTED_HINT}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"not a dabnet checkpoint: {path} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def _first_line(e: BaseException) -> str:
    """The first line of an error, without terminal colour codes (PyTorch colours some of its messages)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0][:200] if text else "no message"


def flush_negligible(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], int]:
    """`state_dict` with floating-point entries of magnitude below NEGLIGIBLE set to zero, and how many were."""
    out, count = {}, 0
    for key, value in state_dict.items():
        if value.is_floating_point():
            tiny = (value.abs() < NEGLIGIBLE) & (value != 0)
            count += int(tiny.sum())
            value = value.masked_fill(tiny, 0)
        out[key] = value
    return out, count


def _strip_prefix(state_dict: Dict[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _state_dict_of(obj: Dict[str, Any], path: PathLike) -> Dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj  # a bare state dict
    raise CheckpointError(f"not a dabnet checkpoint: {path} has no weights (no 'model' or 'state_dict' entry; keys {sorted(map(str, obj))[:8]})")


@dataclass
class Network:
    """What a checkpoint holds, read once: the network's name, classes and arguments, its weights (converted
    to dabnet's key names) and its description. `source` is "dabnet" or "official"."""

    path: str
    name: str
    num_classes: Optional[int]
    kwargs: Dict[str, Any]
    state_dict: Dict[str, torch.Tensor]
    meta: Dict[str, Any]
    source: str


def read_network(path: PathLike, model_name: Optional[str] = None) -> Network:
    """Read a checkpoint (dabnet's, official DABNet's with or without `module.`, or bundled by name) once."""
    obj = read_checkpoint(path)
    state_dict = _strip_prefix(_state_dict_of(obj, path))
    if is_official_state_dict(state_dict):
        state_dict = convert_official_state_dict(state_dict)
        info = block_sizes_from_state_dict(state_dict)
        kwargs = {"block_1": info["block_1"], "block_2": info["block_2"]}
        return Network(str(path), model_name or "dabnet", info.get("num_classes"), kwargs, state_dict,
                       {"source": "official", "epoch": obj.get("epoch")}, "official")  # fmt: skip
    name = model_name or obj.get("model_name")
    if name is None:
        raise CheckpointError(
            f"not a dabnet checkpoint: {path} holds weights without the model's name and arguments (a bare state "
            "dict?). In Python: dabnet.load_model(path, model_name='dabnet', num_classes=N); to make a self-describing "
            "file: dabnet.save_checkpoint(dabnet.io.checkpoint.make_checkpoint(model), 'model.pth')"
        )
    classes = obj.get("num_classes")
    return Network(str(path), name, None if classes is None else int(classes), dict(obj.get("model_kwargs", {})), state_dict,
                   description(obj), "dabnet")  # fmt: skip


def build_model(net: Network, num_classes: Optional[int] = None, map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """The network a `read_network` result describes, its weights loaded (those below NEGLIGIBLE as zero), in eval
    mode, with `checkpoint_meta`."""
    if net.num_classes is not None and num_classes is not None and int(num_classes) != net.num_classes:
        raise CheckpointError(
            f"checkpoint {net.path} was trained for {net.num_classes} classes but {num_classes} were asked for; "
            f"use num_classes={net.num_classes} (or drop it), or a checkpoint trained for {num_classes} classes"
        )
    classes = net.num_classes if net.num_classes is not None else int(num_classes or 19)
    model = create_model(net.name, classes, **net.kwargs)
    missing, unexpected = model.load_state_dict(flush_negligible(net.state_dict)[0], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {net.path} does not fit model {net.name!r} with {classes} classes: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    model.checkpoint_meta = dict(net.meta)
    return model.to(map_location).eval()


def load_model(
    path: PathLike,
    num_classes: Optional[int] = None,
    model_name: Optional[str] = None,
    map_location: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """Build the network a checkpoint describes, load its weights and return it in eval mode.

    Accepts dabnet checkpoints (self-describing) and official DABNet ones (`{"epoch", "model"}`
    with the official key names, with or without DataParallel's `module.` prefix).
    """
    return build_model(read_network(path, model_name), num_classes, map_location)


def average_checkpoints(paths: Sequence[PathLike]) -> Dict[str, Any]:
    """The mean of the weights (BatchNorm statistics included) of checkpoints of one network, described
    like the last of them plus `averaged_from`. Epochs of one run circle a flat region of the loss, and
    their mean lies nearer its middle (SWA, Izmailov et al. 2018): it generalises as well or better than
    any one of them. Weights only: a run cannot resume from it."""
    if len(paths) < 2:
        raise ValueError(f"give two or more checkpoints to average (got {len(paths)})")
    total: Dict[str, torch.Tensor] = {}
    averaged_from, first = [], None
    for path in paths:  # one file at a time: memory stays at one network plus the running sums
        model = load_model(path)
        network = (model.model_name, model.num_classes, model.model_kwargs)
        first = first or network
        if network != first:
            raise CheckpointError(f"cannot average {path} with {paths[0]}: they hold different networks ({network[0]} "
                                  f"{network[1]} classes {network[2]} vs {first[0]} {first[1]} classes {first[2]})")  # fmt: skip
        for key, value in model.state_dict().items():
            # Counters (BatchNorm's num_batches_tracked) are not averaged: the last checkpoint's is kept.
            total[key] = total.get(key, 0) + value.double() if value.is_floating_point() else value
        averaged_from.append({"path": str(path), "epoch": model.checkpoint_meta.get("epoch")})
    last = model.state_dict()
    model.load_state_dict({k: (v / len(paths)).to(last[k].dtype) if last[k].is_floating_point() else v for k, v in total.items()})
    meta = {k: v for k, v in model.checkpoint_meta.items() if k not in RUN_PROGRESS}
    return make_checkpoint(model, **meta, averaged_from=averaged_from)
