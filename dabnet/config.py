"""Configs: one dataclass per command; YAML supplies defaults, `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

from .data.importers import IMPORTERS
from .data.registry import list_datasets
from .inference.outputs import OUTPUT_KINDS
from .runtimes import backend_help, backend_names, export_formats
from .util.precision import PRECISIONS

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the command's options."""


def _input_paths(value: Any) -> List[Path]:
    """The paths an input option names: files, folders, glob matches, bundled weights' files."""
    import glob

    from .io.checkpoint import resolve_checkpoint

    paths = []
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if not isinstance(item, str) or not item:
            continue
        if Path(item).exists():
            paths.append(Path(item))
        elif any(c in item for c in "*?["):
            paths += [Path(p) for p in glob.glob(item)]
        else:
            try:
                paths.append(resolve_checkpoint(item))  # a bundled name; anything else names no file
            except FileNotFoundError:
                pass
    return [p for p in paths if p.exists()]


# What a dataset or a folder of images holds: an output file of these kinds inside an input folder is refused.
_READ_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".yaml", ".yml")


def check_io(cfg: Any) -> None:
    """No output of a command lands on what it reads: an output file is never one of its input files, nor an
    existing image, mask or dataset file inside an input folder; an output folder and an input never hold one another. Every
    command's output options go through here (their fields say io="out" or "out_dir"), before any work."""
    from .util.files import OutputError

    inputs: List[Tuple[str, Path]] = []
    outputs: List[Tuple[str, Path, str]] = []
    for f in dataclasses.fields(cfg):
        io, value = f.metadata.get("io"), getattr(cfg, f.name)
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        if io == "in":
            inputs += [(flag, p.resolve()) for p in _input_paths(value)]
        elif io in ("out", "out_dir") and value:
            outputs.append((flag, Path(value).resolve(), io))
    for flag, out, io in outputs:
        for what, p in inputs:
            if io == "out" and out.exists() and out.is_file() and (p == out or (p.is_file() and os.path.samefile(p, out))):
                raise OutputError(f"{flag} {out} is also read by this command ({what}): it would be overwritten; choose another {flag}")
            if io == "out" and out.exists() and p.is_dir() and p in out.parents and out.suffix.lower() in _READ_SUFFIXES:
                raise OutputError(f"{flag} {out} is a file inside {p} ({what}), which this command reads: it would be "
                                  f"overwritten; choose another {flag}")  # fmt: skip
            if io == "out_dir" and (p == out or out in p.parents or (p.is_dir() and p in out.parents)):
                raise OutputError(f"{flag} {out} and {p} ({what}), which this command reads, hold one another: its "
                                  f"outputs could overwrite or mix with what it reads; choose a folder apart for {flag}")  # fmt: skip


def config_names() -> List[str]:
    """Names of the configs shipped in dabnet/configs."""
    folder = resources.files("dabnet") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def parse_size(text: str) -> Tuple[int, int]:
    """'512x1024' -> (512, 1024): height x width."""
    import argparse

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH (e.g. 512x1024), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def option(default: Any = dataclasses.MISSING, help: Any = "", *, factory: Any = None, **cli: Any) -> Any:
    """A config field whose metadata carries its command-line help and, in `cli`, argparse details:
    choices, positional, required, nargs, type, metavar, flag (another option name), hidden (no flag); and
    io: "in" (a file or folder the command reads), "out" (a file it writes), "out_dir" (a folder it fills),
    which `check_io` holds against each other before the command runs.
    `help` and `choices` may be functions, called when a parser is built (registries that grow at run time)."""
    meta = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


DEVICE_HELP = "auto (the GPU when there is one and the backend runs there, else the CPU), cpu, cuda or cuda:N"


OPTIMIZERS = ["adam", "adamw", "sgd"]
LOSSES = ["ce", "ohem"]
CLASS_WEIGHTS = ["enet", "median", "none"]
TRAIN_PRECISIONS = ["fp32", "bf16", "fp16"]  # autocast; fp16 on CUDA only


def list_model_names() -> List[str]:
    """The registered networks (called when a parser or a check needs them: registries grow at run time)."""
    from .models import list_models

    return list_models()


