"""A compact copy of CamVid (JPEG frames, PNG labels) to carry to a GPU machine.

The SegNet-layout PNG frames weigh about 0.27 MB each; high-quality JPEG (4:4:4, quality 95) cuts
that about 4x while the labels stay lossless, so train + val fit in a few tens of MB.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Sequence

from PIL import Image

from ..io.images import READ_FORMATS, ImageReadError, PathLike
from ..util.files import atomic_output
from .datasets import CamVid


def pack_camvid(root: PathLike, out: PathLike, splits: Sequence[str] = ("train", "val"), quality: int = 95) -> Dict[str, object]:
    """Write OUT/SPLIT/NAME.jpg and OUT/SPLITannot/NAME.png for each split; returns counts and MB."""
    out = Path(out)
    src = Path(root).resolve()
    if out.resolve() == src or src in out.resolve().parents:
        raise ValueError(f"data pack: the output {out} is the CamVid folder {root} or inside it; pick a folder elsewhere "
                         "(e.g. data_packed/camvid) so that the source stays untouched")  # fmt: skip
    counts = {}
    # trainval is train + val read together, not a folder of its own: pack its two halves, which it reads
    folders = list(dict.fromkeys(s for split in splits for s in (("train", "val") if split == "trainval" else (split,))))
    for split in folders:
        pairs = CamVid(root, split).pairs  # validates the layout and pairs images with labels
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for image, label in pairs:
            try:
                with Image.open(image, formats=READ_FORMATS) as im:
                    frame = im.convert("RGB")
            except OSError as e:  # truncated or corrupt: name it, rather than a decoder's traceback
                raise ImageReadError(f"data pack: {image} cannot be decoded ({e}); restore or replace it, then pack again") from None
            with atomic_output(out / split / f"{image.stem}.jpg", fsync=False) as tmp:
                frame.save(tmp, format="JPEG", quality=quality, subsampling=0)
            with atomic_output(out / f"{split}annot" / f"{image.stem}{label.suffix}", fsync=False) as tmp:
                shutil.copyfile(label, tmp)
        counts[split] = len(pairs)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"out": str(out), "images": counts, "mb": round(size / 2**20, 1)}
