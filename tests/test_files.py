"""util.files: outputs checked before any work, written atomically, OS errors told in one line."""

from __future__ import annotations

import errno

import pytest

from dabnet.util.files import OutputError, atomic_output, check_output_file, check_output_folder, os_error_message


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
