"""`dabnet train`'s options: `TrainConfig`, every option of a run (YAML or `--set key=value`), each in one of
`TRAIN_GROUPS` (its `group`), which `dabnet train --help` lists group by group; and `TrainCommand`, the command's
own flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..data.registry import list_datasets
from ..util.options import ConfigError, Options, option
from .load import config_names
from .validate import NOT_A_PATH, SCALES, SIDE, check_device, check_model_kwargs, list_model_names, nonempty

OPTIMIZERS = ["adam", "adamw", "sgd"]
LOSSES = ["ce", "ohem"]
CLASS_WEIGHTS = ["enet", "median", "none"]
TRAIN_PRECISIONS = ["fp32", "bf16", "fp16"]  # autocast; fp16 on CUDA only

# The groups `dabnet train --help` lists the options in, in this order; every TrainConfig field names one.
DATA, MODEL, OPTIMISATION, SCHEDULE = "data", "model", "optimisation", "schedule"
AUGMENTATION, EMA_AND_DISTILLATION, RUNTIME = "augmentation", "EMA and distillation", "runtime"
TRAIN_GROUPS = (DATA, MODEL, OPTIMISATION, SCHEDULE, AUGMENTATION, EMA_AND_DISTILLATION, RUNTIME)


@dataclass
class TrainConfig(Options):
    """Everything `dabnet train` needs; every field can be set in YAML or with --set."""

    dataset: str = option("camvid", "dataset kind (the dataset registry)", choices=list_datasets, **NOT_A_PATH, group=DATA)
    data_root: str = option("../shared/data/camvid", "dataset root (for 'folder': the dataset YAML)", io="in", group=DATA)
    train_split: str = option("train", "split trained on", **NOT_A_PATH, group=DATA)
    val_split: Optional[str] = option("val", "split validated on each val_every epochs; None: no in-sequence validation", **NOT_A_PATH, group=DATA)
    holdout: List[str] = option(help="whole sequences (file-name prefixes, e.g. CamVid's 0006R0) taken out of train_split and validated on: drives never trained on, the honest proxy for a test set; best.pth is then chosen on them", factory=list,
                                check=nonempty("holdout", "a list of file-name prefixes, e.g. [0006R0]"), **NOT_A_PATH, group=DATA)  # fmt: skip
    crop_size: List[int] = option(help="[HEIGHT, WIDTH] of the random training crops", factory=lambda: [360, 480], range=SIDE, length=(2, 2),
                                  valid=f"[HEIGHT, WIDTH], two integers in {SIDE}", group=AUGMENTATION)  # fmt: skip
    scales: List[float] = option(help="random rescaling factors of the training images (the paper: 0.75 to 2)", factory=lambda: [0.75, 1.0, 1.25, 1.5, 1.75, 2.0],
                                 range="(0, 8]", length=(1, 64), group=AUGMENTATION)  # fmt: skip
    flip: bool = option(True, "random horizontal flips", group=AUGMENTATION)
    mean: Optional[List[float]] = option(None, "None: the dataset's own statistics", range="[0, 255]", length=(3, 3),
                                         valid="null or three numbers in [0, 255] (0-255 RGB)", group=DATA)  # fmt: skip
    std: Optional[List[float]] = option(None, "None: the dataset's own; [1, 1, 1] = mean subtraction only", range="(0, 255]", length=(3, 3),
                                        valid="null or three numbers in (0, 255] (0-255 RGB)", group=DATA)  # fmt: skip
    workers: int = option(2, "data-loading processes", range="[0, 1024]", group=DATA)
    check_data: bool = option(True, "scan every file before training (clear errors before hours of work)", group=DATA)
    data_on_device: bool = option(False, "decode once, keep uint8 images on the device, augment there", group=DATA)
    model: str = option("dabnet", "network (dabnet models lists them)", choices=list_model_names, **NOT_A_PATH, group=MODEL)
    model_kwargs: Dict[str, Any] = option(help="the network's own options, e.g. {block_1: 3, block_2: 6}", factory=dict,
                                          range="[0, 4096]", valid="a mapping of the network's own options to values, numbers in [0, 4096]",
                                          **NOT_A_PATH, group=MODEL)  # fmt: skip
    init_from: Optional[str] = option(None, "weights to start from (ours or official)", io="in", group=MODEL)
    epochs: int = option(1000, "length of the poly schedule, in epochs", range="[1, inf)", group=SCHEDULE)
    batch_size: int = option(16, "images per step (per process under torchrun)", range="[1, 65536]", group=OPTIMISATION)
    optimizer: str = option("adam", "optimizer", choices=OPTIMIZERS, **NOT_A_PATH, group=OPTIMISATION)
    lr: float = option(1e-3, "peak learning rate", range="(0, 10]", group=OPTIMISATION)
    momentum: float = option(0.9, "SGD momentum", range="[0, 1)", group=OPTIMISATION)
    betas: List[float] = option(help="Adam/AdamW betas", factory=lambda: [0.9, 0.999], range="[0, 1)", length=(2, 2), group=OPTIMISATION)
    weight_decay: float = option(2e-4, "L2 weight decay", range="[0, 1]", group=OPTIMISATION)
    poly_power: float = option(0.9, "exponent of the poly learning-rate decay", range="(0, 100]", group=SCHEDULE)
    warmup_iters: int = option(500, "linear warm-up steps", range="[0, inf)", group=SCHEDULE)
    warmup_ratio: float = option(1.0 / 3.0, "warm-up starts at lr * warmup_ratio", range="(0, 1]", group=SCHEDULE)
    grad_clip: float = option(0.0, "max gradient norm; 0 = off", range="[0, inf)", group=OPTIMISATION)
    ema: float = option(0.0, "decay of an exponential moving average of the weights, validated and saved as the model; 0 = off",
                        range="[0, 1)", valid="a decay in [0, 1), e.g. 0.999 (0 = off)", group=EMA_AND_DISTILLATION)  # fmt: skip
    distill_from: Optional[str] = option(None, "teacher: a checkpoint path or bundled name with this run's classes; None = off", io="in",
                                         check=nonempty("distill_from", "null, or a checkpoint path or bundled name such as dabnet-camvid"), group=EMA_AND_DISTILLATION)  # fmt: skip
    distill_scales: List[float] = option(help="the teacher's ensemble: input scales, probabilities averaged", factory=lambda: [1.0], **SCALES, group=EMA_AND_DISTILLATION)
    distill_flip: bool = option(False, "the teacher's ensemble also sees horizontal flips", group=EMA_AND_DISTILLATION)
    distill_weight: float = option(1.0, "loss = CE + weight * T^2 * KL(teacher_T || student_T)", range="[0, inf)", group=EMA_AND_DISTILLATION)
    distill_temperature: float = option(1.0, "softmax temperature of teacher and student in the KL term", range="(0, 100]", group=EMA_AND_DISTILLATION)
    distill_cache: Optional[str] = option(None, "folder of the teacher's maps (None: OUT/teacher_cache); runs may share one", io="out_dir", group=EMA_AND_DISTILLATION)  # fmt: skip
    loss: str = option("ce", "ce (cross-entropy) or ohem (online hard example mining, as the paper's Cityscapes recipe)", choices=LOSSES, **NOT_A_PATH, group=OPTIMISATION)
    class_weights: str = option("enet", "class weighting of the loss: enet (1 / ln(c + p)), median frequency, or none", choices=CLASS_WEIGHTS, **NOT_A_PATH, group=OPTIMISATION)
    enet_c: float = option(1.02, "w = 1 / ln(c + p); the official DABNet code uses 1.10", range="(1, 100]",
                           valid="a finite number in (1, 100] (the ENet weights are 1 / ln(c + p))", group=OPTIMISATION)  # fmt: skip
    ohem_thresh: float = option(0.7, "OHEM keeps pixels whose true-class probability is below this", range="(0, 1]", group=OPTIMISATION)
    ohem_min_kept: Optional[int] = option(None, "None: batch * H * W / 16, as the paper", range="[0, inf)", group=OPTIMISATION)
    precision: str = option("fp32", "fp32, or bf16/fp16 autocast (fp16 on CUDA only); formerly `amp` (none = fp32)", choices=TRAIN_PRECISIONS, **NOT_A_PATH, group=RUNTIME)  # fmt: skip
    channels_last: bool = option(False, "NHWC memory layout (faster on GPUs with tensor cores)", group=RUNTIME)
    compile: bool = option(False, "torch.compile the training step", group=RUNTIME)
    fused: bool = option(True, "BatchNorm+PReLU pairs, the x8 upsampling and the cross-entropy on compiled kernels (models.fused): same parameters and numbers, faster on a CPU; falls back to eager layers, with a warning, where nothing compiles", group=RUNTIME)  # fmt: skip
    sync_bn: bool = option(False, "synchronised BatchNorm across torchrun processes", group=RUNTIME)
    val_every: int = option(1, "validate every N epochs", range="[1, inf)", group=SCHEDULE)
    val_batch_size: int = option(4, "images per validation pass", range="[1, 65536]", group=RUNTIME)
    keep_every: int = option(0, "also keep every N-th epoch's checkpoint as epoch_NNNN.pth (for `dabnet average`); 0 = off", range="[0, inf)", group=SCHEDULE)  # fmt: skip
    log_every: int = option(10, "log every N steps", range="[1, inf)", group=SCHEDULE)
    seed: int = option(0, "random seed (data order, augmentation, initialisation)", range="[0, 4294967295]", group=RUNTIME)
    out: str = option("runs/camvid", "run folder: checkpoints, logs, curves", io="own_dir", group=RUNTIME)
    device: str = option("auto", "auto (the GPU when there is one), cpu, cuda or cuda:N", check=check_device, **NOT_A_PATH, group=RUNTIME)

    def check(self) -> None:
        if self.model_kwargs:
            check_model_kwargs(self.model, self.model_kwargs)
        if self.distill_from and self.data_on_device:
            raise ConfigError("distill_from with data_on_device=true is not supported: the teacher's maps come through the "
                              "loader; use data_on_device=false")  # fmt: skip


@dataclass
class TrainCommand(Options):
    """Train a network (the paper's recipes ship as configs); every TrainConfig option can be --set."""

    config: str = option("", "YAML path or shipped config name: " + ", ".join(config_names()), required=True, io="in")
    set: List[str] = option(help="override any config option (repeatable; every option is listed below)", factory=list, nargs=None, action="append",
                            metavar="KEY=VALUE", **NOT_A_PATH)  # fmt: skip
    out: Optional[str] = option(None, "run folder (default: the config's `out`)", io="own_dir")
    resume: Optional[str] = option(None, "resume from this checkpoint (default: OUT/last.pth when present)", metavar="CKPT", io="in")
    restart: bool = option(False, "ignore OUT/last.pth and start from scratch", flag_only=True)

    settable = (TrainConfig, TRAIN_GROUPS)  # what --set takes: `dabnet train --help` lists it, group by group
