"""What a training run draws and in which order: the samplers (shuffled by seed + epoch, sharded by rank, able to
skip the batches an interrupted epoch already trained) and the loaders of training and validation."""

from __future__ import annotations

import itertools
from typing import Any, Dict, Iterator, List, Tuple

import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from ..data.datasets import SegmentationDataset, collate_eval
from ..util import distributed as D
from .signals import SignalSafeLoader, worker_ignores_stop_signals


class FixedShard(Sampler):
    """A rank's fixed share of the dataset (every world_size-th image from its rank), reshuffled each epoch by
    seed + epoch: what data_on_device keeps on that rank's GPU, instead of every image on every GPU."""

    def __init__(self, dataset: SegmentationDataset, seed: int) -> None:
        n = len(dataset) - len(dataset) % D.world_size()  # equal shares, as drop_last
        self.indices, self.seed, self.epoch = list(range(D.rank(), n, D.world_size())), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter([self.indices[i] for i in torch.randperm(len(self.indices), generator=g).tolist()])

    def __len__(self) -> int:
        return len(self.indices)


class ResumableSampler(Sampler):
    """A DistributedSampler (shuffled by seed + epoch, sharded by rank; with `fixed_shard`, each rank's share
    fixed for the run) that can skip the batches already trained in an interrupted epoch."""

    def __init__(self, dataset: SegmentationDataset, seed: int, batch_size: int, fixed_shard: bool = False) -> None:
        self.inner = (FixedShard(dataset, seed) if fixed_shard else
                      DistributedSampler(dataset, num_replicas=D.world_size(), rank=D.rank(), shuffle=True, seed=seed, drop_last=True))  # fmt: skip
        self.batch_size = batch_size
        self.skip_batches = 0

    def indices(self) -> List[int]:
        """Every index this rank can draw in any epoch (data_on_device decodes these only)."""
        return list(self.inner.indices) if isinstance(self.inner, FixedShard) else list(range(len(self.inner.dataset)))

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip_batches * self.batch_size, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip_batches * self.batch_size


def build_loaders(cfg: Any, train_ds: SegmentationDataset, drawn: Any, val_sets: Dict[str, Any], sampler: ResumableSampler,
                  device: torch.device) -> Tuple[Any, Dict[str, DataLoader]]:  # fmt: skip
    """The training batches (drawn from `drawn`, the dataset as the callbacks give it) and the validation loaders."""
    if cfg.data_on_device:
        from ..data.device import DeviceBatches

        loader: Any = DeviceBatches(train_ds, sampler, cfg.batch_size, device, tuple(cfg.crop_size), cfg.scales, cfg.flip,
                                    train_ds.mean, train_ds.std, progress=D.is_main())  # fmt: skip
    else:
        loader = SignalSafeLoader(drawn, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                                  pin_memory=device.type == "cuda", worker_init_fn=worker_ignores_stop_signals)  # fmt: skip
    val_loaders = {}
    for key, ds in val_sets.items():
        val_loaders[key] = SignalSafeLoader(torch.utils.data.Subset(ds, D.shard(len(ds))), batch_size=cfg.val_batch_size,
                                            num_workers=min(cfg.workers, 2), collate_fn=collate_eval,
                                            worker_init_fn=worker_ignores_stop_signals)  # fmt: skip
    return loader, val_loaders
