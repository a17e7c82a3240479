"""Say what a model is before running it: `describe(checkpoint, bundled name, exported file or network) ->
ModelSpec` (network, classes, names, colours, normalisation, source format), with no backend prepared.

A checkpoint is read once: the spec keeps what was read, and `spec.build()` makes the network from it.
A checkpoint that does not say what its classes are is described honestly: official DABNet layouts by
their class count (11: CamVid, 19: Cityscapes), anything else with generic names and a `note`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from torch import nn

from ..data import get_dataset, known_classes
from ..data.classes import IMAGENET_MEAN, IMAGENET_STD, default_palette
from ..io.checkpoint import CheckpointError, Network, build_model, read_network
from ..models import pretrained_config
from ..runtimes import ExportedFile, runtime_for_file
from ..util.files import PathLike

OFFICIAL_DATASETS = {11: "camvid", 19: "cityscapes"}  # the official DABNet code trains these two


@dataclass(frozen=True)
class ModelSpec:
    """What a model is and what using it needs. `runtime` names the runtime that runs an exported file as it
    is (None for checkpoints and networks); `note` says what was assumed where the source was silent. `weights`
    is what was read: a checkpoint's `Network`, a network, or an exported file's `ExportedFile` (run without
    reading the file again)."""

    source: str
    source_format: str
    network: str
    num_classes: int
    class_names: Tuple[str, ...]
    palette: Tuple[Tuple[int, int, int], ...]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    meta: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    runtime: Optional[str] = None
    note: str = ""
    weights: Union[Network, nn.Module, ExportedFile, None] = field(default=None, compare=False, repr=False)

    @property
    def exported(self) -> bool:
        return self.runtime is not None

    def build(self) -> nn.Module:
        """The network (eval mode, weights loaded) from what `describe` read; no second read of the file."""
        if isinstance(self.weights, nn.Module):
            return self.weights.eval()
        if isinstance(self.weights, Network):
            return build_model(self.weights)
        raise CheckpointError(f"not a dabnet checkpoint: {self.source} is an exported {self.source_format} model; give the "
                              "checkpoint it was exported from (predict, eval and serve run it as it is)")  # fmt: skip

    def summary(self) -> Dict[str, Any]:
        """JSON-ready: what `dabnet describe` prints and the service's /v1/model reports."""
        return {"source": self.source, "format": self.source_format, "network": self.network, "num_classes": self.num_classes,
                "class_names": list(self.class_names), "palette": [list(c) for c in self.palette], "mean": list(self.mean),
                "std": list(self.std), "runtime": self.runtime, "note": self.note, "card": training_card(self.meta)}  # fmt: skip


def _pct(v: Any) -> str:
    return f"{100 * float(v):.2f}%"


def weights_identity(checkpoint: str) -> str:
    """One line naming weights for a report's header: the name given, the network and how it was trained."""
    spec = describe(checkpoint)
    card = training_card(spec.meta)
    how = "; ".join(card[k] for k in ("trained", "data") if k in card)
    return f"{checkpoint} ({spec.network}{'; ' + how if how else ''})"


def training_card(meta: Dict[str, Any]) -> Dict[str, str]:
    """The key figures of a model card, from a checkpoint's own metadata (so that the two cannot drift apart):
    recipe, data, start, epochs and hours, hardware, how the weights were chosen, and what they score where."""
    cfg = meta.get("config") or {}
    card: Dict[str, str] = {}
    if cfg:
        card["recipe"] = (f"{cfg.get('crop_size', ['?', '?'])[0]}x{cfg.get('crop_size', ['?', '?'])[1]} crops, batch "
                          f"{cfg.get('batch_size')}, {cfg.get('optimizer')} lr {cfg.get('lr')}, {cfg.get('epochs')}-epoch "
                          f"schedule, {cfg.get('loss', 'ce')} with {cfg.get('class_weights')} class weights, {cfg.get('precision', 'fp32')}")  # fmt: skip
        extras = [f"{k} {cfg[k]}" for k in ("distill_from", "ema") if cfg.get(k)]
        card["recipe"] += "".join(f", {e}" for e in extras)
    if meta.get("dataset"):
        held = (meta.get("data_splits") or {}).get("holdout") or meta.get("holdout_sequences") or []
        card["data"] = str(meta["dataset"]) + (f", drives {', '.join(held)} held out" if held else "")
        if meta.get("trained_on_every_labelled_frame"):
            card["data"] += ": every labelled frame trained on"
    if meta.get("init_from") or cfg.get("init_from"):
        card["started from"] = str(meta.get("init_from") or cfg.get("init_from"))
    if meta.get("epochs_run") or meta.get("epoch"):
        epochs = f"{meta.get('epochs_run') or meta.get('epoch')} epochs"
        card["trained"] = epochs + (f", {float(meta['trained_minutes']) / 60:.1f} hours" if meta.get("trained_minutes") else "")
    if meta.get("hardware"):
        card["hardware"] = str(meta["hardware"])
    if meta.get("selection_rule"):
        card["chosen by"] = str(meta["selection_rule"])
    elif meta.get("averaged_from"):
        card["chosen by"] = f"the mean of {len(meta['averaged_from'])} checkpoints (dabnet average)"
    elif meta.get("selected_on"):
        card["chosen by"] = f"the best epoch on its {meta['selected_on']} set"
    figures = []
    for key, name in (("test_miou", "test"), ("holdout_miou", "held-out drives"), ("val_miou", "val")):
        if meta.get(key) is not None:
            trained = name == "val" and meta.get("val_trained_on")
            figures.append(f"{name} {_pct(meta[key])}" + (" (trained on: fitting, not a new drive)" if trained else ""))
    if str(meta.get("dataset", "")).startswith("camvid") and meta.get("test_miou") is None:
        figures.append("CamVid test: not measured here")
    if figures:
        card["mIoU"] = "; ".join(figures)
    return card


