"""Options of every command: one module per command (`train`, `evaluate`, `predict`, `export`, `bench`, `serve`,
`demo`, `average`, `info` for models/runtimes/describe, `data`), each a dataclass whose fields declare their
default, help, choices (from the registries), range and role with files; `validate` holds the checks and ranges
they share, and `load` makes a config from defaults, YAML and `--set`. Every name is importable from here; may
import inference, runtimes, data, io, models and util."""

from ..util.options import ConfigError, Options, option, save_config
from .average import AverageConfig
from .bench import BenchConfig
from .data import PACK_SPLITS, DataCheckConfig, DataImportConfig, DataPackConfig, DataStatsConfig
from .demo import DemoConfig
from .evaluate import EvalConfig
from .export import ExportConfig
from .info import DescribeConfig, ModelsConfig, RuntimesConfig
from .load import RENAMED, build_config, config_names, find_config, from_saved
from .predict import PredictConfig
from .serve import ServeConfig
from .train import CLASS_WEIGHTS, LOSSES, OPTIMIZERS, TRAIN_GROUPS, TRAIN_PRECISIONS, TrainCommand, TrainConfig
from .validate import (
    DEVICE_HELP,
    IO_ROLES,
    MAX_MODULES,
    NOT_A_PATH,
    SCALE,
    SCALES,
    SIDE,
    check_device,
    check_io,
    check_model_kwargs,
    host_names,
    list_model_names,
    nonempty,
    one_of,
    parse_size,
    path_is,
    require,
)

__all__ = ["AverageConfig", "BenchConfig", "CLASS_WEIGHTS", "ConfigError", "DEVICE_HELP", "DataCheckConfig",
           "DataImportConfig", "DataPackConfig", "DataStatsConfig", "DemoConfig", "DescribeConfig", "EvalConfig",
           "ExportConfig", "IO_ROLES", "LOSSES", "MAX_MODULES", "ModelsConfig", "NOT_A_PATH", "OPTIMIZERS", "Options",
           "PACK_SPLITS", "PredictConfig", "RENAMED", "RuntimesConfig", "SCALE", "SCALES", "SIDE", "ServeConfig",
           "TRAIN_GROUPS", "TRAIN_PRECISIONS", "TrainCommand", "TrainConfig", "build_config", "check_device", "check_io",
           "check_model_kwargs", "config_names", "find_config", "from_saved", "host_names", "list_model_names",
           "nonempty", "one_of", "option", "parse_size", "path_is", "require", "save_config"]
