"""Configs: one dataclass per command; YAML supplies defaults, `--set key=value` overrides. Every field declares its
type, choices and range (`dabnet.util.options`), checked once, when a config is made, before any work."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

import yaml

from .data.importers import IMPORTERS
from .data.registry import list_datasets
from .inference.outputs import OUTPUT_KINDS
from .runtimes import backend_help, backend_names, export_formats
from .util.options import ConfigError, Options, hints_of, load_yaml, one_line, option, parse_value, shown
from .util.precision import PRECISIONS

T = TypeVar("T")

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


# What an option that names a file or folder does with it (every option that can hold a string declares one;
# tests/test_cli.py holds every command to that): "in" (a file or folder the command reads), "out" (a file it writes),
# "out_dir" (a folder it fills), "own_dir" (a folder of the command's own files: it writes only files it names there
# and keeps the rest, as predict's manifest and train's run folder do, so it may sit beside or hold its inputs), or
# "not_a_path" (a name, choice, address or value).
IO_ROLES = ("in", "out", "out_dir", "own_dir", "not_a_path")


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


DEVICE_HELP = "auto (the GPU when there is one and the backend runs there, else the CPU), cpu, cuda or cuda:N"


OPTIMIZERS = ["adam", "adamw", "sgd"]
LOSSES = ["ce", "ohem"]
CLASS_WEIGHTS = ["enet", "median", "none"]
TRAIN_PRECISIONS = ["fp32", "bf16", "fp16"]  # autocast; fp16 on CUDA only


def list_model_names() -> List[str]:
    """The registered networks (called when a parser or a check needs them: registries grow at run time)."""
    from .models import list_models

    return list_models()


def require(ok: bool, option: str, value: Any, valid: str) -> None:
    """A ConfigError naming the option, the value given (cut to 80 characters) and what is valid, unless `ok`."""
    if not ok:
        raise ConfigError(f"{option}={shown(value)} is not valid: {valid}")


def check_device(device: str) -> None:
    """auto, cpu, cuda or cuda:N, and CUDA only where this PyTorch build and machine have it."""
    import torch

    ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    require(ok, "device", device, "auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
        raise ConfigError(f"device={device!r} is not available: this PyTorch ({torch.__version__}) is {build}; use device=cpu")


# Submodules a network built from model_kwargs may have: ten times the largest registered one; building more only to
# check them takes minutes (block_1: 1000000000 never ends), and no such network is meant.
MAX_MODULES = 5_000


class _TooLarge(Exception):
    pass


def _check_model_kwargs(model: str, kwargs: Dict[str, Any]) -> None:
    """The network builds with these arguments (on the meta device: no memory), with at most MAX_MODULES submodules."""
    import threading

    import torch
    from torch.nn.modules.module import register_module_module_registration_hook

    from .models import create_model

    me, count = threading.get_ident(), [0]

    def counted(module: Any, name: str, submodule: Any) -> None:
        if threading.get_ident() == me:
            count[0] += 1
            if count[0] > MAX_MODULES:
                raise _TooLarge

    hook = register_module_module_registration_hook(counted)
    try:
        with torch.device("meta"):
            create_model(model, 2, **kwargs)
    except _TooLarge:
        raise ConfigError(f"model_kwargs={shown(kwargs)} is not valid for {model}: the network would have more than "
                          f"{MAX_MODULES:,} modules; the registered ones have a few hundred") from None  # fmt: skip
    except (TypeError, ValueError, KeyError, IndexError, AssertionError, OverflowError, RuntimeError) as e:
        raise ConfigError(f"model_kwargs={shown(kwargs)} is not valid for {model}: {one_line(e)}") from None
    finally:
        hook.remove()


def _is(test: str, path: str) -> bool:
    """Path(path).is_dir() or .is_file() or .exists(), False for a name no file can have (too long, a NUL byte)."""
    try:
        return getattr(Path(path), test)()
    except (OSError, ValueError):
        return False


def _nonempty(option: str, valid: str) -> Any:
    """A `check` refusing empty strings (in a list too): a name or path that is empty names nothing."""

    def check(value: Any) -> None:
        require(all(v for v in (value if isinstance(value, list) else [value])), option, value, valid)

    return check


def _host_names(names: List[str]) -> None:
    """Each of serve's allowed hosts is a host name (example.org) or *."""
    for name in names:
        require(0 < len(name) <= 253 and not any(c in name for c in "/ @\t\n"), "allowed_hosts", name, "host names (example.org) or *")


