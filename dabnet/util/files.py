"""Writing files safely: atomic outputs, outputs checked before the work, and OS errors in one readable line.

A leaf module (it imports nothing of dabnet's), so every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]


class OutputError(ValueError):
    """An output path that cannot be written (read-only, a folder where a file is meant, an input of the command)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk, or a crash can leave the old name behind.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CPP_WRITE_ERRORS = ("inline_container", "PytorchStreamWriter", "iostream error")  # how C++ writers say a write failed


@contextlib.contextmanager
def writing(path: PathLike, scratch: Optional[PathLike] = None) -> Iterator[None]:
    """Make every OS error of the block name `path`, the file the user asked for: a write() that fails (a full disk)
    names no file, and one inside `scratch` (a temp file or folder of the write) names a path the user never gave.
    C++ writers report a failed write as a RuntimeError (torch's zip writer, and std::ios under OpenVINO's
    serializer); it becomes the OSError it is."""
    path = Path(path)
    try:
        yield
    except OSError as e:
        if e.errno is None or (e.filename is not None and not _inside(e.filename, scratch)):
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    except RuntimeError as e:
        if not any(sign in str(e) for sign in CPP_WRITE_ERRORS):
            raise
        raise write_failed(path) from e


def write_failed(path: PathLike) -> OSError:
    """The OSError for a write to `path` that failed where the writer kept errno to itself: ENOSPC when its file system
    is (nearly) full, the likely cause then, else EIO."""
    try:
        full = free_bytes(path) < 64 * 2**20
    except OSError:
        full = False
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def _inside(name: PathLike, scratch: Optional[PathLike]) -> bool:
    if scratch is None:
        return False
    name, scratch = Path(os.fsdecode(name)).absolute(), Path(scratch).absolute()
    return name == scratch or scratch in name.parents


def free_bytes(path: PathLike) -> int:
    """Free bytes (for this user) on the file system that holds `path`, or that would hold it: its nearest
    existing folder's, not the current folder's."""
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free  # statvfs of that folder: f_bavail x f_frsize


@contextlib.contextmanager
def atomic_output(path: PathLike, fsync: bool = True, mode: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends normally it becomes `path` in one rename, on any
    exception (Ctrl-C included) it is removed: a reader never sees a half-written file, and an old one survives.
    `mode`: the file's permissions (default: as the umask makes them). Every OS error names `path` (`writing`)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temp name keeps the suffix: writers that pick a format by it (video containers) see the real one.
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with writing(path, scratch=tmp):
            yield tmp
            if fsync:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)  # mkstemp makes 0600; follow the umask
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        with writing(path):
            _fsync_dir(path.parent)


def check_output_file(path: PathLike, option: str = "--out", inputs: Sequence[PathLike] = ()) -> Path:
    """`path` as a file this command may write: not a folder, not one of its `inputs`, in a folder it can create
    and write. Checked before the work, so that an hour of evaluation is not lost to a typo."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name inside it, e.g. {path / 'out'}")
    for item in inputs:
        if path.exists() and Path(item).exists() and os.path.samefile(path, item):
            raise OutputError(f"{option} {path} is an input of this command; it would be overwritten. Choose another {option}")
    check_output_folder(path.parent, option)
    if path.exists() and not os.access(path, os.W_OK):  # root may write it anyway; then it is writable
        raise OutputError(f"{option} {path} exists and is not writable; choose another {option}")
    return path


def check_output_folder(folder: PathLike, option: str = "--out") -> Path:
    """`folder` can be created (or exists) and written, or an OutputError that names it and the fix. Nothing
    is left behind: a folder that does not exist yet is created by the first output, not by the check."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file, not a folder; choose a folder path")
    existing = folder
    while not existing.exists():  # the nearest folder that exists is where the new one would be made
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create {option} folder {folder}: {existing} is a file; choose another path")
    try:  # a real write: permission bits say nothing for root, nor on a read-only mount
        os.rmdir(tempfile.mkdtemp(prefix=".dabnet-probe-", dir=existing))
    except OSError as e:
        what = f"{option} folder {folder} is not writable" if existing == folder else f"cannot create {option} folder {folder}"
        raise OutputError(f"{what} ({e.strerror or e}); choose a writable folder") from None
    return folder


def os_error_message(e: OSError) -> str:
    """One line for an OSError that escaped: which file, what went wrong, what to do."""
    target = os.fsdecode(e.filename) if e.filename is not None else ""
    where = f" {target}" if target else ""
    if e.errno == errno.ENOSPC:
        free = ""
        if target:  # the free space of the file's own file system; without a file, no figure rather than a wrong one
            with contextlib.suppress(OSError):
                free = f" ({free_bytes(target) / 2**20:.0f} MiB free there)"
        return f"disk full writing{where}{free}: free some space or write elsewhere"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{where}: {e.strerror}; choose a writable path"
    return f"{e.strerror or e}{':' + where if where else ''}"


@contextlib.contextmanager
def locked(lock: PathLike) -> Iterator[None]:
    """Hold an exclusive lock, across processes, on the file `lock` for the block (the file is created if missing,
    and kept: a lock file removed after use races with the next process that opens it). Where there are no
    locks (no fcntl, or a file system that refuses them) the block runs unlocked, as it would have without."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: a local flock needs only a read
        fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes, by the kernel even if this process dies
        except (ImportError, OSError):
            pass
        yield
    finally:
        os.close(fd)


def printable(text: str) -> str:
    """`text` as any terminal prints it: the bytes of a file name that are not UTF-8 (held by Python as surrogates,
    which a strict UTF-8 stream refuses) shown as \\xNN."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that are no escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


_fallback_cache: Optional[Path] = None


def cache_dir() -> Path:
    """The cache folder: $DABNET_CACHE, else ~/.cache/dabnet; where that cannot be written, a temporary folder
    for this process, with one warning (a cache is an optimisation: its absence never stops a command)."""
    global _fallback_cache
    wanted = Path(os.environ.get("DABNET_CACHE", Path.home() / ".cache" / "dabnet"))
    try:
        check_output_folder(wanted, "cache")
        return wanted
    except OutputError as e:
        if _fallback_cache is None:
            import atexit
            import warnings

            _fallback_cache = Path(tempfile.mkdtemp(prefix="dabnet-cache-"))
            atexit.register(shutil.rmtree, _fallback_cache, True)
            warnings.warn(f"{e}; caching in {_fallback_cache} for this run only. Set DABNET_CACHE to a writable folder "
                          "to keep the cache.", stacklevel=2)  # fmt: skip
        return _fallback_cache
