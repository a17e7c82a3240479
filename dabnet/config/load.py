"""Configs made from defaults, a YAML file and `--set key=value` overrides (`build_config`), saved beside a run
(`util.options.save_config`) and read back as they were saved (`from_saved`); the shipped configs are dabnet/configs/*.yaml."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

from ..util.options import ConfigError, hints_of, load_yaml, parse_value, shown

T = TypeVar("T")


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