def _one_of(option: str, choices: Sequence[str]) -> Any:
    """A `check` holding each item of a list to `choices` (where the parser takes the list as it is)."""

    def check(value: Any) -> None:
        for item in value:
            require(item in choices, option, item, "one of " + ", ".join(choices))

    return check


PACK_SPLITS = ["train", "val", "test", "trainval"]
SCALE = dict(range="[0.1, 4]", valid="a factor in [0.1, 4] (1: images as they are; e.g. 1.5)")  # an inference resize
SCALES = dict(range="(0, 8]", length=(1, 16))  # test-time or teacher scales: each one a forward pass at scale^2 the pixels
SIDE = "[1, 16384]"  # an image side, in pixels
NOT_A_PATH = dict(io="not_a_path")


@dataclass
class TrainConfig(Options):
    """Everything `dabnet train` needs; every field can be set in YAML or with --set."""

    # data
    dataset: str = option("camvid", "dataset kind (the dataset registry)", choices=list_datasets, **NOT_A_PATH)
    data_root: str = option("../shared/data/camvid", "dataset root (for 'folder': the dataset YAML)", io="in")
    train_split: str = option("train", "split trained on", **NOT_A_PATH)
    val_split: Optional[str] = option("val", "split validated on each val_every epochs; None: no in-sequence validation", **NOT_A_PATH)
    holdout: List[str] = option(help="whole sequences (file-name prefixes, e.g. CamVid's 0006R0) taken out of train_split and validated on: drives never trained on, the honest proxy for a test set; best.pth is then chosen on them", factory=list,
                                check=_nonempty("holdout", "a list of file-name prefixes, e.g. [0006R0]"), **NOT_A_PATH)  # fmt: skip
    crop_size: List[int] = option(help="[HEIGHT, WIDTH] of the random training crops", factory=lambda: [360, 480], range=SIDE, length=(2, 2),
                                  valid=f"[HEIGHT, WIDTH], two integers in {SIDE}")  # fmt: skip
    scales: List[float] = option(help="random rescaling factors of the training images (the paper: 0.75 to 2)", factory=lambda: [0.75, 1.0, 1.25, 1.5, 1.75, 2.0],
                                 range="(0, 8]", length=(1, 64))  # fmt: skip
    flip: bool = option(True, "random horizontal flips")
    mean: Optional[List[float]] = option(None, "None: the dataset's own statistics", range="[0, 255]", length=(3, 3),
                                         valid="null or three numbers in [0, 255] (0-255 RGB)")  # fmt: skip
    std: Optional[List[float]] = option(None, "None: the dataset's own; [1, 1, 1] = mean subtraction only", range="(0, 255]", length=(3, 3),
                                        valid="null or three numbers in (0, 255] (0-255 RGB)")  # fmt: skip
    workers: int = option(2, "data-loading processes", range="[0, 1024]")
    check_data: bool = option(True, "scan every file before training (clear errors before hours of work)")
    data_on_device: bool = option(False, "decode once, keep uint8 images on the device, augment there")
    # model
    model: str = option("dabnet", "network (dabnet models lists them)", choices=list_model_names, **NOT_A_PATH)
    model_kwargs: Dict[str, Any] = option(help="the network's own options, e.g. {block_1: 3, block_2: 6}", factory=dict,
                                          range="[0, 4096]", valid="a mapping of the network's own options to values, numbers in [0, 4096]",
                                          **NOT_A_PATH)  # fmt: skip
    init_from: Optional[str] = option(None, "weights to start from (ours or official)", io="in")
    # optimisation
    epochs: int = option(1000, "length of the poly schedule, in epochs", range="[1, inf)")
    batch_size: int = option(16, "images per step (per process under torchrun)", range="[1, 65536]")
    optimizer: str = option("adam", "optimizer", choices=OPTIMIZERS, **NOT_A_PATH)
    lr: float = option(1e-3, "peak learning rate", range="(0, 10]")
    momentum: float = option(0.9, "SGD momentum", range="[0, 1)")
    betas: List[float] = option(help="Adam/AdamW betas", factory=lambda: [0.9, 0.999], range="[0, 1)", length=(2, 2))
    weight_decay: float = option(2e-4, "L2 weight decay", range="[0, 1]")
    poly_power: float = option(0.9, "exponent of the poly learning-rate decay", range="(0, 100]")
    warmup_iters: int = option(500, "linear warm-up steps", range="[0, inf)")
    warmup_ratio: float = option(1.0 / 3.0, "warm-up starts at lr * warmup_ratio", range="(0, 1]")
    grad_clip: float = option(0.0, "max gradient norm; 0 = off", range="[0, inf)")
    # extensions (dabnet.training): weight EMA, and distillation from a teacher's (ensemble's) probabilities
    ema: float = option(0.0, "decay of an exponential moving average of the weights, validated and saved as the model; 0 = off",
                        range="[0, 1)", valid="a decay in [0, 1), e.g. 0.999 (0 = off)")  # fmt: skip
    distill_from: Optional[str] = option(None, "teacher: a checkpoint path or bundled name with this run's classes; None = off", io="in",
                                         check=_nonempty("distill_from", "null, or a checkpoint path or bundled name such as dabnet-camvid"))  # fmt: skip
    distill_scales: List[float] = option(help="the teacher's ensemble: input scales, probabilities averaged", factory=lambda: [1.0], **SCALES)
    distill_flip: bool = option(False, "the teacher's ensemble also sees horizontal flips")
    distill_weight: float = option(1.0, "loss = CE + weight * T^2 * KL(teacher_T || student_T)", range="[0, inf)")
    distill_temperature: float = option(1.0, "softmax temperature of teacher and student in the KL term", range="(0, 100]")
    distill_cache: Optional[str] = option(None, "folder of the teacher's maps (None: OUT/teacher_cache); runs may share one", io="out_dir")  # fmt: skip
    loss: str = option("ce", "ce (cross-entropy) or ohem (online hard example mining, as the paper's Cityscapes recipe)", choices=LOSSES, **NOT_A_PATH)
    class_weights: str = option("enet", "class weighting of the loss: enet (1 / ln(c + p)), median frequency, or none", choices=CLASS_WEIGHTS, **NOT_A_PATH)
    enet_c: float = option(1.02, "w = 1 / ln(c + p); the official DABNet code uses 1.10", range="(1, 100]",
                           valid="a finite number in (1, 100] (the ENet weights are 1 / ln(c + p))")  # fmt: skip
    ohem_thresh: float = option(0.7, "OHEM keeps pixels whose true-class probability is below this", range="(0, 1]")
    ohem_min_kept: Optional[int] = option(None, "None: batch * H * W / 16, as the paper", range="[0, inf)")
    # speed
    precision: str = option("fp32", "fp32, or bf16/fp16 autocast (fp16 on CUDA only); formerly `amp` (none = fp32)", choices=TRAIN_PRECISIONS, **NOT_A_PATH)  # fmt: skip
    channels_last: bool = option(False, "NHWC memory layout (faster on GPUs with tensor cores)")
    compile: bool = option(False, "torch.compile the training step")
    fused: bool = option(True, "BatchNorm+PReLU pairs, the x8 upsampling and the cross-entropy on compiled kernels (models.fused): same parameters and numbers, faster on a CPU; falls back to eager layers, with a warning, where nothing compiles")  # fmt: skip
    sync_bn: bool = option(False, "synchronised BatchNorm across torchrun processes")
    # validation, logging, checkpoints
    val_every: int = option(1, "validate every N epochs", range="[1, inf)")
    val_batch_size: int = option(4, "images per validation pass", range="[1, 65536]")
    keep_every: int = option(0, "also keep every N-th epoch's checkpoint as epoch_NNNN.pth (for `dabnet average`); 0 = off", range="[0, inf)")  # fmt: skip
    log_every: int = option(10, "log every N steps", range="[1, inf)")
    seed: int = option(0, "random seed (data order, augmentation, initialisation)", range="[0, 4294967295]")
    out: str = option("runs/camvid", "run folder: checkpoints, logs, curves", io="own_dir")
    device: str = option("auto", "auto (the GPU when there is one), cpu, cuda or cuda:N", check=check_device, **NOT_A_PATH)

    def check(self) -> None:
        if self.model_kwargs:
            _check_model_kwargs(self.model, self.model_kwargs)
        if self.distill_from and self.data_on_device:
            raise ConfigError("distill_from with data_on_device=true is not supported: the teacher's maps come through the "
                              "loader; use data_on_device=false")  # fmt: skip


