"""Progress bars that read well in a terminal and in a log file alike."""

from __future__ import annotations

import sys
from typing import Any, Iterable, Optional


def progress_bar(iterable: Optional[Iterable] = None, **kw: Any):
    """A tqdm bar; when its stream is no terminal (a log file, a pipe), every refresh would stay as a line, so it
    refreshes at most once a minute. Callers update postfixes with refresh=False for the same reason."""
    from tqdm import tqdm

    stream = kw.get("file") or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        kw.setdefault("mininterval", 60.0)
        kw.pop("dynamic_ncols", None)
    return tqdm(iterable, **kw)
