"""Caches checked by content: every cache dabnet writes (converted and quantized models, compiled blobs, teacher
maps, dataset statistics) is a `Store`, and this module is the only code that reads or writes one.

A store is a folder of entries. An entry is a folder whose name ends in the digest of what made it (`key_digest`
over the weights, the options, the library versions and, for a per-frame entry, the frame's bytes), holding its
files and `entry.json`: each file's size and CRC-32, the key's description and what the builder recorded.
- A read checks every file against its size and CRC-32 and hands the caller the bytes it checked (nothing is read
  twice, so nothing changes between the check and the use), then the caller's own `load` (a shape, a parse). A
  damaged entry (a file truncated, zeroed, missing, or refused by `load`) is set aside with one warning naming the
  file and built anew: it is never used.
- A write builds in a temporary folder beside the entry, fsyncs each file and the folder, renames the folder into
  place and fsyncs the store: after a crash or a power cut there is the whole entry or none.
- Different options make different keys, so runs sharing a store keep separate entries, and nothing removes an
  entry but its own damage. Two processes filling one entry at once both succeed: the second rename finds the
  first's entry whole and keeps it.
CRC-32 finds what a disk, a full filesystem or a power cut does to a file (truncation, zeroed or flipped ranges) at
several GB/s; keys, which must tell entries apart, are SHA-256.

It imports only util.files (itself importing nothing of dabnet's), so every layer may use it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, TypeVar, Union

from .files import _fsync_dir, _umask  # a rename or a file made in a folder reaches the disk when the folder is synced

PathLike = Union[str, os.PathLike]
T = TypeVar("T")

ENTRY = "entry.json"  # in every entry: its files' sizes and CRC-32, the key's description, what the builder recorded
FORMAT = 1  # of entry.json; an entry of another format is built anew
TAG = "CACHEDIR.TAG"  # marks a store (https://bford.info/cachedir/): backup tools skip it, and dabnet knows it is its own
_TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
             "# This folder is a cache made by dabnet; everything in it is rebuilt when missing.\n")  # fmt: skip
_STALE_S = 24 * 3600  # temporary folders older than this were left by a process that died while writing


class CacheWarning(UserWarning):
    """A cache entry that was damaged (and is being rebuilt) or could not be written."""


class DamagedEntry(ValueError):
    """Raised by a `load` function: the entry's checked bytes still do not make what it should (a wrong shape);
    `file`: the entry's file at fault, named in the warning."""

    def __init__(self, reason: str, file: str = "") -> None:
        super().__init__(reason)
        self.file = file


@dataclass
class Entry:
    """A cache entry as read (every file checked) or as just written: its folder, its files' bytes, what its builder
    recorded (`info`) and each file's CRC-32 (`digests`: what a dependent key may cite)."""

    folder: Path
    files: Dict[str, bytes]
    info: Dict[str, Any] = field(default_factory=dict)
    digests: Dict[str, str] = field(default_factory=dict)


def content_digest(data: Union[bytes, bytearray, memoryview]) -> str:
    """The CRC-32 of `data`, as 8 hex digits: what `entry.json` records of each file."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def key_digest(*parts: Any) -> str:
    """SHA-256 (32 hex digits) of `parts`, in order: bytes as they are, anything else by its canonical JSON."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (bytes, bytearray, memoryview)):
            data = bytes(part) if isinstance(part, memoryview) else part
            h.update(b"b%d:" % len(data))
        else:
            data = json.dumps(part, sort_keys=True, default=str).encode()
            h.update(b"j%d:" % len(data))
        h.update(data)
    return h.hexdigest()[:32]


def file_digest(path: PathLike) -> str:
    """SHA-256 of a file's bytes (what a per-frame key holds of its frame: a file replaced in place with the same
    name, size or time is another frame)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_versions(packages: Sequence[str]) -> Dict[str, str]:
    """Installed versions of `packages` ("none" when absent): part of the keys of what they make."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "none"
    return out


def _tell(message: str) -> None:
    """`message` as a CacheWarning on one line (a plain warning adds its caller's source line, which says nothing
    to whoever runs the command)."""
    warnings.warn_explicit(message, CacheWarning, "dabnet", 0, module="dabnet.util.store")