@dataclass
class EvalConfig(Options):
    """mIoU, per-class IoU and pixel accuracy of a checkpoint on a dataset split."""

    checkpoint: str = option("", "checkpoint, bundled name or official DABNet checkpoint", required=True, io="in")
    dataset: str = option("camvid", "dataset kind", choices=list_datasets, **NOT_A_PATH)
    data_root: str = option("../shared/data/camvid", "dataset root (for 'folder': the dataset YAML)", io="in")
    split: str = option("val", "split to evaluate", **NOT_A_PATH)
    sequences: List[str] = option(help="only frames whose file names start with these (whole drives, e.g. 0006R0)",
                                  factory=list, metavar="PREFIX", **NOT_A_PATH)  # fmt: skip
    exclude_sequences: List[str] = option(help="leave these sequences out", factory=list, metavar="PREFIX", **NOT_A_PATH)
    batch_size: int = option(1, "images per forward pass", range="[1, 4096]")
    flip: bool = option(False, "add horizontally flipped predictions")
    scales: List[float] = option(help="test-time scales, e.g. 0.75 1 1.25", factory=lambda: [1.0], **SCALES)
    workers: int = option(2, "data loader processes", range="[0, 1024]")
    device: str = option("auto", DEVICE_HELP, check=check_device, **NOT_A_PATH)
    backend: str = option("auto", backend_help, choices=backend_names, **NOT_A_PATH)
    precision: str = option("fp32", "fp32, bf16/fp16 autocast, or int8 with the openvino backend (auto chooses its own)",
                            choices=PRECISIONS, **NOT_A_PATH)  # fmt: skip
    json: Optional[str] = option(None, "write miou, per_class_iou, pixel_acc, images to this file", metavar="FILE", io="out")
    confusion_png: Optional[str] = option(None, "draw the confusion matrix to this PNG", metavar="FILE", io="out")


