"""The compiled-model cache every runtime that converts or quantizes shares: one folder per (runtime, kind,
key) under $DABNET_CACHE (else ~/.cache/dabnet), written whole or not at all, rebuilt when damaged.

The key covers what the compiled files depend on: the weights, the network and the code that builds
it, the installed versions, the calibration data and the CPU."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import nn

from ..util import files
from ..util.files import PathLike
from ..util.hardware import cpu_flags

INFO = "info.json"  # beside the cached files: their sizes (what `whole` checks) and what the builder recorded


def package_versions(packages: Sequence[str] = ("dabnet", "openvino", "nncf")) -> Dict[str, str]:
    """Installed versions of `packages` ("none" when absent): part of a cached model's key."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "none"
    return out


def source_digest(model: nn.Module, *modules: Any) -> str:
    """Digest of the code that builds the graph (the network's module, dabnet's layers, the runtime's
    `modules`): a changed forward in a development install must not be served from a stale compile."""
    import inspect

    from ..models import layers

    h = hashlib.sha256()
    for obj in (type(model), layers, *modules):
        try:
            h.update(Path(inspect.getfile(obj)).read_bytes())
        except (OSError, TypeError):  # no source file (e.g. a class defined at the prompt)
            h.update(type(obj).__qualname__.encode())
    return h.hexdigest()[:16]


def hash_weights(h: "hashlib._Hash", model: nn.Module) -> None:
    """Feed every tensor of `model`'s state, by name, to the hash `h`."""
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def cache_key(model: nn.Module, kind: str, calibration: Optional[Sequence[torch.Tensor]] = None,
              code: Sequence[Any] = (), packages: Sequence[str] = ("dabnet", "openvino", "nncf")) -> str:  # fmt: skip
    """What a cached model depends on: weights, network and its code (plus the runtime's `code`
    modules), versions of `packages`, calibration and CPU."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": model.model_name, "kwargs": getattr(model, "model_kwargs", {}), "classes": model.num_classes,
                         "kind": kind, "versions": package_versions(packages), "cpu": cpu_flags(),
                         "code": source_digest(model, *code)}, sort_keys=True, default=str).encode())  # fmt: skip
    hash_weights(h, model)
    for batch in calibration or []:
        h.update(batch.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def whole(folder: Path) -> bool:
    """Whether a cache folder holds every file at the size recorded when it was written."""
    try:
        sizes = json.loads((folder / INFO).read_text())["sizes"]
        return bool(sizes) and all((folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def cached(runtime: str, name: str, build: Callable[[Path], Dict[str, Any]], cache_dir: Optional[PathLike] = None) -> Path:
    """The cache folder `runtime/name`, made by `build(folder)` (which writes its files there and returns what to
    record beside them) the first time, read afterwards. Written in a temporary folder and renamed, so a reader
    sees nothing or the whole; a damaged folder (a disk that filled, a copy cut short) is rebuilt with a warning."""
    folder = Path(cache_dir or files.cache_dir()) / runtime / name
    if whole(folder):
        return folder
    if folder.exists():
        warnings.warn(f"the cached {runtime} model {folder} is incomplete; rebuilding it", stacklevel=3)
        shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        info = dict(build(tmp))
        info["sizes"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / INFO).write_text(json.dumps(info, indent=1))
        try:
            os.replace(tmp, folder)  # atomic: a reader sees no folder or a whole one
        except OSError as e:
            if not whole(folder):  # not another process caching it first: a real failure (a full disk, permissions)
                raise OSError(e.errno, f"cannot cache the {runtime} model in {folder}: {e.strerror}", str(folder)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def info(folder: PathLike) -> Dict[str, Any]:
    """What `cached` recorded in a cache folder (empty when nothing was)."""
    path = Path(folder) / INFO
    return json.loads(path.read_text()) if path.is_file() else {}


__all__ = ["cache_key", "cached", "hash_weights", "info", "package_versions", "source_digest", "whole"]