def _read_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


class _Damage(Exception):
    """Why an entry cannot be used, and the file it is about."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


class Store:
    """The entries under `root`; `label` names them in messages ("OpenVINO model", "teacher map")."""

    def __init__(self, root: PathLike, label: str = "cache entry") -> None:
        self.root, self.label = Path(root), label
        self._swept = self._write_warned = False

    def folder(self, name: str) -> Path:
        """Where the entry `name` lives."""
        return self.root / name

    def has(self, name: str) -> bool:
        """Whether the entry `name` was written (its files are checked when it is read, not here)."""
        return (self.root / name / ENTRY).is_file()

    def get(self, name: str, build: Callable[[Path], Optional[Dict[str, Any]]], load: Callable[[Entry], T] = lambda e: e,
            key: Any = None) -> T:  # fmt: skip
        """`load` of the entry `name`, read and checked, or first made by `build(folder)` (which writes the entry's files
        into `folder` and returns what to record beside them) when it is missing or damaged. `key`: the description
        of what made the entry, kept in its entry.json for whoever looks."""
        found = self.read(name, load)
        if found is not None:
            return found
        entry = self.write(name, build, key)
        try:
            return load(entry)
        except DamagedEntry as e:  # a builder that makes what its own loader refuses: a bug, not damage
            raise RuntimeError(f"the {self.label} just built in {entry.folder} is refused: {e}") from None

    def read(self, name: str, load: Callable[[Entry], T] = lambda e: e) -> Optional[T]:
        """`load` of the entry `name` with every file checked; None when there is none, or when it is damaged (then
        it is set aside, with one warning naming the file)."""
        folder = self.root / name
        try:
            dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            return None
        except OSError as e:
            self._damaged(folder, None, _Damage(folder, e.strerror or str(e)))
            return None
        try:  # every file through the one descriptor: an entry set aside meanwhile is read whole or not at all
            return load(self._checked(folder, dir_fd))
        except _Damage as d:
            self._damaged(folder, dir_fd, d)
        except DamagedEntry as e:
            self._damaged(folder, dir_fd, _Damage(folder / e.file if e.file else folder, str(e)))
        finally:
            os.close(dir_fd)
        return None

    def _checked(self, folder: Path, dir_fd: int) -> Entry:
        try:
            manifest = json.loads(_read_at(dir_fd, ENTRY))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ValueError(f"format {manifest.get('format') if isinstance(manifest, dict) else '?'}, not {FORMAT}")
            specs = {str(n): (int(s["size"]), str(s["crc32"])) for n, s in manifest["files"].items()}
            info = dict(manifest.get("info") or {})
        except FileNotFoundError:
            raise _Damage(folder / ENTRY, "it is missing") from None
        except OSError as e:
            raise _Damage(folder / ENTRY, e.strerror or str(e)) from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # zeroed, cut short, or not ours
            raise _Damage(folder / ENTRY, f"unreadable: {str(e)[:80]}") from None
        files = {}
        for name, (size, digest) in specs.items():
            path = folder / name
            try:
                data = _read_at(dir_fd, name)
            except FileNotFoundError:
                raise _Damage(path, "it is missing") from None
            except OSError as e:
                raise _Damage(path, e.strerror or str(e)) from None
            self._verify(path, data, size, digest)
            files[name] = data
        return Entry(folder, files, info, {n: d for n, (_, d) in specs.items()})

    @staticmethod
    def _verify(path: Path, data: bytes, size: int, digest: str) -> None:
        """The check of every read: `data` (the file at `path`) is what was written, by its size and CRC-32."""
        if len(data) != size:
            raise _Damage(path, f"{len(data)} bytes where {size} were written")
        if content_digest(data) != digest:
            zero = " (all zero)" if data and not data.strip(b"\0") else ""
            raise _Damage(path, f"its content does not match the CRC-32 written with it{zero}")

    def _damaged(self, folder: Path, dir_fd: Optional[int], damage: _Damage) -> None:
        _tell(f"the cached {self.label} {damage.path} is damaged ({damage.reason}); rebuilding it")
        self._set_aside(folder, dir_fd)

    def _set_aside(self, folder: Path, dir_fd: Optional[int]) -> None:
        """Move a damaged entry out of the way (then delete it), unless another process replaced it meanwhile."""
        trash = None
        try:
            if dir_fd is not None and os.stat(folder).st_ino != os.fstat(dir_fd).st_ino:
                return  # someone else set it aside and wrote a new one: that one is not ours to remove
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{folder.name}.", dir=self.root))
            os.replace(folder, trash / folder.name)
        except OSError:  # gone already, or a store we may not change: the rebuild still goes on
            pass
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def write(self, name: str, build: Callable[[Path], Optional[Dict[str, Any]]], key: Any = None) -> Entry:
        """Make the entry `name` with `build(folder)` and put it in place whole (temporary folder, fsync, rename).
        A store that cannot be written costs one warning, not the result: the entry comes back from memory."""
        final = self.root / name
        try:
            self._prepare()
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=self.root))
        except OSError as e:
            self._cannot_write(final, e)
            tmp = Path(tempfile.mkdtemp(prefix="dabnet-entry-"))  # built where it can be, and kept in memory only
            final = None
        try:
            info = dict(build(tmp) or {})
            files, specs = {}, {}
            for path in sorted(tmp.iterdir()):
                if not path.is_file():
                    raise ValueError(f"a {self.label} holds files only; {path} is not one")
                with open(path, "rb") as f:
                    files[path.name] = data = f.read()
                    if final is not None:
                        os.fsync(f.fileno())
                specs[path.name] = {"size": len(data), "crc32": content_digest(data)}
            entry = Entry(final or self.root / name, files, info, {n: s["crc32"] for n, s in specs.items()})
            if final is not None:
                try:
                    with open(tmp / ENTRY, "w") as f:
                        json.dump({"format": FORMAT, "key": key, "info": info, "files": specs, "written": time.time()}, f,
                                  indent=1, default=str)  # fmt: skip
                        f.flush()
                        os.fsync(f.fileno())
                    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; an entry is as readable as any file made here
                    _fsync_dir(tmp)
                    self._install(tmp, final)
                except OSError as e:
                    self._cannot_write(final, e)
            return entry
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _cannot_write(self, final: Path, e: OSError) -> None:
        if not self._write_warned:  # once per store: a full disk would otherwise warn for every frame
            _tell(f"could not cache the {self.label} in {final}: {e.strerror or e}; it is used from memory and made again "
                  "next time")  # fmt: skip
            self._write_warned = True

    def _install(self, tmp: Path, final: Path) -> None:
        for _ in range(3):
            try:
                os.rename(tmp, final)  # atomic; fails on a non-empty folder, so an entry in place is never overwritten
                _fsync_dir(self.root)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            try:  # another process put the entry in place first: keep it if it is whole
                dir_fd = os.open(final, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except FileNotFoundError:
                continue  # set aside meanwhile: try again
            try:
                self._checked(final, dir_fd)
                return
            except _Damage:
                self._set_aside(final, dir_fd)
            finally:
                os.close(dir_fd)
        raise OSError(errno.EEXIST, "another process keeps replacing it", str(final))

    def _prepare(self) -> None:
        """Make the store (tagged) on first write, and remove what processes that died while writing left there."""
        if self._swept:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tag = self.root / TAG
        if not tag.is_file():
            tmp = Path(tempfile.mkstemp(prefix=".tag.", suffix=".tmp", dir=self.root)[1])
            tmp.write_text(_TAG_TEXT)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, tag)
        now = time.time()
        with os.scandir(self.root) as items:
            for item in items:
                left = item.name.startswith(".trash-") or (item.name.startswith(".") and item.name.endswith(".tmp"))
                try:
                    if left and now - item.stat(follow_symlinks=False).st_mtime > _STALE_S:
                        shutil.rmtree(item.path, ignore_errors=True) if item.is_dir(follow_symlinks=False) else os.unlink(item.path)
                except OSError:
                    pass
        self._swept = True


def is_store(folder: PathLike) -> bool:
    """Whether `folder` is a store dabnet made (it carries the cache tag)."""
    return (Path(folder) / TAG).is_file()


__all__ = ["CacheWarning", "DamagedEntry", "Entry", "Store", "content_digest", "file_digest", "is_store", "key_digest",
           "package_versions"]