@dataclass
class TrainConfig:
    """Everything `dabnet train` needs; every field can be set in YAML or with --set."""

    # data
    dataset: str = option("camvid", "dataset kind (the dataset registry)", choices=list_datasets)
    data_root: str = option("../shared/data/camvid", "dataset root (for 'folder': the dataset YAML)")
    train_split: str = option("train", "split trained on")
    val_split: Optional[str] = option("val", "split validated on each val_every epochs; None: no in-sequence validation")
    holdout: List[str] = option(help="whole sequences (file-name prefixes, e.g. CamVid's 0006R0) taken out of train_split and validated on: drives never trained on, the honest proxy for a test set; best.pth is then chosen on them", factory=list)  # fmt: skip
    crop_size: List[int] = option(help="[HEIGHT, WIDTH] of the random training crops", factory=lambda: [360, 480])
    scales: List[float] = option(help="random rescaling factors of the training images (the paper: 0.75 to 2)", factory=lambda: [0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    flip: bool = option(True, "random horizontal flips")
    mean: Optional[List[float]] = option(None, "None: the dataset's own statistics")
    std: Optional[List[float]] = option(None, "None: the dataset's own; [1, 1, 1] = mean subtraction only")
    workers: int = option(2, "data-loading processes")
    check_data: bool = option(True, "scan every file before training (clear errors before hours of work)")
    data_on_device: bool = option(False, "decode once, keep uint8 images on the device, augment there")
    # model
    model: str = option("dabnet", "network (dabnet models lists them)", choices=list_model_names)
    model_kwargs: Dict[str, Any] = option(help="the network's own options, e.g. {block_1: 3, block_2: 6}", factory=dict)
    init_from: Optional[str] = option(None, "weights to start from (ours or official)")
    # optimisation
    epochs: int = option(1000, "length of the poly schedule, in epochs")
    batch_size: int = option(16, "images per step (per process under torchrun)")
    optimizer: str = option("adam", "optimizer", choices=OPTIMIZERS)
    lr: float = option(1e-3, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    betas: List[float] = option(help="Adam/AdamW betas", factory=lambda: [0.9, 0.999])
    weight_decay: float = option(2e-4, "L2 weight decay")
    poly_power: float = option(0.9, "exponent of the poly learning-rate decay")
    warmup_iters: int = option(500, "linear warm-up steps")
    warmup_ratio: float = option(1.0 / 3.0, "warm-up starts at lr * warmup_ratio")
    grad_clip: float = option(0.0, "max gradient norm; 0 = off")
    # extensions (dabnet.training): weight EMA, and distillation from a teacher's (ensemble's) probabilities
    ema: float = option(0.0, "decay of an exponential moving average of the weights, validated and saved as the model; 0 = off")  # fmt: skip
    distill_from: Optional[str] = option(None, "teacher: a checkpoint path or bundled name with this run's classes; None = off")  # fmt: skip
    distill_scales: List[float] = option(help="the teacher's ensemble: input scales, probabilities averaged", factory=lambda: [1.0])
    distill_flip: bool = option(False, "the teacher's ensemble also sees horizontal flips")
    distill_weight: float = option(1.0, "loss = CE + weight * T^2 * KL(teacher_T || student_T)")
    distill_temperature: float = option(1.0, "softmax temperature of teacher and student in the KL term")
    distill_cache: Optional[str] = option(None, "folder of the teacher's maps (None: OUT/teacher_cache); runs may share one")  # fmt: skip
    loss: str = option("ce", "ce (cross-entropy) or ohem (online hard example mining, as the paper's Cityscapes recipe)", choices=LOSSES)
    class_weights: str = option("enet", "class weighting of the loss: enet (1 / ln(c + p)), median frequency, or none", choices=CLASS_WEIGHTS)
    enet_c: float = option(1.02, "w = 1 / ln(c + p); the official DABNet code uses 1.10")
    ohem_thresh: float = option(0.7, "OHEM keeps pixels whose true-class probability is below this")
    ohem_min_kept: Optional[int] = option(None, "None: batch * H * W / 16, as the paper")
    # speed
    precision: str = option("fp32", "fp32, or bf16/fp16 autocast (fp16 on CUDA only); formerly `amp` (none = fp32)", choices=TRAIN_PRECISIONS)  # fmt: skip
    channels_last: bool = option(False, "NHWC memory layout (faster on GPUs with tensor cores)")
    compile: bool = option(False, "torch.compile the training step")
    fused: bool = option(True, "BatchNorm+PReLU pairs, the x8 upsampling and the cross-entropy on compiled kernels (models.fused): same parameters and numbers, faster on a CPU; falls back to eager layers, with a warning, where nothing compiles")  # fmt: skip
    sync_bn: bool = option(False, "synchronised BatchNorm across torchrun processes")
    # validation, logging, checkpoints
    val_every: int = option(1, "validate every N epochs")
    val_batch_size: int = option(4, "images per validation pass")
    keep_every: int = option(0, "also keep every N-th epoch's checkpoint as epoch_NNNN.pth (for `dabnet average`); 0 = off")  # fmt: skip
    log_every: int = option(10, "log every N steps")
    seed: int = option(0, "random seed (data order, augmentation, initialisation)")
    out: str = option("runs/camvid", "run folder: checkpoints, logs, curves")
    device: str = option("auto", "auto (the GPU when there is one), cpu, cuda or cuda:N")


    def __post_init__(self) -> None:
        """Every option checked before any data is read; errors name the option and what is valid."""
        from .models import list_models

        check_field_types(self)
        check_choice("dataset", self.dataset, list_datasets())
        check_choice("model", self.model, list_models())
        if self.model_kwargs:
            _check_model_kwargs(self.model, self.model_kwargs)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("loss", self.loss, LOSSES)
        check_choice("class_weights", self.class_weights, CLASS_WEIGHTS)
        check_choice("precision", self.precision, TRAIN_PRECISIONS)
        require(_positive_ints(self.crop_size, 2), "crop_size", self.crop_size, "[HEIGHT, WIDTH], two positive integers")
        require(_positive_numbers(self.scales), "scales", self.scales, "a list of positive numbers, e.g. [0.75, 1.0, 1.5]")
        check_counts(self, epochs=1, batch_size=1, val_batch_size=1, workers=0, val_every=1, log_every=1, warmup_iters=0,
                     keep_every=0)  # fmt: skip
        require(isinstance(self.lr, (int, float)) and self.lr > 0, "lr", self.lr, "a positive number")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        require(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", self.betas, "two numbers in [0, 1)")
        require(0 < self.warmup_ratio <= 1, "warmup_ratio", self.warmup_ratio, "a number in (0, 1]")
        require(self.grad_clip >= 0, "grad_clip", self.grad_clip, "a number >= 0 (0 = off)")
        require(0 < self.ohem_thresh <= 1, "ohem_thresh", self.ohem_thresh, "a probability in (0, 1]")
        require(self.enet_c > 1, "enet_c", self.enet_c, "a number > 1 (the ENet weights are 1 / ln(c + p))")
        require(self.mean is None or len(self.mean) == 3, "mean", self.mean, "null or three numbers (0-255 RGB)")
        require(self.std is None or _positive_numbers(self.std) and len(self.std) == 3, "std", self.std, "null or three positive numbers")
        require(isinstance(self.holdout, list) and all(isinstance(h, str) and h for h in self.holdout), "holdout", self.holdout,
                "a list of file-name prefixes, e.g. [0006R0]")  # fmt: skip
        require(_number(self.ema) and 0 <= self.ema < 1, "ema", self.ema, "a decay in [0, 1), e.g. 0.999 (0 = off)")
        require(self.distill_from is None or (isinstance(self.distill_from, str) and self.distill_from != ""), "distill_from",
                self.distill_from, "null, or a checkpoint path or bundled name such as dabnet-camvid")  # fmt: skip
        require(_positive_numbers(self.distill_scales), "distill_scales", self.distill_scales, "a list of positive numbers, e.g. [1, 1.5, 2]")
        require(_number(self.distill_weight) and self.distill_weight >= 0, "distill_weight", self.distill_weight, "a number >= 0")
        require(_number(self.distill_temperature) and self.distill_temperature > 0, "distill_temperature",
                self.distill_temperature, "a positive number")  # fmt: skip
        if self.distill_from and self.data_on_device:
            raise ConfigError("distill_from with data_on_device=true is not supported: the teacher's maps come through the "
                              "loader; use data_on_device=false")  # fmt: skip
        check_device(self.device)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value is of its field's declared type (ints count as floats, bools as neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Union:
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, List, tuple, Sequence):
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if origin in (dict, Dict):
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return " or ".join(_type_name(a, plural) for a in args)
    if origin in (list, List):
        return f"a list of {_type_name(args[0], True) if args else 'values'}"
    if origin in (dict, Dict):
        return "a mapping of names to values"
    names = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
             bool: ("true or false", "true/false values"), type(None): ("null", "nulls")}  # fmt: skip
    return names[hint][plural] if hint in names else str(hint)


def _check_model_kwargs(model: str, kwargs: Dict[str, Any]) -> None:
    """The network builds with these arguments (on the meta device: no memory, no time)."""
    import torch

    from .models import create_model

    try:
        with torch.device("meta"):
            create_model(model, 2, **kwargs)
    except (TypeError, ValueError, KeyError, IndexError, AssertionError) as e:
        raise ConfigError(f"model_kwargs={kwargs!r} is not valid for {model}: {e}") from None


def check_field_types(obj: Any) -> None:
    """Every field of a config dataclass holds a value of its declared type; a ConfigError naming the first that
    does not (YAML and --set can put a list where a number belongs)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise ConfigError(f"{f.name}={value!r} is not valid: {_type_name(hints[f.name])}")


def require(ok: bool, option: str, value: Any, valid: str) -> None:
    """A ConfigError naming the option, the value given and what is valid, unless `ok`."""
    if not ok:
        raise ConfigError(f"{option}={value!r} is not valid: {valid}")


def _positive_ints(v: Any, n: int) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == n and all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_numbers(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(i, (int, float)) and not isinstance(i, bool) and i > 0 for i in v)


def check_scale(scale: float) -> None:
    """An inference scale: a finite factor in [0.1, 4]."""
    require(_number(scale) and 0.1 <= scale <= 4, "scale", scale, "a factor in [0.1, 4] (1: images as they are; e.g. 1.5)")


def check_device(device: str) -> None:
    """auto, cpu, cuda or cuda:N, and CUDA only where this PyTorch build and machine have it."""
    import torch

    ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    require(ok, "device", device, "auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
        raise ConfigError(f"device={device!r} is not available: this PyTorch ({torch.__version__}) is {build}; use device=cpu")


def check_counts(cfg: Any, **minimum: int) -> None:
    """Each named integer option is at least its minimum."""
    for name, low in minimum.items():
        value = getattr(cfg, name)
        if value is not None:
            require(isinstance(value, int) and not isinstance(value, bool) and value >= low, name, value, f"an integer >= {low}")


def check_choice(option: str, value: Any, choices) -> None:
    choices = choices() if callable(choices) else choices
    require(value in choices, option, value, "one of " + ", ".join(map(str, choices)))


@dataclass
class EvalConfig:
    """mIoU, per-class IoU and pixel accuracy of a checkpoint on a dataset split."""

    checkpoint: str = option("", "checkpoint, bundled name or official DABNet checkpoint", required=True, io="in")
    dataset: str = option("camvid", "dataset kind", choices=list_datasets)
    data_root: str = option("../shared/data/camvid", "dataset root (for 'folder': the dataset YAML)", io="in")
    split: str = option("val", "split to evaluate")
    sequences: List[str] = option(help="only frames whose file names start with these (whole drives, e.g. 0006R0)",
                                  factory=list, metavar="PREFIX")  # fmt: skip
    exclude_sequences: List[str] = option(help="leave these sequences out", factory=list, metavar="PREFIX")
    batch_size: int = option(1, "images per forward pass")
    flip: bool = option(False, "add horizontally flipped predictions")
    scales: List[float] = option(help="test-time scales, e.g. 0.75 1 1.25", factory=lambda: [1.0])
    workers: int = option(2, "data loader processes")
    device: str = option("auto", DEVICE_HELP)
    backend: str = option("auto", backend_help, choices=backend_names)
    precision: str = option("fp32", "fp32, bf16/fp16 autocast, or int8 with the openvino backend (auto chooses its own)",
                            choices=PRECISIONS)  # fmt: skip
    json: Optional[str] = option(None, "write miou, per_class_iou, pixel_acc, images to this file", metavar="FILE", io="out")
    confusion_png: Optional[str] = option(None, "draw the confusion matrix to this PNG", metavar="FILE")

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, list_datasets())
        check_choice("backend", self.backend, backend_names())
        check_choice("precision", self.precision, PRECISIONS)
        check_counts(self, batch_size=1, workers=0)
        require(_positive_numbers(self.scales), "scales", self.scales, "positive numbers, e.g. 0.75 1 1.25")
        check_device(self.device)


@dataclass
class TrainCommand:
    """Train a network (the paper's recipes ship as configs); every TrainConfig option can be --set."""

    config: str = option("", "YAML path or shipped config name: " + ", ".join(config_names()), required=True, io="in")
    set: List[str] = option(help="override any config option (repeatable)", factory=list, nargs=None, action="append",
                            metavar="KEY=VALUE")  # fmt: skip
    out: Optional[str] = option(None, "run folder (default: the config's `out`)")
    resume: Optional[str] = option(None, "resume from this checkpoint (default: OUT/last.pth when present)", metavar="CKPT", io="in")
    restart: bool = option(False, "ignore OUT/last.pth and start from scratch", flag_only=True)


@dataclass
class AverageConfig:
    """Average the weights of checkpoints of one network (e.g. a run's last epochs) into one checkpoint."""

    checkpoints: List[str] = option(help="two or more checkpoints, e.g. runs/camvid/epoch_02*.pth", factory=list,
                                    positional=True, nargs="+", io="in")  # fmt: skip
    out: str = option("averaged.pth", "where to write the averaged checkpoint", io="out")

    def __post_init__(self) -> None:
        require(len(self.checkpoints) >= 2, "checkpoints", self.checkpoints, "two or more checkpoint files")
        require(not Path(self.out).is_dir(), "out", self.out, "a file name such as averaged.pth (this is a folder)")


@dataclass
class ModelsConfig:
    """List the registered networks with parameters and GMACs."""

    names: List[str] = option(help="models to show (default: all)", factory=list, positional=True, nargs="*")
    size: Tuple[int, int] = option((512, 1024), "input HxW for GMACs", type=parse_size)
    num_classes: int = option(19, "classes of the networks counted")
    json: bool = option(False, "print JSON instead of a table", flag_only=True)


@dataclass
class RuntimesConfig:
    """List the registered runtimes (--backend): precisions, devices, files they run, export formats."""

    json: bool = option(False, "print JSON instead of a table", flag_only=True)


@dataclass
class DescribeConfig:
    """Say what a checkpoint, bundled name or exported file is (network, classes, colours, normalisation), with no backend."""

    checkpoint: str = option("", "checkpoint, exported file or bundled name (e.g. dabnet-camvid)", positional=True)
    json: bool = option(False, "print JSON instead of text", flag_only=True)


@dataclass
class DemoConfig:
    """Segment the bundled street frames, write pictures and report the FPS."""

    checkpoint: Optional[str] = option(None, "weights to use (default: the bundled dabnet-camvid)", io="in")
    out: str = option("dabnet-demo", "output folder")
    threads: Optional[int] = option(None, "CPU threads (default: PyTorch's choice)")
    backend: str = option("auto", backend_help, choices=backend_names)
    device: str = option("auto", DEVICE_HELP)
    seed: int = option(0, "seed of the untrained network used when no weights are bundled", hidden=True)
    samples: Optional[str] = option(None, "folder of frames (NAME.jpg + NAME_label.png) instead of the bundled ones", hidden=True)

    def __post_init__(self) -> None:
        check_device(self.device)




@dataclass
class PredictConfig:
    """Segment images, folders, globs, videos or a webcam."""

    inputs: List[str] = option(help="image files, folders, globs ('data/*.jpg'), videos, or a webcam index",
                               factory=list, positional=True, nargs="+", io="in")  # fmt: skip
    checkpoint: str = option("dabnet-camvid", "checkpoint, .onnx file or bundled name", io="in")
    out: str = option("predictions", "output folder")
    format: str = option("default", "cityscapes: labelId PNGs for the benchmark server instead of label/colour/overlay",
                         choices=["default", "cityscapes"])  # fmt: skip
    backend: str = option("auto", backend_help, choices=backend_names)
    precision: str = option("fp32", "fp32, bf16/fp16 autocast (fp16: CUDA only), or int8 with the openvino backend; "
                            "auto chooses its own", choices=PRECISIONS)  # fmt: skip
    channels_last: Optional[bool] = option(None, "NHWC tensors (default: on for CUDA, off for a CPU)")
    device: str = option("auto", DEVICE_HELP)
    batch_size: int = option(1, "images per forward pass")
    max_frames: int = option(0, "stop videos/webcams after N frames (0: all)")
    save: List[str] = option(help="what to write per image: label (class ids), color (the colour mask), overlay",
                             factory=lambda: list(OUTPUT_KINDS), choices=OUTPUT_KINDS, nargs="+")  # fmt: skip
    workers: int = option(2, "threads that decode and encode images while the network runs (0: one after another)")
    scale: float = option(1.0, "resize images by this factor before the network (labels at the image's size); "
                          "above 1 is more accurate and slower, e.g. 1.5")  # fmt: skip
    max_image_pixels: int = option(2 * 89_478_485, "largest image decoded, in pixels (Pillow's guard against "
                                   "decompression bombs; larger images are tiled, so raising it costs only memory)")  # fmt: skip

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, backend_names())
        check_choice("precision", self.precision, PRECISIONS)
        check_counts(self, batch_size=1, max_frames=0, workers=0, max_image_pixels=1)
        check_scale(self.scale)
        for kind in self.save:
            check_choice("save", kind, OUTPUT_KINDS)
        require(not Path(self.out).exists() or Path(self.out).is_dir(), "out", self.out, "a folder (this is an existing file)")
        check_device(self.device)


@dataclass
class ExportConfig:
    """Export to ONNX or OpenVINO IR (dynamic H, W) or TorchScript, checked against PyTorch."""

    checkpoint: str = option("", "checkpoint or bundled name", required=True, io="in")
    format: str = option("onnx", "file format", choices=export_formats, required=True)
    out: str = option("", "output file (openvino: NAME.xml, written with NAME.bin)", required=True, io="out")

    def __post_init__(self) -> None:
        check_choice("format", self.format, export_formats())


@dataclass
class BenchConfig:
    """The paper's speed protocol (Table 5) on this machine."""

    models: List[str] = option(help="networks to time", factory=lambda: ["dabnet", "enet", "espnet", "icnet", "segnet", "erfnet"])
    sizes: List[Tuple[int, int]] = option(help="input sizes HxW", factory=lambda: [(256, 512), (512, 1024), (1024, 2048)],
                                          type=parse_size)  # fmt: skip
    backends: List[str] = option(help="backends, interleaved frame by frame", factory=lambda: ["eager"], choices=backend_names,
                                 metavar="BACKEND")  # fmt: skip
    precision: str = option("fp32", "fp32, bf16/fp16 autocast (fp16: CUDA only), or int8 with the openvino backend",
                            choices=PRECISIONS)  # fmt: skip
    channels_last: Optional[bool] = option(None, "NHWC tensors (default: on for CUDA, off for a CPU)")
    frames: int = option(100, "timed frames per measurement (the paper: 100)")
    warmup: int = option(10, "untimed frames first")
    batch: int = option(1, "images per forward pass (the paper: 1); FPS count images")
    device: str = option("auto", DEVICE_HELP)
    threads: Optional[int] = option(None, "CPU threads (default: PyTorch's choice)")
    checkpoint: Optional[str] = option(None, "time these weights instead of fresh models", io="in")
    no_paper_protocol: bool = option(False, "skip the eager runs without no_grad", flag_only=True)
    labels: bool = option(False, "also time each backend up to the label map (arg-max included), what predict does",
                          flag_only=True)  # fmt: skip
    json: Optional[str] = option(None, "write the rows as JSON", metavar="FILE", io="out")
    plot: Optional[str] = option(None, "plot FPS against parameters", metavar="PNG", io="out")
    scale: float = option(1.0, "frames of each size are resized by this factor before the network: the network is "
                          "timed at the resized size")  # fmt: skip

    def __post_init__(self) -> None:
        from .io.preprocessing import MIN_SIDE

        check_counts(self, frames=1, warmup=0, threads=1, batch=1)
        check_choice("precision", self.precision, PRECISIONS)
        check_scale(self.scale)
        small = [f"{h}x{w}" for h, w in self.network_sizes if min(h, w) < MIN_SIDE]
        require(not small, "sizes", small, f"sizes of at least {MIN_SIDE}x{MIN_SIDE}: below that the runtimes' pooling "
                "has no window, and predict pads such images to it (what would be timed is the padded size)")  # fmt: skip
        check_device(self.device)

    @property
    def network_sizes(self) -> List[Tuple[int, int]]:
        """The sizes the network runs at: each frame size resized by `scale`."""
        return [(max(1, round(h * self.scale)), max(1, round(w * self.scale))) for h, w in self.sizes]


@dataclass
class ServeConfig:
    """HTTP API and web page for segmentation."""

    checkpoint: str = option("dabnet-camvid", "checkpoint, .onnx file or bundled name", io="in")
    backend: str = option("auto", backend_help, choices=backend_names)
    device: str = option("auto", DEVICE_HELP)
    host: str = option("127.0.0.1", "address to bind (default: this machine only)")
    port: int = option(8000, "TCP port")
    max_queue: int = option(16, "waiting requests before 503")
    max_mb: float = option(20.0, "request body limit in MiB (413 beyond)")
    max_pixels: int = option(4096 * 4096, "decoded image limit in pixels (413 beyond)")
    timeout_s: float = option(30.0, "seconds per request before 504", flag="--timeout", metavar="SECONDS")
    max_batch: int = option(4, "same-size requests run together")
    batch_wait_ms: float = option(2.0, "how long the worker waits to fill a batch")
    scale: float = option(1.0, "resize images by this factor before the network (labels at the image's size); "
                          "above 1 is more accurate and slower, e.g. 1.5")  # fmt: skip
    header_timeout_s: float = option(10.0, "seconds a connection may take to send a request's headers (and to start "
                                     "the next one) before it is closed")  # fmt: skip
    max_connections: int = option(256, "open connections at most; more are closed at once (keep it under the "
                                  "process's open-file limit)")  # fmt: skip
    max_inflight_mb: float = option(512.0, "MiB of bodies and decoded images held by all requests in flight (503 beyond)")
    max_per_client: int = option(8, "requests one client address may have in flight at once (429 beyond; behind a "
                                 "proxy all its clients share its address)")  # fmt: skip
    allowed_hosts: List[str] = option(help="host names this server answers to besides localhost, --host and IP "
                                      "addresses; a request whose Host or Origin names another is refused (403: DNS "
                                      "rebinding); * for any", factory=list, nargs="*")  # fmt: skip

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, backend_names())
        check_scale(self.scale)
        check_device(self.device)
        check_counts(self, max_queue=1, max_pixels=1, max_batch=1, max_connections=1)
        require(0 <= self.port <= 65535, "port", self.port, "a TCP port, 0-65535")
        limits = {"max_mb": (False, 1e5, "MiB"), "timeout_s": (False, 86400, "seconds"), "batch_wait_ms": (True, 60_000, "milliseconds"),
                  "header_timeout_s": (False, 3600, "seconds"), "max_inflight_mb": (False, 1e6, "MiB")}  # fmt: skip
        for name, (zero_ok, high, unit) in limits.items():
            value = getattr(self, name)
            ok = _number(value) and (value >= 0 if zero_ok else value > 0) and value <= high
            require(ok, "timeout" if name == "timeout_s" else name, value,
                    f"a finite number of {unit}, {'0' if zero_ok else 'above 0'} up to {high:g}")  # fmt: skip
        check_counts(self, max_per_client=1)
        require(isinstance(self.allowed_hosts, list), "allowed_hosts", self.allowed_hosts, "a list of host names")
        for name in self.allowed_hosts:
            require(isinstance(name, str) and 0 < len(name) <= 253 and not any(c in name for c in "/ @\t\n"), "allowed_hosts",
                    name, "host names (example.org) or *")  # fmt: skip

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * 2**20)

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)