@dataclass
class TrainCommand(Options):
    """Train a network (the paper's recipes ship as configs); every TrainConfig option can be --set."""

    config: str = option("", "YAML path or shipped config name: " + ", ".join(config_names()), required=True, io="in")
    set: List[str] = option(help="override any config option (repeatable)", factory=list, nargs=None, action="append",
                            metavar="KEY=VALUE", **NOT_A_PATH)  # fmt: skip
    out: Optional[str] = option(None, "run folder (default: the config's `out`)", io="own_dir")
    resume: Optional[str] = option(None, "resume from this checkpoint (default: OUT/last.pth when present)", metavar="CKPT", io="in")
    restart: bool = option(False, "ignore OUT/last.pth and start from scratch", flag_only=True)


@dataclass
class AverageConfig(Options):
    """Average the weights of checkpoints of one network (e.g. a run's last epochs) into one checkpoint."""

    checkpoints: List[str] = option(help="two or more checkpoints, e.g. runs/camvid/epoch_02*.pth", factory=list,
                                    positional=True, nargs="+", io="in", length=(2, None), valid="two or more checkpoint files")  # fmt: skip
    out: str = option("averaged.pth", "where to write the averaged checkpoint", io="out")

    def check(self) -> None:
        require(not _is("is_dir", self.out), "out", self.out, "a file name such as averaged.pth (this is a folder)")


