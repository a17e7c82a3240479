"""`dabnet average`'s options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from ..util.options import Options, option
from .validate import path_is, require


@dataclass
class AverageConfig(Options):
    """Average the weights of checkpoints of one network (e.g. a run's last epochs) into one checkpoint."""

    checkpoints: List[str] = option(help="two or more checkpoints, e.g. runs/camvid/epoch_02*.pth", factory=list,
                                    positional=True, nargs="+", io="in", length=(2, None), valid="two or more checkpoint files")  # fmt: skip
    out: str = option("averaged.pth", "where to write the averaged checkpoint", io="out")

    def check(self) -> None:
        require(not path_is("is_dir", self.out), "out", self.out, "a file name such as averaged.pth (this is a folder)")
