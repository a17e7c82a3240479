"""`dabnet export`: a network written in the format a runtime declares (`runtimes.export_formats()`), then
loaded back by that runtime and checked against PyTorch at two sizes in fp32; a file that disagrees is deleted.
Where the runtime's own API runs the file in another precision by default on this CPU (OpenVINO: bf16 on CPUs
with it), the labels' agreement in that precision is reported beside fp32's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..config import ExportConfig
from ..inference.spec import describe
from ..models.layers import MaxUnpool2x
from ..runtimes import export_formats, runtime_for_export
from ..runtimes.meta import export_sizes
from ..util.files import PathLike, check_output_file, writing

TOLERANCE = 1e-4


class ExportError(ValueError):
    """An export that failed or whose outputs disagree with PyTorch."""


def export_model(model: nn.Module, fmt: str, path: PathLike, check: bool = True) -> Dict[str, Any]:
    """Write `model` (eval mode) as `fmt` and check it with its runtime at a padding-free and an odd size
    (`check=False` only for timing untrained networks, whose huge logits make the check moot). Every file is
    written and checked in a temporary folder beside `path`, then renamed into place: an export that fails, or
    is interrupted, leaves the files already at `path` as they were."""
    import shutil
    import tempfile

    runtime = runtime_for_export(fmt)
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.exporting-", dir=path.parent))
    try:
        tmp = work / path.name  # same names as the final files: an IR's .xml finds its .bin by stem
        try:
            with writing(path, scratch=work):  # a full disk names `path` and its own file system's free space
                runtime.export(model.eval(), tmp)
        except ValueError as e:  # a network the format cannot hold: the runtime says which format can
            raise ExportError(str(e)) from e
        result = {"path": str(path), "format": fmt, "max_abs_error": None, "checked_sizes": []}
        if check:
            try:
                file = runtime.open(tmp)
                result = _check_runner(model, file.make("fp32", "cpu"), path, fmt)
                result["default_precision"] = default = runtime.default_precision()
                if default != "fp32":  # what a plain load of the file runs here: reported, never a reason to refuse it
                    result["label_agreement_at"][default] = _default_agreement(model, file, default)
            except ExportError:
                raise
            except Exception as e:  # the exported file fails to load or to run: nothing is kept
                raise ExportError(f"the {fmt} export of {model.model_name} fails when run ({type(e).__name__}: {e}); "
                                  f"nothing was written at {path}") from e  # fmt: skip
        for f in runtime.export_files(tmp):
            os.replace(f, path.parent / f.name)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measured(model: nn.Module, runner) -> Tuple[List[float], float, float]:
    """(largest difference per size, largest logit, lowest label agreement) of `runner` against PyTorch at a
    padding-free and an odd size, on the same random images for every runner (a fixed seed)."""
    errors, scale, agreement = [], 0.0, 1.0
    g = torch.Generator().manual_seed(0)
    for shape in export_sizes(model):
        xi = torch.randn(1, 3, *shape, generator=g)
        with torch.inference_mode():
            ref = model(xi)
            out = runner(xi)
        errors.append(float((out - ref).abs().max()))
        scale = max(scale, float(ref.abs().max()))
        agreement = min(agreement, float((out.argmax(1) == ref.argmax(1)).float().mean()))
    return errors, scale, agreement


def _default_agreement(model: nn.Module, file, precision: str) -> Optional[float]:
    """The label agreement of `file` run in `precision` (its runtime's default here), or None where that cannot
    run (oneDNN capped below what the runtime's default needs: an emulated smaller CPU)."""
    try:
        return _measured(model, file.make(precision, "cpu"))[2]
    except (ValueError, RuntimeError):
        return None


def _check_runner(model: nn.Module, runner, path: Path, fmt: str) -> Dict[str, Any]:
    """Compare an exported file's fp32 runner with PyTorch at a padding-free and an odd size."""
    errors, scale, agreement = _measured(model, runner)
    # Max-unpooling puts each value where its pooling window's maximum was: two values within fp32 rounding
    # of each other swap places in another runtime, and the logits downstream of that window differ though
    # the graph is right. Such a network is checked on its labels.
    result = _verdict(path, fmt, errors, list(export_sizes(model)), scale, agreement if routes_by_argmax(model) else None)
    result["label_agreement_at"] = {"fp32": agreement}
    return result


MIN_LABEL_AGREEMENT = 0.99  # for networks that route by argmax (see _check_runner); a wrong graph agrees on ~1/classes


def routes_by_argmax(model: nn.Module) -> bool:
    """Whether `model` has max-unpooling, whose output depends on which element of a window is largest."""
    return any(isinstance(m, MaxUnpool2x) for m in model.modules())


def _verdict(path: Path, fmt: str, errors, sizes, logit_scale: float = 0.0, agreement: Optional[float] = None) -> Dict[str, Any]:
    """Pass when the largest difference is under TOLERANCE relative to the logits' size (fp32 rounding grows
    with it: a trained net's logits reach 100), or, where `agreement` is given, when the labels agree on at
    least MIN_LABEL_AGREEMENT of the pixels; otherwise raise (export_model then keeps nothing)."""
    worst = max(errors)
    allowed = TOLERANCE * max(1.0, logit_scale)
    on_labels = agreement is not None and agreement >= MIN_LABEL_AGREEMENT and np.isfinite(worst)
    if not on_labels and (not np.isfinite(worst) or worst >= allowed):
        raise ExportError(
            f"{fmt} export disagrees with PyTorch: max abs error {worst:.2e} >= {allowed:.1e} (1e-4 x the largest "
            f"logit, {logit_scale:.1f}); nothing was written at {path}"
        )
    return {"path": str(path), "format": fmt, "max_abs_error": worst, "max_abs_logit": logit_scale, "tolerance": allowed,
            "checked_sizes": [list(s) for s in sizes], "label_agreement": agreement}  # fmt: skip


def check_summary(result: Dict[str, Any]) -> str:
    """What the check of an export found, in one line: the fp32 verdict, and the label agreement at fp32 and at the
    precision a plain load of the file runs here when that is another (OpenVINO's CPU plugin: bf16 on CPUs with it)."""
    if result.get("max_abs_error") is None:
        return "not checked"
    if result["max_abs_error"] < result["tolerance"]:
        line = f"max abs error {result['max_abs_error']:.2e} (< {result['tolerance']:.1e}, 1e-4 x the largest logit)"
    else:  # a max-unpooling network, checked on its labels (_check_runner says why)
        line = f"max abs logit error {result['max_abs_error']:.2e}, checked on its labels"
    at = result.get("label_agreement_at", {})
    line += "; labels on the checked images agree on " + ", ".join(
        f"{100 * a:.2f}% at {p}" if a is not None else f"(not measured: cannot run here) at {p}" for p, a in at.items())
    default = result.get("default_precision", "fp32")
    if default != "fp32":
        line += f" ({default}: what a plain load of the file runs in on this CPU; docs/deploying.md shows how to pin fp32)"
    return line


def run_export(checkpoint: PathLike, fmt: str, out: PathLike) -> Dict[str, Any]:
    """`dabnet export`: load any checkpoint (or bundled name) and export it."""
    if fmt not in export_formats():
        raise ValueError(f"unknown export format {fmt!r}; choose {', '.join(export_formats())}")
    inputs = [checkpoint] if Path(checkpoint).exists() else []  # a bundled name is no file to protect
    for i, path in enumerate(runtime_for_export(fmt).export_files(Path(out))):
        check_output_file(path, "--out" if i == 0 else f"--out (its {path.suffix})", inputs)
    return export_model(describe(checkpoint).build(), fmt, out)


def export_command(cfg: ExportConfig) -> int:
    """`dabnet export` from the command line: export, then say what the check against PyTorch found."""
    res = run_export(cfg.checkpoint, cfg.format, cfg.out)
    print(f"exported {res['path']} ({res['format']}); checked against PyTorch at {res['checked_sizes']}: {check_summary(res)}")
    return 0