@dataclass
class ModelsConfig(Options):
    """List the registered networks with parameters and GMACs."""

    names: List[str] = option(help="models to show (default: all)", factory=list, positional=True, nargs="*", **NOT_A_PATH)
    size: Tuple[int, int] = option((512, 1024), "input HxW for GMACs", type=parse_size, range=SIDE)
    num_classes: int = option(19, "classes of the networks counted", range="[1, 65535]")
    json: bool = option(False, "print JSON instead of a table", flag_only=True)


@dataclass
class RuntimesConfig(Options):
    """List the registered runtimes (--backend): precisions, devices, files they run, export formats."""

    json: bool = option(False, "print JSON instead of a table", flag_only=True)


@dataclass
class DescribeConfig(Options):
    """Say what a checkpoint, bundled name or exported file is (network, classes, colours, normalisation), with no backend."""

    checkpoint: str = option("", "checkpoint, exported file or bundled name (e.g. dabnet-camvid)", positional=True, io="in")
    json: bool = option(False, "print JSON instead of text", flag_only=True)


@dataclass
class DemoConfig(Options):
    """Segment the bundled street frames, write pictures and report the FPS."""

    checkpoint: Optional[str] = option(None, "weights to use (default: the bundled dabnet-camvid)", io="in")
    out: str = option("dabnet-demo", "output folder", io="own_dir")
    threads: Optional[int] = option(None, "CPU threads (default: PyTorch's choice)", range="[1, 4096]")
    backend: str = option("auto", backend_help, choices=backend_names, **NOT_A_PATH)
    device: str = option("auto", DEVICE_HELP, check=check_device, **NOT_A_PATH)
    seed: int = option(0, "seed of the untrained network used when no weights are bundled", hidden=True, range="[0, 4294967295]")
    samples: Optional[str] = option(None, "folder of frames (NAME.jpg + NAME_label.png) instead of the bundled ones", hidden=True, io="in")


@dataclass
class PredictConfig(Options):
    """Segment images, folders, globs, videos or a webcam."""

    inputs: List[str] = option(help="image files, folders, globs ('data/*.jpg'), videos, or a webcam index",
                               factory=list, positional=True, nargs="+", io="in")  # fmt: skip
    checkpoint: str = option("dabnet-camvid", "checkpoint, .onnx file or bundled name", io="in")
    out: str = option("predictions", "output folder", io="own_dir")
    format: str = option("default", "cityscapes: labelId PNGs for the benchmark server instead of label/colour/overlay",
                         choices=["default", "cityscapes"], **NOT_A_PATH)  # fmt: skip
    backend: str = option("auto", backend_help, choices=backend_names, **NOT_A_PATH)
    precision: str = option("fp32", "fp32, bf16/fp16 autocast (fp16: CUDA only), or int8 with the openvino backend; "
                            "auto chooses its own", choices=PRECISIONS, **NOT_A_PATH)  # fmt: skip
    channels_last: Optional[bool] = option(None, "NHWC tensors (default: on for CUDA, off for a CPU)")
    device: str = option("auto", DEVICE_HELP, check=check_device, **NOT_A_PATH)
    batch_size: int = option(1, "images per forward pass", range="[1, 4096]")
    max_frames: int = option(0, "stop videos/webcams after N frames (0: all)", range="[0, inf)")
    save: List[str] = option(help="what to write per image: label (class ids), color (the colour mask), overlay",
                             factory=lambda: list(OUTPUT_KINDS), choices=OUTPUT_KINDS, nargs="+", **NOT_A_PATH)  # fmt: skip
    workers: int = option(2, "threads that decode and encode images while the network runs (0: one after another)", range="[0, 256]")
    scale: float = option(1.0, "resize images by this factor before the network (labels at the image's size); "
                          "above 1 is more accurate and slower, e.g. 1.5", **SCALE)  # fmt: skip
    max_image_pixels: int = option(2 * 89_478_485, "largest image decoded, in pixels (Pillow's guard against "
                                   "decompression bombs; larger images are tiled, so raising it costs only memory)", range="[1, 1e12]")  # fmt: skip

    def check(self) -> None:
        require(not _is("exists", self.out) or _is("is_dir", self.out), "out", self.out, "a folder (this is an existing file)")