@dataclass
class DataCheckConfig:
    """Scan every image and mask; exit 0 only when the dataset is clean."""

    dataset: str = option("camvid", "dataset kind", choices=list_datasets, positional=True)
    root: str = option("", "dataset root (for 'folder': the dataset YAML or its folder)", positional=True)
    splits: List[str] = option(help="splits to scan (default: train val test, or the YAML's)", factory=list, nargs="*")
    quiet: bool = option(False, "no progress bar", flag_only=True)


@dataclass
class DataStatsConfig:
    """Channel mean/std, class frequencies and class weights of a split."""

    dataset: str = option("camvid", "dataset kind", choices=list_datasets, positional=True)
    root: str = option("", "dataset root (for 'folder': the dataset YAML)", positional=True)
    split: str = option("train", "train, val, trainval (CamVid), test, or a YAML split")
    enet_c: float = option(1.02, "c of the ENet weights 1/ln(c+p) (official code: 1.10)")
    json: bool = option(False, "print JSON instead of a table", flag_only=True)


@dataclass
class DataPackConfig:
    """Compact CamVid copy (JPEG frames + PNG labels) to carry to a GPU machine."""

    root: str = option("", "CamVid root (SegNet layout)", positional=True, io="in")
    out: str = option("", "output folder, same layout (keep it git-ignored, e.g. data_packed/camvid)", positional=True, io="out_dir")
    splits: List[str] = option(help="splits to pack", factory=lambda: ["train", "val"])
    quality: int = option(95, "JPEG quality (4:4:4 chroma)")

    def __post_init__(self) -> None:
        require(isinstance(self.quality, int) and 1 <= self.quality <= 100, "quality", self.quality, "1-100")
        for split in self.splits:
            check_choice("splits", split, ["train", "val", "test", "trainval"])


