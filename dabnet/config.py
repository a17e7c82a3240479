"""Configs: one dataclass per command; YAML supplies defaults, `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the command's options."""


@dataclass
class TrainConfig:
    """Everything `dabnet train` needs; every field can be set in YAML or with --set."""

    # data
    dataset: str = "camvid"
    data_root: str = "../shared/data/camvid"
    train_split: str = "train"
    val_split: str = "val"
    # Whole sequences (file-name prefixes, e.g. CamVid's 0006R0) taken out of train_split and validated
    # on: a drive never trained on, the honest proxy for a test set of new drives. When set, best.pth
    # is selected on them; val_split is then in-sequence validation (the held-out drives leave it too).
    holdout: List[str] = field(default_factory=list)
    crop_size: List[int] = field(default_factory=lambda: [360, 480])
    scales: List[float] = field(default_factory=lambda: [0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    flip: bool = True
    mean: Optional[List[float]] = None  # None: the dataset's own statistics
    std: Optional[List[float]] = None  # None: the dataset's own; [1, 1, 1] = mean subtraction only
    workers: int = 2
    check_data: bool = True  # scan every file before training (clear errors before hours of work)
    data_on_device: bool = False  # decode once, keep uint8 images on the device, augment there
    # model
    model: str = "dabnet"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    init_from: Optional[str] = None  # weights to start from (ours or official)
    # optimisation
    epochs: int = 1000
    batch_size: int = 16
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 2e-4
    poly_power: float = 0.9
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0  # warm-up starts at lr * warmup_ratio
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    loss: str = "ce"  # ce | ohem
    class_weights: str = "enet"  # enet | median | none
    enet_c: float = 1.02  # w = 1 / ln(c + p); the official DABNet code uses 1.10
    ohem_thresh: float = 0.7
    ohem_min_kept: Optional[int] = None  # None: batch * H * W / 16, as the paper
    # speed
    amp: str = "none"  # none | bf16 | fp16 (fp16 on CUDA only)
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    # validation, logging, checkpoints
    val_every: int = 1
    val_batch_size: int = 4
    log_every: int = 10
    seed: int = 0
    out: str = "runs/camvid"
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class EvalConfig:
    """Options of `dabnet eval`."""

    checkpoint: str = ""
    dataset: str = "camvid"
    data_root: str = "../shared/data/camvid"
    split: str = "val"
    sequences: List[str] = field(default_factory=list)  # keep only frames whose names start with these
    exclude_sequences: List[str] = field(default_factory=list)  # leave these sequences out
    batch_size: int = 1
    flip: bool = False
    scales: List[float] = field(default_factory=lambda: [1.0])
    workers: int = 2
    device: str = "auto"
    json: Optional[str] = None
    confusion_png: Optional[str] = None


def config_names() -> List[str]:
    """Names of the configs shipped in dabnet/configs."""
    folder = resources.files("dabnet") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def find_config(name_or_path: str) -> Path:
    """A YAML path, or the name of a shipped config ('camvid', 'configs/camvid.yaml')."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    stem = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    shipped = resources.files("dabnet") / "configs" / f"{stem}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(f"config {name_or_path!r} not found: give a YAML path or one of {', '.join(config_names())}")


def _coerce(cls: Type[T], key: str, value: Any) -> Any:
    """Parse a --set string into the type of `key`'s default."""
    if not isinstance(value, str):
        return value
    fields = {f.name: f for f in dataclasses.fields(cls)}
    default = fields[key].default if fields[key].default is not dataclasses.MISSING else fields[key].default_factory()
    if value.lower() in ("none", "null"):
        return None
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} expects true or false, got {value!r}")
    if isinstance(default, (list, dict)) or default is None or value.startswith(("[", "{")):
        return yaml.safe_load(value)
    try:
        return type(default)(value) if not isinstance(default, float) else float(value)
    except ValueError:
        raise ConfigError(f"{key} expects a {type(default).__name__}, got {value!r}") from None


def build_config(cls: Type[T], path: Optional[str] = None, overrides: Sequence[str] = (), **kwargs: Any) -> T:
    """Defaults < YAML file < keyword arguments < `key=value` overrides; unknown keys are errors."""
    valid = {f.name for f in dataclasses.fields(cls)}
    values: Dict[str, Any] = {}
    if path:
        cfg_path = find_config(path)
        try:
            loaded = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{cfg_path} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{cfg_path} must hold a mapping of option: value")
        unknown = sorted(set(loaded) - valid)
        if unknown:
            raise ConfigError(f"{cfg_path}: unknown option(s) {unknown}; valid options: {', '.join(sorted(valid))}")
        values.update(loaded)
    values.update({k: v for k, v in kwargs.items() if v is not None})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in valid:
            raise ConfigError(f"unknown option {key!r} in --set; valid options: {', '.join(sorted(valid))}")
        values[key] = _coerce(cls, key, value)
    return cls(**values)


def save_config(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML (beside the checkpoints)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