@dataclass
class ExportConfig(Options):
    """Export to ONNX or OpenVINO IR (dynamic H, W) or TorchScript, checked against PyTorch."""

    checkpoint: str = option("", "checkpoint or bundled name", required=True, io="in")
    format: str = option("onnx", "file format", choices=export_formats, required=True, **NOT_A_PATH)
    out: str = option("", "output file (openvino: NAME.xml, written with NAME.bin)", required=True, io="out")


@dataclass
class BenchConfig(Options):
    """The paper's speed protocol (Table 5) on this machine."""

    models: List[str] = option(help="networks to time", factory=lambda: ["dabnet", "enet", "espnet", "icnet", "segnet", "erfnet"], **NOT_A_PATH)
    sizes: List[Tuple[int, int]] = option(help="input sizes HxW", factory=lambda: [(256, 512), (512, 1024), (1024, 2048)],
                                          type=parse_size, range=SIDE, length=(1, None))  # fmt: skip
    backends: List[str] = option(help="backends, interleaved frame by frame", factory=lambda: ["eager"], choices=backend_names,
                                 metavar="BACKEND", **NOT_A_PATH)  # fmt: skip
    precision: str = option("fp32", "fp32, bf16/fp16 autocast (fp16: CUDA only), or int8 with the openvino backend",
                            choices=PRECISIONS, **NOT_A_PATH)  # fmt: skip
    channels_last: Optional[bool] = option(None, "NHWC tensors (default: on for CUDA, off for a CPU)")
    frames: int = option(100, "timed frames per measurement (the paper: 100)", range="[1, inf)")
    warmup: int = option(10, "untimed frames first", range="[0, inf)")
    batch: int = option(1, "images per forward pass (the paper: 1); FPS count images", range="[1, 4096]")
    device: str = option("auto", DEVICE_HELP, check=check_device, **NOT_A_PATH)
    threads: Optional[int] = option(None, "CPU threads (default: PyTorch's choice)", range="[1, 4096]")
    checkpoint: Optional[str] = option(None, "time these weights instead of fresh models", io="in")
    no_paper_protocol: bool = option(False, "skip the eager runs without no_grad", flag_only=True)
    labels: bool = option(False, "also time each backend up to the label map (arg-max included), what predict does",
                          flag_only=True)  # fmt: skip
    json: Optional[str] = option(None, "write the rows as JSON", metavar="FILE", io="out")
    plot: Optional[str] = option(None, "plot FPS against parameters", metavar="PNG", io="out")
    scale: float = option(1.0, "frames of each size are resized by this factor before the network: the network is "
                          "timed at the resized size", **SCALE)  # fmt: skip

    def check(self) -> None:
        from .io.preprocessing import MIN_SIDE

        small = [f"{h}x{w}" for h, w in self.network_sizes if min(h, w) < MIN_SIDE]
        require(not small, "sizes", small, f"sizes of at least {MIN_SIDE}x{MIN_SIDE}: below that the runtimes' pooling "
                "has no window, and predict pads such images to it (what would be timed is the padded size)")  # fmt: skip

    @property
    def network_sizes(self) -> List[Tuple[int, int]]:
        """The sizes the network runs at: each frame size resized by `scale`."""
        return [(max(1, round(h * self.scale)), max(1, round(w * self.scale))) for h, w in self.sizes]


