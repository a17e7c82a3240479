"""util.files: outputs checked before any work, written atomically, OS errors told in one line."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dabnet.util import compiler
from dabnet.util.files import OutputError, atomic_output, check_output_file, check_output_folder, os_error_message, printable, writing


def test_existing_file_as_an_output_folder_and_folder_as_an_output_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(f)
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path, "--json")


def test_os_error_messages_name_the_file_and_the_fix():
    assert "disk full writing /x/y.png" in os_error_message(OSError(errno.ENOSPC, "No space left on device", "/x/y.png"))
    assert "choose a writable path" in os_error_message(OSError(errno.EROFS, "Read-only file system", "/x"))


def test_atomic_output_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def fake_free_space(monkeypatch, where: Path, mib: int) -> None:
    """shutil.disk_usage says `mib` MiB free on the file system of `where` and 1 MiB everywhere else."""
    real = shutil.disk_usage

    def usage(path):
        inside = Path(path).resolve() == where.resolve() or where.resolve() in Path(path).resolve().parents
        return real(path)._replace(free=(mib if inside else 1) * 2**20)

    monkeypatch.setattr(shutil, "disk_usage", usage)


def test_a_full_disk_names_the_file_and_the_free_space_of_its_own_file_system(tmp_path, monkeypatch):
    """Issue 50 (11): a write() on a full disk raises an OSError with no file name; the message named none and gave
    the current folder's free space. atomic_output makes it name the file; the free space is that file's file system's."""
    disk, elsewhere = tmp_path / "disk", tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    fake_free_space(monkeypatch, disk, 4242)
    target = disk / "sub" / "x_label.png"
    with pytest.raises(OSError) as caught:
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")  # what a failed write() raises: no file name
    message = os_error_message(caught.value)
    assert message == f"disk full writing {target} (4242 MiB free there): free some space or write elsewhere"
    assert list((disk / "sub").iterdir()) == []  # the temp file is gone
    # An error that names a file outside the write keeps its name; one with no errno is not an OS error to rename.
    with pytest.raises(OSError) as caught:
        with writing(target):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/some/input.png")
    assert caught.value.filename == "/some/input.png"
    # Without a file there is no figure, rather than the current folder's.
    assert os_error_message(OSError(errno.ENOSPC, "No space left on device")) == "disk full writing: free some space or write elsewhere"


def test_cpp_writers_failures_become_the_os_error_they_are(tmp_path, monkeypatch):
    fake_free_space(monkeypatch, tmp_path, 3)
    for text in ("[enforce fail at inline_container.cc:672] . unexpected pos 192 vs 123", "basic_ios::clear: iostream error"):
        with pytest.raises(OSError) as caught:
            with writing(tmp_path / "m.xml", scratch=tmp_path / "work"):
                raise RuntimeError(text)
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "m.xml")
    with pytest.raises(RuntimeError, match="shapes differ"):  # any other RuntimeError is left alone
        with writing(tmp_path / "m.xml"):
            raise RuntimeError("shapes differ")


def test_names_that_are_not_utf8_print_on_a_strict_stream():
    name = os.fsdecode(b"caf\xe9.avi")
    assert printable(name) == "caf\\xe9.avi" and printable("café") == "café"
    printable(name).encode("utf-8")  # strict: no surrogate left


@pytest.fixture()
def fresh_compiler(monkeypatch):
    monkeypatch.setattr(compiler, "_replaced", None)
    yield
    monkeypatch.delenv(compiler.VARIABLE, raising=False)


def test_an_unusable_compile_cache_is_replaced_with_one_warning_naming_the_variable(tmp_path, monkeypatch, fresh_compiler):
    """Issue 50 (16): an unwritable TORCHINDUCTOR_CACHE_DIR made `import torch._dynamo` fail, and train with it."""
    monkeypatch.setenv(compiler.VARIABLE, "/proc/nope")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = compiler.usable_compile_cache(), compiler.usable_compile_cache()
    assert first == second == os.environ[compiler.VARIABLE] and Path(first).is_dir()
    assert len(caught) == 1 and "TORCHINDUCTOR_CACHE_DIR" in str(caught[0].message) and "/proc/nope" in str(caught[0].message)
    assert first in str(caught[0].message)


def test_a_usable_or_unset_compile_cache_is_left_alone(tmp_path, monkeypatch, fresh_compiler):
    monkeypatch.setenv(compiler.VARIABLE, str(tmp_path / "inductor"))
    assert compiler.usable_compile_cache() is None and os.environ[compiler.VARIABLE] == str(tmp_path / "inductor")
    monkeypatch.delenv(compiler.VARIABLE)
    assert compiler.usable_compile_cache() is None and compiler.VARIABLE not in os.environ


@pytest.mark.slow
def test_train_with_an_unwritable_compile_cache_trains_and_warns_once(tmp_path, make_camvid):
    """Issue 50 (16), as reported: `train` exited 2 with only `[Errno 2] ... /proc/nope` (PyTorch's optimizers import
    torch._dynamo, which creates the cache folder). In a fresh process: the variable is read when dynamo is imported."""
    make_camvid(tmp_path / "cam")
    out = tmp_path / "run"
    sets = ["data_root=" + str(tmp_path / "cam"), "epochs=1", "batch_size=2", "crop_size=[32,48]", "workers=0",
            "val_batch_size=4", "check_data=false", "fused=false"]  # fmt: skip
    env = {**os.environ, compiler.VARIABLE: "/proc/nope", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "dabnet", "train", "--config", "camvid", "--out", str(out)]
    for item in sets:
        cmd += ["--set", item]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (out / "last.pth").is_file()
    assert run.stderr.count("TORCHINDUCTOR_CACHE_DIR") == 1 and "/proc/nope" in run.stderr