@dataclass
class DataImportConfig:
    """An annotation tool's export (COCO, CVAT masks, Labelme) as a folder dataset with its dataset.yaml."""

    format: str = option("coco", "the export's format", choices=lambda: list(IMPORTERS), positional=True)
    source: str = option("", "COCO: the JSON file; CVAT: the export folder (labelmap.txt); Labelme: the folder of .json files",
                         positional=True, io="in")  # fmt: skip
    images: str = option("", "folder holding the annotated images", required=True, metavar="DIR", io="in")
    out: str = option("", "new dataset folder (images/, masks/, dataset.yaml)", required=True, metavar="DIR", io="out_dir")
    val_fraction: float = option(0.0, "share of the images (the last ones, in the export's order) put in a val split")
    classes: Optional[List[str]] = option(None, "Labelme: class names in id order (default: the labels, sorted)", nargs="+")
    overwrite: bool = option(False, "replace an existing --out folder whole (default: refuse a non-empty one)", flag_only=True)

    def __post_init__(self) -> None:
        check_choice("format", self.format, list(IMPORTERS))
        require(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction, "a share in [0, 1)")


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
        raise ConfigError(f"{key}={value!r} is not valid: true or false")
    if isinstance(default, (list, dict)) or default is None or value.startswith(("[", "{")):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}={value!r} is not valid: it does not read as YAML ({str(e).splitlines()[0]})") from None
    try:
        return type(default)(value) if not isinstance(default, float) else float(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not valid: {_type_name(typing.get_type_hints(cls)[key])}") from None


# Options renamed since; old configs, commands and run folders keep working: old name -> (new name, value map).
RENAMED: Dict[str, Any] = {"amp": ("precision", {"none": "fp32", None: "fp32"})}


def _renamed(key: str, value: Any, valid: set) -> Tuple[str, Any]:
    if key in RENAMED and key not in valid and RENAMED[key][0] in valid:
        new, values = RENAMED[key]
        return new, values.get(value, value)
    return key, value


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
        loaded = dict(_renamed(k, v, valid) for k, v in loaded.items())
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
        if key in RENAMED and RENAMED[key][0] in valid:
            key, value = _renamed(key, value.strip().lower(), valid)
        if key not in valid:
            raise ConfigError(f"unknown option {key!r} in --set; valid options: {', '.join(sorted(valid))}")
        values[key] = _coerce(cls, key, value)
    return cls(**values)


def from_saved(cls: Type[T], values: Dict[str, Any]) -> T:
    """The config a run saved (a checkpoint's 'config', config.yaml) as it was: None stays None (build_config
    reads None as 'not given'), and options renamed since take their new names."""
    valid = {f.name for f in dataclasses.fields(cls)}
    return cls(**dict(_renamed(k, v, valid) for k, v in values.items()))


def save_config(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML (beside the checkpoints)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