@dataclass
class ServeConfig(Options):
    """HTTP API and web page for segmentation."""

    checkpoint: str = option("dabnet-camvid", "checkpoint, .onnx file or bundled name", io="in")
    backend: str = option("auto", backend_help, choices=backend_names, **NOT_A_PATH)
    device: str = option("auto", DEVICE_HELP, check=check_device, **NOT_A_PATH)
    host: str = option("127.0.0.1", "address to bind (default: this machine only)", **NOT_A_PATH)
    port: int = option(8000, "TCP port", range="[0, 65535]", valid="a TCP port, 0-65535")
    max_queue: int = option(16, "waiting requests before 503", range="[1, inf)")
    max_mb: float = option(20.0, "request body limit in MiB (413 beyond)", range="(0, 1e5]")
    max_pixels: int = option(4096 * 4096, "decoded image limit in pixels (413 beyond)", range="[1, 1e12]")
    timeout_s: float = option(30.0, "seconds per request before 504", flag="--timeout", metavar="SECONDS", range="(0, 86400]")
    max_batch: int = option(4, "same-size requests run together", range="[1, 1024]")
    batch_wait_ms: float = option(2.0, "how long the worker waits to fill a batch", range="[0, 60000]")
    scale: float = option(1.0, "resize images by this factor before the network (labels at the image's size); "
                          "above 1 is more accurate and slower, e.g. 1.5", **SCALE)  # fmt: skip
    header_timeout_s: float = option(10.0, "seconds a connection may take to send a request's headers (and to start "
                                     "the next one) before it is closed", range="(0, 3600]")  # fmt: skip
    max_connections: int = option(256, "open connections at most; more are closed at once (keep it under the "
                                  "process's open-file limit)", range="[1, 1e6]")  # fmt: skip
    max_inflight_mb: float = option(512.0, "MiB of bodies and decoded images held by all requests in flight (503 beyond)", range="(0, 1e6]")
    max_per_client: int = option(8, "requests one client address may have in flight at once (429 beyond; behind a "
                                 "proxy all its clients share its address)", range="[1, inf)")  # fmt: skip
    allowed_hosts: List[str] = option(help="host names this server answers to besides localhost, --host and IP "
                                      "addresses; a request whose Host or Origin names another is refused (403: DNS "
                                      "rebinding); * for any", factory=list, nargs="*", check=_host_names, **NOT_A_PATH)  # fmt: skip

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * 2**20)

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)


@dataclass
class DataCheckConfig(Options):
    """Scan every image and mask; exit 0 only when the dataset is clean."""

    dataset: str = option("camvid", "dataset kind", choices=list_datasets, positional=True, **NOT_A_PATH)
    root: str = option("", "dataset root (for 'folder': the dataset YAML or its folder)", positional=True, io="in")
    splits: List[str] = option(help="splits to scan (default: train val test, or the YAML's)", factory=list, nargs="*", **NOT_A_PATH)
    quiet: bool = option(False, "no progress bar", flag_only=True)


@dataclass
class DataStatsConfig(Options):
    """Channel mean/std, class frequencies and class weights of a split."""

    dataset: str = option("camvid", "dataset kind", choices=list_datasets, positional=True, **NOT_A_PATH)
    root: str = option("", "dataset root (for 'folder': the dataset YAML)", positional=True, io="in")
    split: str = option("train", "train, val, trainval (CamVid), test, or a YAML split", **NOT_A_PATH)
    enet_c: float = option(1.02, "c of the ENet weights 1/ln(c+p) (official code: 1.10)", range="(1, 100]")
    json: bool = option(False, "print JSON instead of a table", flag_only=True)


