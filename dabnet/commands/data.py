"""`dabnet data check`, `stats`, `pack` and `import`: each prints its report and returns the exit status (1 where the
dataset has problems)."""

from __future__ import annotations

from ..config import DataCheckConfig, DataImportConfig, DataPackConfig, DataStatsConfig, TrainConfig, build_config


def data_check_command(cfg: DataCheckConfig) -> int:
    """Scan every image and mask; 0 only when the dataset is clean."""
    from ..data.check import check_dataset, format_report, is_clean

    reports = check_dataset(cfg.dataset, cfg.root, cfg.splits or None, progress=not cfg.quiet)
    print(format_report(reports))
    clean = is_clean(reports)
    print("dataset is clean" if clean else "dataset has problems (see PROBLEM lines above)")
    return 0 if clean else 1


def data_stats_command(cfg: DataStatsConfig) -> int:
    """Print a split's channel mean/std, class frequencies and class weights."""
    from ..data.stats import stats_report

    print(stats_report(cfg.dataset, cfg.root, cfg.split, cfg.enet_c, cfg.json))
    return 0


def data_pack_command(cfg: DataPackConfig) -> int:
    """Write the compact CamVid copy and say how large it is."""
    from ..data.pack import pack_camvid

    res = pack_camvid(cfg.root, cfg.out, cfg.splits, cfg.quality)
    print(f"packed {res['images']} into {res['out']} ({res['mb']} MB)")
    return 0


def data_import_command(cfg: DataImportConfig) -> int:
    """Import an annotation export, check the dataset made, and print the command that fine-tunes on it."""
    from ..data.check import check_dataset, format_report, is_clean
    from ..data.importers import finetune_command, import_annotations

    res = import_annotations(cfg.format, cfg.source, cfg.images, cfg.out, cfg.val_fraction, cfg.classes, cfg.overwrite)
    print(f"imported {res['images']} image(s), {len(res['classes'])} classes ({', '.join(res['classes'])}) -> {res['yaml']}")
    reports = check_dataset("folder", res["yaml"], progress=False)  # what training will read, checked now
    print(format_report(reports))
    clean = is_clean(reports)
    batch = build_config(TrainConfig, "finetune").batch_size
    print(f"dataset is clean; train on it with: {finetune_command(res, cfg.out, batch)}" if clean else "dataset has problems (see PROBLEM lines above)")
    return 0 if clean else 1