def _dataset(meta: Dict[str, Any], num_classes: int, official: bool) -> Tuple[Optional[str], str]:
    """(dataset whose names, colours and normalisation apply, note) from a description."""
    named = str(meta.get("dataset") or "").split(":")[0]  # runs record e.g. "camvid:trainval-0006R0"
    if known_classes(named) and len(get_dataset(named).classes) == num_classes:
        return named, ""
    if official and num_classes in OFFICIAL_DATASETS:
        ds = OFFICIAL_DATASETS[num_classes]
        return ds, f"official DABNet checkpoint with {num_classes} classes: {ds}'s classes assumed"
    return None, ""


def _described(source: str, source_format: str, network: str, num_classes: int, meta: Dict[str, Any], *,
               official: bool = False, runtime: Optional[str] = None, weights: Any = None) -> ModelSpec:  # fmt: skip
    ds, note = _dataset(meta, num_classes, official)
    kind = get_dataset(ds) if ds else None
    info: Dict[str, Any] = dict(classes=kind.classes, palette=kind.palette, mean=kind.mean, std=kind.std) if kind else {}
    notes = [note] if note else []
    names = meta.get("class_names") or info.get("classes")
    if not names or len(names) != num_classes:
        names = [f"class {i}" for i in range(num_classes)]
        notes.append(f"no class names recorded for its {num_classes} classes: generic names and colours")
    palette = meta.get("palette") or info.get("palette") or default_palette(num_classes)
    if len(palette) != num_classes:
        palette = default_palette(num_classes)
    if "mean" in meta and "std" in meta:
        mean, std = meta["mean"], meta["std"]
    elif ds:  # official checkpoints were trained on mean-subtracted RGB without std division
        mean, std = info["mean"], (1.0, 1.0, 1.0) if official else info["std"]
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        notes.append("no input normalisation recorded: ImageNet's mean and std assumed")
    return ModelSpec(
        source, source_format, network, num_classes, tuple(map(str, names)), tuple(tuple(int(v) for v in c) for c in palette),
        tuple(float(v) for v in mean), tuple(float(v) for v in std), dict(meta), runtime, "; ".join(notes), weights,
    )  # fmt: skip


def describe(source: Union[PathLike, nn.Module]) -> ModelSpec:
    """What `source` (a checkpoint file, a bundled name, an exported file, or a network built by dabnet) is,
    without preparing any backend; a checkpoint is read once and kept for `ModelSpec.build`."""
    if isinstance(source, nn.Module):
        meta = dict(getattr(source, "checkpoint_meta", {}))
        return _described(getattr(source, "model_name", type(source).__name__), "network", getattr(source, "model_name", "model"),
                          int(source.num_classes), meta, official=meta.get("source") == "official", weights=source)  # fmt: skip
    runtime = runtime_for_file(source)
    if runtime is not None:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"exported model not found: {path}")
        fmt = runtime.export_format or runtime.name
        try:
            file = runtime.open(path)
        except Exception as e:  # each runtime's reader fails its own way on a truncated or foreign file
            raise CheckpointError(f"{path} is an exported {fmt} model by its name, but {runtime.name} cannot read it "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); it may be "
                                  "truncated (copy it again) or another kind of file") from None  # fmt: skip
        meta = file.metadata
        return _described(str(path), fmt, str(meta.get("model_name", path.stem)),
                          int(meta.get("num_classes", 0)), meta, official=meta.get("source") == "official",
                          runtime=runtime.name, weights=file)  # fmt: skip
    net = read_network(source)
    classes = net.num_classes if net.num_classes is not None else 19
    bundled = pretrained_config(str(source)) if not os.path.exists(str(source)) else None
    fmt = f"bundled weights {bundled.name}" if bundled else ("official DABNet checkpoint" if net.source == "official" else "dabnet checkpoint")
    return _described(str(source), fmt, net.name, classes, net.meta, official=net.source == "official", weights=net)
