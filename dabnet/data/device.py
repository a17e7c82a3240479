"""`data_on_device`: decode a dataset once, keep it on the device as uint8, augment batches there.

On a GPU the per-image decode and resize of a CPU loader cannot keep up with a network this
small; here every epoch after the first costs no decoding and no host-to-device copies. The
random choices (scale, crop, flip) come from the same per-sample generator as `TrainTransform`,
seeded by (seed, epoch, index), so runs are reproducible and resumable exactly as with a loader.
"""

from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import SegmentationDataset


class DeviceBatches:
    """Iterable of augmented (images, masks) batches drawn from uint8 tensors held on `device`."""

    def __init__(
        self,
        dataset: SegmentationDataset,
        sampler,  # train.ResumableSampler: iterates this epoch's indices, and `indices()` gives every one it may draw
        batch_size: int,
        device: torch.device,
        crop_size: Tuple[int, int],
        scales: Sequence[float],
        flip: bool,
        mean: Sequence[float],
        std: Sequence[float],
        progress: bool = False,
    ) -> None:
        self.dataset, self.sampler, self.batch_size, self.device = dataset, sampler, batch_size, device
        self.crop, self.scales, self.flip = tuple(crop_size), list(scales), flip
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.ignore = dataset.ignore_index
        images, masks = {}, {}
        # Only what this process can draw: its fixed share under DDP (train.ResumableSampler), everything otherwise.
        indices = sampler.indices()
        if progress:
            from ..util.progress import progress_bar

            indices = progress_bar(indices, desc=f"decoding {dataset.name} onto {device}", unit="img", leave=False)
        for i in indices:
            image, mask = dataset.load_pair(i)
            images[i] = torch.from_numpy(image).permute(2, 0, 1).to(device)
            masks[i] = torch.from_numpy(mask).to(device)
        self.images, self.masks = images, masks  # by dataset index: images may differ in size

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def _augment(self, index: int, rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """The draws of TrainTransform, in the same order, applied with tensor ops on the device."""
        image = self.images[index][None].float()
        mask = self.masks[index][None, None].float()
        h, w = mask.shape[2:]
        s = float(self.scales[rng.integers(len(self.scales))])
        if s != 1.0:
            size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=s < 1.0)
            mask = F.interpolate(mask, size=size, mode="nearest-exact")
            h, w = size
        ch, cw = self.crop
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            mask = F.pad(mask, (0, pw, 0, ph), value=float(self.ignore))
            h, w = h + ph, w + pw
        y = int(rng.integers(h - ch + 1))
        x = int(rng.integers(w - cw + 1))
        image = image[:, :, y : y + ch, x : x + cw]
        mask = mask[:, :, y : y + ch, x : x + cw]
        if self.flip and rng.random() < 0.5:
            image, mask = image.flip(3), mask.flip(3)
        return image.round().clamp(0, 255), mask

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        seed, epoch = self.dataset.seed, self.dataset.epoch
        batch = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                pairs = [self._augment(i, np.random.default_rng([seed, epoch, i])) for i in batch]
                images = torch.cat([p[0] for p in pairs])
                masks = torch.cat([p[1] for p in pairs])[:, 0].long()
                yield (images - self.mean) * self.inv_std, masks
                batch = []