@dataclass
class DataPackConfig(Options):
    """Compact CamVid copy (JPEG frames + PNG labels) to carry to a GPU machine."""

    root: str = option("", "CamVid root (SegNet layout)", positional=True, io="in")
    out: str = option("", "output folder, same layout (keep it git-ignored, e.g. data_packed/camvid)", positional=True, io="out_dir")
    splits: List[str] = option(help="splits to pack", factory=lambda: ["train", "val"], check=_one_of("splits", PACK_SPLITS), **NOT_A_PATH)
    quality: int = option(95, "JPEG quality (4:4:4 chroma)", range="[1, 100]", valid="1-100")


@dataclass
class DataImportConfig(Options):
    """An annotation tool's export (COCO, CVAT masks, Labelme) as a folder dataset with its dataset.yaml."""

    format: str = option("coco", "the export's format", choices=lambda: list(IMPORTERS), positional=True, **NOT_A_PATH)
    source: str = option("", "COCO: the JSON file; CVAT: the export folder (labelmap.txt); Labelme: the folder of .json files",
                         positional=True, io="in")  # fmt: skip
    images: str = option("", "folder holding the annotated images", required=True, metavar="DIR", io="in")
    out: str = option("", "new dataset folder (images/, masks/, dataset.yaml)", required=True, metavar="DIR", io="out_dir")
    val_fraction: float = option(0.0, "share of the images (the last ones, in the export's order) put in a val split",
                                 range="[0, 1)", valid="a share in [0, 1)")  # fmt: skip
    classes: Optional[List[str]] = option(None, "Labelme: class names in id order (default: the labels, sorted)", nargs="+", **NOT_A_PATH)
    overwrite: bool = option(False, "replace an existing --out folder whole (default: refuse a non-empty one)", flag_only=True)


def find_config(name_or_path: str) -> Path:
    """A YAML path, or the name of a shipped config ('camvid', 'configs/camvid.yaml')."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    stem = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    shipped = resources.files("dabnet") / "configs" / f"{stem}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(f"config {shown(name_or_path)} not found: give a YAML path or one of {', '.join(config_names())}")


def _coerce(cls: Type[T], key: str, value: Any) -> Any:
    """A --set string read as `key`'s declared type (`util.options.parse_value`); keyword values pass as given."""
    if not isinstance(value, str):
        return value
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    choices = f.metadata.get("choices") or ()
    return parse_value(key, value, hints_of(cls)[key], choices() if callable(choices) else choices)


# Options renamed since; old configs, commands and run folders keep working: old name -> (new name, value map).
RENAMED: Dict[str, Any] = {"amp": ("precision", {"none": "fp32", None: "fp32"})}


def _renamed(key: str, value: Any, valid: set) -> Tuple[str, Any]:
    if key in RENAMED and key not in valid and RENAMED[key][0] in valid:
        new, values = RENAMED[key]
        return new, values.get(value, value) if isinstance(value, (str, type(None))) else value
    return key, value


def build_config(cls: Type[T], path: Optional[str] = None, overrides: Sequence[str] = (), **kwargs: Any) -> T:
    """Defaults < YAML file < keyword arguments < `key=value` overrides; unknown keys are errors."""
    valid = {f.name for f in dataclasses.fields(cls)}
    values: Dict[str, Any] = {}
    if path:
        cfg_path = find_config(path)
        loaded = load_yaml(cfg_path.read_bytes(), str(cfg_path))
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise ConfigError(f"{cfg_path} must hold a mapping of option: value")
        loaded = dict(_renamed(k, v, valid) for k, v in loaded.items())
        unknown = sorted(map(str, set(loaded) - valid))
        if unknown:
            raise ConfigError(f"{cfg_path}: unknown option(s) {shown(unknown)}; valid options: {', '.join(sorted(valid))}")
        values.update(loaded)
    values.update({k: v for k, v in kwargs.items() if v is not None})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {shown(item)}")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in RENAMED and RENAMED[key][0] in valid:
            key, value = _renamed(key, value.strip().lower(), valid)
        if key not in valid:
            raise ConfigError(f"unknown option {shown(key)} in --set; valid options: {', '.join(sorted(valid))}")
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
