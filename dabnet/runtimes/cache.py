"""Keys of the compiled-model caches: what a converted, quantized or compiled model depends on (the weights, the
network and the code that builds it, the installed versions, the calibration data and the CPU), and the store
(`util.store`) each runtime keeps them in: $DABNET_CACHE/RUNTIME, else ~/.cache/dabnet/RUNTIME."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..util import files
from ..util.files import PathLike
from ..util.hardware import cpu_flags
from ..util.store import Store
from ..util.store import package_versions as _versions

PACKAGES = ("dabnet", "torch", "openvino", "nncf")  # what converts, quantizes and compiles a network


def package_versions(packages: Sequence[str] = PACKAGES) -> dict:
    """Installed versions of `packages` ("none" when absent): part of a cached model's key."""
    return _versions(packages)


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
              code: Sequence[Any] = (), packages: Sequence[str] = PACKAGES) -> str:  # fmt: skip
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


def model_store(runtime: str, cache_dir: Optional[PathLike] = None) -> Store:
    """The store of `runtime`'s converted or compiled models: CACHE/RUNTIME, CACHE being `cache_dir`, else
    $DABNET_CACHE, else ~/.cache/dabnet."""
    return Store(Path(cache_dir or files.cache_dir()) / runtime, f"{runtime} model")


__all__ = ["PACKAGES", "cache_key", "hash_weights", "model_store", "package_versions", "source_digest"]
