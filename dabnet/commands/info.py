"""`dabnet models`, `dabnet runtimes` and `dabnet describe`: what is installed (networks, runtimes) and what a
checkpoint or exported file is, printed as a table or text, or as JSON."""

from __future__ import annotations

import json

from ..config import DescribeConfig, ModelsConfig, RuntimesConfig


def models_command(cfg: ModelsConfig) -> int:
    """Print the registered networks with their parameters and GMACs."""
    from .bench import format_models_table, models_table

    rows = models_table(cfg.names or None, cfg.num_classes, cfg.size)
    print(json.dumps(rows, indent=2) if cfg.json else format_models_table(rows, cfg.size))
    return 0


def runtimes_command(cfg: RuntimesConfig) -> int:
    """Print the registered runtimes: precisions, devices, files they run, export formats."""
    from ..runtimes import runtimes_table

    rows = runtimes_table()
    if cfg.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'backend':<12} {'precisions':<16} {'devices':<9} {'runs files':<11} {'exports':<12} summary")
    for r in rows:
        print(f"{r['backend']:<12} {','.join(r['precisions']):<16} {','.join(r['devices']):<9} {','.join(r['runs_files']) or '-':<11} "
              f"{r['export_format'] or '-':<12} {r['summary']}")  # fmt: skip
    return 0


def describe_command(cfg: DescribeConfig) -> int:
    """Print what a checkpoint, bundled name or exported file is, reading no more than its description."""
    from ..inference.spec import describe

    info = describe(cfg.checkpoint).summary()
    if cfg.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['source']}: {info['format']}, network {info['network']}, {info['num_classes']} classes"
          + (f", run by {info['runtime']}" if info["runtime"] else ""))  # fmt: skip
    print("classes: " + ", ".join(info["class_names"]))
    print(f"input: 0-255 RGB, mean {info['mean']}, std {info['std']}")
    if info["note"]:
        print(f"note: {info['note']}")
    for key, value in info["card"].items():  # the model card's key figures, from the file's own metadata
        print(f"{key}: {value}")
    return 0
