"""Process-wide switches (cuDNN's autotuner, inductor's freezing, thread counts) changed for a scope and restored
after it, so that a library function leaves them as its caller had them, also when it raises."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Dict, Iterator, List, Tuple

KEEP = object()  # `value` for a scope that only restores what its body may change


@contextlib.contextmanager
def scoped(get: Callable[[], Any], put: Callable[[Any], None], value: Any = KEEP) -> Iterator[None]:
    """Inside the block the setting `get` reads and `put` writes is `value` (unless KEEP); after it, what it was."""
    before = get()
    try:
        if value is not KEEP:
            put(value)
        yield
    finally:
        put(before)


def setting(owner: Any, name: str, value: Any = KEEP) -> contextlib.AbstractContextManager:
    """`scoped` for an attribute: `owner.name` is `value` inside the block and what it was after it."""
    return scoped(lambda: getattr(owner, name), lambda v: setattr(owner, name, v), value)


_lock = threading.Lock()
_shared: Dict[Tuple[int, str], List[Any]] = {}  # (id(owner), name) -> [threads inside, the value found by the first]


@contextlib.contextmanager
def shared_setting(owner: Any, name: str, value: Any) -> Iterator[None]:
    """`setting` for a block that several threads may be inside at once (each call of a runner): `value` holds
    while any of them is inside, and the value found by the first is restored when the last leaves (a plain
    `setting` per thread would restore, under a thread still inside, the value another thread had set). Every
    block on one `owner.name` gives the same `value`."""
    key = (id(owner), name)
    with _lock:
        entry = _shared.get(key)
        if entry is None:
            before = getattr(owner, name)
            setattr(owner, name, value)
            entry = _shared[key] = [0, before]
        entry[0] += 1
    try:
        yield
    finally:
        with _lock:
            entry[0] -= 1
            if entry[0] == 0:
                del _shared[key]
                setattr(owner, name, entry[1])


def trim_heap() -> None:
    """Gives freed heap memory back to the OS (glibc keeps large freed blocks in its arenas: a burst of big images
    would leave the process at its peak size while idle); nothing where the C library is not glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
