"""`dabnet eval`: mIoU, per-class IoU and pixel accuracy of a checkpoint on a dataset split."""

from __future__ import annotations

import json
from typing import Any, Dict

import numpy as np
from torch.utils.data import DataLoader, Subset

from ..config import EvalConfig
from ..data.datasets import build_dataset, collate_eval
from ..data.transforms import EvalTransform
from ..inference.segmenter import Segmenter
from ..io.checkpoint import CheckpointError
from ..runtimes import resolve_device
from ..training.engine import evaluate
from ..util.distributed import cleanup, init_distributed, is_main, rank0_first, shard
from ..util.files import atomic_output, check_output_file
from ..util.metrics import per_class_table


def save_confusion_png(mat: np.ndarray, class_names, path: str) -> None:
    """Row-normalised confusion matrix (rows: truth) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = mat.sum(1, keepdims=True)
    norm = np.divide(mat, rows, out=np.zeros(mat.shape, dtype=np.float64), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * n, 0.8 + 0.45 * n), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in range(n):
        for j in range(n):
            if norm[i, j] >= 0.01:
                ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def run_evaluation(cfg: EvalConfig, log=print) -> Dict[str, Any]:
    """Evaluate `cfg.checkpoint` on `cfg.split`; returns the JSON-ready result."""
    for option, path in (("--json", cfg.json), ("--confusion-png", cfg.confusion_png)):
        if path:  # before the evaluation, not after it
            check_output_file(path, option)
    device, _ = init_distributed(resolve_device(cfg.device, cfg.backend, cfg.checkpoint))
    try:
        return _evaluated(cfg, device, log if is_main() else (lambda *a, **k: None))  # under torchrun rank 0 speaks
    finally:
        cleanup()  # the process group of a torchrun evaluation ends with it


def _evaluated(cfg: EvalConfig, device, log) -> Dict[str, Any]:
    def load() -> Segmenter:
        return Segmenter.from_checkpoint(cfg.checkpoint, str(device), cfg.backend, cfg.precision, log=log)

    # Under torchrun rank 0 loads first: it alone writes what its runtime caches (the others then read it), and a
    # checkpoint it cannot load stops every rank with its error.
    seg = rank0_first(load)
    if seg is None:
        seg = load()
    ds = build_dataset(cfg.dataset, cfg.data_root, cfg.split, include=cfg.sequences, exclude=cfg.exclude_sequences)
    if len(seg.class_names) != ds.num_classes:
        raise CheckpointError(
            f"checkpoint {cfg.checkpoint} predicts {len(seg.class_names)} classes but {ds.name} has {ds.num_classes}; "
            "evaluate it on a dataset with the same classes"
        )
    ds.transform = EvalTransform()  # the images as they are: normalised below as predict normalises them
    # Each rank its own images, none twice; `evaluate` sums the confusion matrices of all ranks.
    loader = DataLoader(Subset(ds, shard(len(ds))), batch_size=cfg.batch_size, num_workers=cfg.workers, collate_fn=collate_eval)
    # The labels predict would write (runtimes.predict_image_labels, the Segmenter's runner and normalisation), scored.
    cm = evaluate(seg.run, loader, ds.num_classes, device, ds.ignore_index, scales=cfg.scales, flip=cfg.flip,
                  normalize=seg.normalize)
    res = cm.compute()
    result = {
        "miou": res["miou"],
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(ds.classes, res["iou"])},
        "pixel_acc": res["pixel_acc"],
        "images": len(ds),
        "backend": seg.backend,
    }
    log(f"{cfg.checkpoint} on {ds.name}: {len(ds)} images, backend {seg.backend}, scales {list(cfg.scales)}, flip {cfg.flip}")
    log(per_class_table(res["iou"], ds.classes))
    log(f"mIoU {100 * res['miou']:.2f}%   pixel accuracy {100 * res['pixel_acc']:.2f}%")

    def write() -> None:  # one writer: every rank holds the same result; an output rank 0 cannot write fails them all
        if cfg.json:
            with atomic_output(cfg.json, fsync=False) as tmp:
                tmp.write_text(json.dumps(result, indent=2))
            log(f"wrote {cfg.json}")
        if cfg.confusion_png:
            with atomic_output(cfg.confusion_png, fsync=False) as tmp:
                save_confusion_png(cm.mat.cpu().numpy(), ds.classes, str(tmp))
            log(f"wrote {cfg.confusion_png}")

    rank0_first(write)
    return result
