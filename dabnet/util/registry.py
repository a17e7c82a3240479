"""One kind of registry for everything that comes in kinds (networks, bundled weights, datasets, runtimes, training
callbacks, annotation importers): a module registers its entry with one line, and every registry answers the same
way. `register` is a decorator or a call and refuses a name taken already; `get` answers an unknown name with the
closest registered names; `names`, `help` and `listing` give each entry's one-line help; `in`, `len` and iteration
(over names) work as on a dict. Errors are one line.

A leaf module (it imports nothing of dabnet's), so every layer keeps its registries with it.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, Sequence, Tuple, Type, TypeVar, overload

T = TypeVar("T")
_MISSING: Any = object()


def first_doc_line(obj: Any) -> str:
    """The first line of an object's docstring, or '' (functions' and classes' own; not their type's)."""
    doc = getattr(obj, "__doc__", None) if callable(obj) else None
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else ""


class Registry(Generic[T]):
    """Named entries of one kind. `kind` is how messages name an entry ('model', 'dataset', 'backend'); `error` is
    the exception an unknown or taken name raises; `summary(entry)` is an entry's help when its registration gives
    none (default: the first line of its docstring); `sort` lists names sorted instead of in registration order;
    `reserved` names are never entries (e.g. 'auto', which picks a runtime); `check(name, entry)` raises for an entry
    that may not join (rules of its own kind, such as a file suffix another entry claims), after the name is checked."""

    def __init__(self, kind: str, *, error: Type[Exception] = ValueError, summary: Optional[Callable[[T], str]] = None,
                 sort: bool = False, reserved: Sequence[str] = (), check: Optional[Callable[[str, T], None]] = None) -> None:  # fmt: skip
        self.kind = kind
        self.error = error
        self._summary = summary
        self._sort = sort
        self._reserved = tuple(reserved)
        self._check = check
        self._entries: Dict[str, T] = {}
        self._help: Dict[str, str] = {}

    # ------------------------------------------------------------------ adding and removing

    @overload
    def register(self, name: str, entry: T, *, help: Optional[str] = None) -> T: ...

    @overload
    def register(self, name: str, *, help: Optional[str] = None) -> Callable[[T], T]: ...

    def register(self, name: str, entry: Any = _MISSING, *, help: Optional[str] = None) -> Any:
        """Add `entry` under `name` and return it; without `entry`, a decorator that does so. `help` is its one-line
        description (default: the registry's `summary` of it). A name taken already is an error."""
        if entry is _MISSING:

            def wrap(obj: T) -> T:
                self._add(name, obj, help)
                return obj

            return wrap
        self._add(name, entry, help)
        return entry

    def _add(self, name: str, entry: T, help: Optional[str]) -> None:
        if not isinstance(name, str) or not name:
            raise self.error(f"a {self.kind} is registered under a non-empty string, not {name!r}")
        if name in self._reserved:
            raise self.error(f"{self.kind} name {name!r} is reserved (it is no {self.kind}); register yours under another name")
        if name in self._entries:
            raise self.error(f"{self.kind} name {name!r} is registered already; register yours under another name")
        if self._check is not None:
            self._check(name, entry)
        self._entries[name] = entry
        self._help[name] = " ".join((help if help is not None else self._summarise(entry)).split())

    def _summarise(self, entry: T) -> str:
        return self._summary(entry) if self._summary is not None else first_doc_line(entry)

    def unregister(self, name: str) -> Optional[T]:
        """Remove `name` (for tests and plugins that register their own for a while); returns its entry, or None."""
        self._help.pop(name, None)
        return self._entries.pop(name, None)

    def __setitem__(self, name: str, entry: T) -> None:
        """Replace (or add) an entry on purpose, as `monkeypatch.setitem` does in tests; `register` refuses a taken name."""
        self._entries[name] = entry
        self._help[name] = " ".join(self._summarise(entry).split())

    def __delitem__(self, name: str) -> None:
        if name not in self._entries:
            raise KeyError(name)
        self.unregister(name)

    # ------------------------------------------------------------------ looking up

    @overload
    def get(self, name: str) -> T: ...

    @overload
    def get(self, name: str, default: Any) -> Any: ...

    def get(self, name: str, default: Any = _MISSING) -> Any:
        """The entry registered as `name`; an unknown name is `error` naming the closest registered ones (or
        `default`, where one is given)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name names nothing
            if default is not _MISSING:
                return default
            raise self.error(self.unknown(name)) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def unknown(self, name: Any) -> str:
        """The one-line answer to an unknown name: the closest registered names, then all of them."""
        names = self.names()
        if not names:
            return f"unknown {self.kind} {name!r}: none is registered"
        close = self.closest(name)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (registered: {', '.join(names)})"

    def closest(self, name: Any, n: int = 3) -> List[str]:
        """Up to `n` registered names that look most like `name` (case ignored), best first."""
        text = str(name)
        lowered = {key.lower(): key for key in self._entries}
        same = [lowered[text.lower()]] if text.lower() in lowered else []
        near = difflib.get_close_matches(text.lower(), list(lowered), n=n, cutoff=0.6)
        return list(dict.fromkeys(same + [lowered[k] for k in near]))[:n]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    # ------------------------------------------------------------------ listing

    def names(self) -> List[str]:
        """Every registered name: in registration order, or sorted where the registry says so."""
        return sorted(self._entries) if self._sort else list(self._entries)

    def values(self) -> List[T]:
        """Every entry, in the order of `names()`."""
        return [self._entries[n] for n in self.names()]

    def items(self) -> List[Tuple[str, T]]:
        """(name, entry) pairs, in the order of `names()`."""
        return [(n, self._entries[n]) for n in self.names()]

    def help(self, name: str) -> str:
        """The one-line help of a registered entry."""
        self.get(name)
        return self._help[name]

    def listing(self) -> List[Tuple[str, str]]:
        """(name, one-line help) of every entry, in the order of `names()`."""
        return [(n, self._help[n]) for n in self.names()]

    def format_listing(self, indent: str = "  ") -> str:
        """The listing as text: one line per entry, names aligned."""
        rows = self.listing()
        width = max((len(n) for n, _ in rows), default=0)
        return "\n".join(f"{indent}{n:<{width}}  {h}".rstrip() for n, h in rows)

