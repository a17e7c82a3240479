"""The one cache mechanism (dabnet.util.store): entries written whole, checked by content on every read, rebuilt
with one line when damaged, kept apart by key, and filled by several writers at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from dabnet.util import store as store_mod
from dabnet.util.store import ENTRY, TAG, CacheWarning, DamagedEntry, Store, content_digest, key_digest

PAYLOAD = bytes(range(256)) * 2048  # 512 KiB: large enough to zero 200 KB in its middle


def _builder(calls, payload=PAYLOAD, extra=b'{"a": 1}'):
    def build(folder: Path):
        calls.append(folder)
        (folder / "data.bin").write_bytes(payload)
        (folder / "meta.json").write_bytes(extra)
        return {"note": "made"}

    return build


def test_an_entry_is_written_whole_tagged_and_read_back_checked(tmp_path):
    store, calls = Store(tmp_path / "s", "test entry"), []
    entry = store.get("e1", _builder(calls), key={"what": "test"})
    assert len(calls) == 1 and entry.files["data.bin"] == PAYLOAD and entry.info == {"note": "made"}
    manifest = json.loads((tmp_path / "s" / "e1" / ENTRY).read_text())
    assert manifest["files"]["data.bin"] == {"size": len(PAYLOAD), "crc32": content_digest(PAYLOAD)}
    assert manifest["key"] == {"what": "test"} and (tmp_path / "s" / TAG).read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [TAG, "e1"]  # no temporary folder left
    again = store.get("e1", _builder(calls))
    assert len(calls) == 1 and again.files == entry.files and again.digests == entry.digests


def _zero_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2 - 100_000
    data[mid : mid + 200_000] = bytes(200_000)
    path.write_bytes(bytes(data))


DAMAGE = {
    "zeroed 200 KB in the middle, same size": ("data.bin", _zero_middle),
    "all zero, same size": ("data.bin", lambda p: p.write_bytes(bytes(p.stat().st_size))),
    "truncated": ("data.bin", lambda p: p.write_bytes(p.read_bytes()[:1000])),
    "one byte flipped": ("data.bin", lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 1]) + p.read_bytes()[1:])),
    "missing file": ("data.bin", lambda p: p.unlink()),
    "manifest all zero": (ENTRY, lambda p: p.write_bytes(bytes(p.stat().st_size))),
    "manifest missing": (ENTRY, lambda p: p.unlink()),
    "manifest of another format": (ENTRY, lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "format": 99}))),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_kind_of_damage_is_found_told_in_one_line_naming_the_file_and_rebuilt(tmp_path, damage):
    store, calls = Store(tmp_path, "test entry"), []
    store.get("e", _builder(calls))
    name, harm = DAMAGE[damage]
    harm(tmp_path / "e" / name)
    with pytest.warns(CacheWarning) as told:
        entry = store.get("e", _builder(calls))
    messages = [str(w.message) for w in told]
    assert len(messages) == 1 and "\n" not in messages[0] and str(tmp_path / "e" / name) in messages[0], messages
    assert "damaged" in messages[0] and "rebuilding" in messages[0]
    shown = warnings.formatwarning(told[0].message, told[0].category, told[0].filename, told[0].lineno)
    assert shown.count("\n") == 1, shown  # as Python prints it: one line, no source line under it
    assert len(calls) == 2 and entry.files["data.bin"] == PAYLOAD  # never the damaged bytes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.get("e", _builder(calls)).files["data.bin"] == PAYLOAD and len(calls) == 2  # rebuilt whole


def test_a_load_that_refuses_the_checked_bytes_rebuilds_the_entry(tmp_path):
    store, calls = Store(tmp_path, "test entry"), []
    store.get("e", _builder(calls, extra=b'{"shape": [2, 3]}'))

    def load(entry):
        shape = json.loads(entry.files["meta.json"])["shape"]
        if shape != [4, 5]:
            raise DamagedEntry(f"shape {shape}, where [4, 5] is needed")
        return shape

    with pytest.warns(CacheWarning, match=r"damaged \(shape \[2, 3\], where \[4, 5\] is needed\); rebuilding"):
        assert store.get("e", _builder(calls, extra=b'{"shape": [4, 5]}'), load) == [4, 5]
    assert len(calls) == 2


def test_the_files_and_the_folder_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(os, "rename", lambda a, b: events.append(("rename", str(b))) or real_rename(a, b))
    Store(tmp_path, "test entry").write("e", _builder([]))
    kinds = [e[0] for e in events]
    renamed = kinds.index("rename")
    synced = [Path(p).name for k, p in events[:renamed] if k == "fsync"]
    assert {"data.bin", "meta.json", ENTRY} <= set(synced) and Path(events[renamed - 1][1]).name.endswith(".tmp")  # then the folder
    assert events[renamed] == ("rename", str(tmp_path / "e")) and events[renamed + 1] == ("fsync", str(tmp_path))  # then the store


def test_different_keys_are_separate_entries_and_no_write_removes_another(tmp_path):
    store = Store(tmp_path, "test entry")
    a = key_digest({"scales": [1.0]}, b"frame")
    b = key_digest({"scales": [1.0, 1.5]}, b"frame")
    assert a != b and key_digest(b"x") != key_digest("x") and key_digest(1, 2) != key_digest(2, 1)
    store.get(a, _builder([], payload=b"A"))
    store.get(b, _builder([], payload=b"B"))
    assert store.read(a).files["data.bin"] == b"A" and store.read(b).files["data.bin"] == b"B"


def test_two_threads_filling_one_store_at_once_both_succeed(tmp_path):
    store = Store(tmp_path, "test entry")
    names = [f"e{i}" for i in range(20)]
    results, errors = {}, []
    start = threading.Barrier(2)

    def fill(who):
        try:
            start.wait()
            results[who] = [store.get(n, _builder([], payload=n.encode() * 1000)).files["data.bin"] for n in names]
        except BaseException as e:  # noqa: BLE001  the test reports it
            errors.append(e)

    threads = [threading.Thread(target=fill, args=(w,)) for w in "ab"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no entry is ever seen damaged
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert not errors and results["a"] == results["b"] == [n.encode() * 1000 for n in names]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([TAG, *names])


_RACER = """
import importlib, os, sys, time, types, warnings
# dabnet.util as a bare package (its __init__ and dabnet's, which import torch, not run): store and util.files only.
pkg = sys.modules["_util"] = types.ModuleType("_util"); pkg.__path__ = [os.path.dirname(sys.argv[1])]
store = importlib.import_module("_util.store")
warnings.simplefilter("error")
while time.time() < float(sys.argv[3]):
    pass
s = store.Store(sys.argv[2], "race entry")
def build(folder, n):
    time.sleep(0.002)
    (folder / "data.bin").write_bytes(n.encode() * 5000)
for i in range(30):
    n = f"e{i}"
    assert s.get(n, lambda f: build(f, n)).files["data.bin"] == n.encode() * 5000
print("ok")
"""


@pytest.mark.slow
def test_two_processes_filling_one_store_at_once_both_succeed(tmp_path):
    # The store module needs only util.files: each process loads the two alone, so both start within milliseconds.
    go = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, store_mod.__file__, str(tmp_path), go], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and all(o[0].strip() == "ok" for o in outs), outs
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("e")]) == 30
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_lost_race_keeps_the_winners_entry_and_a_failed_rename_costs_a_warning(tmp_path, monkeypatch):
    import errno

    real_rename = os.rename

    def failing(src, dst):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(store_mod.os, "rename", failing)
    with pytest.warns(CacheWarning, match="could not cache the test entry in .*m1: Permission denied"):
        assert Store(tmp_path, "test entry").write("m1", _builder([])).files["data.bin"] == PAYLOAD
    assert not (tmp_path / "m1").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    def lost_race(src, dst):  # the other process's whole entry lands first
        monkeypatch.setattr(store_mod.os, "rename", real_rename)
        Store(tmp_path, "test entry").write("m2", _builder([], payload=b"theirs"))
        real_rename(src, dst)  # fails: the folder is not empty

    monkeypatch.setattr(store_mod.os, "rename", lost_race)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Store(tmp_path, "test entry").write("m2", _builder([])).files["data.bin"] == PAYLOAD  # ours, from memory
    assert Store(tmp_path, "test entry").read("m2").files["data.bin"] == b"theirs"  # theirs, whole, left in place


def test_an_unwritable_store_costs_one_warning_not_the_result(tmp_path, unwritable):
    store, calls = Store(unwritable / "s", "test entry"), []
    with pytest.warns(CacheWarning) as told:
        first = store.get("e1", _builder(calls))
        second = store.get("e2", _builder(calls))
    assert len(told) == 1 and "could not cache the test entry" in str(told[0].message)
    assert first.files["data.bin"] == second.files["data.bin"] == PAYLOAD and len(calls) == 2


def test_what_dead_writers_left_is_swept_and_nothing_else(tmp_path):
    store = Store(tmp_path, "test entry")
    store.get("e", _builder([]))
    old, young = tmp_path / ".x.abc.tmp", tmp_path / ".trash-y.abc"
    for folder in (old, young):
        folder.mkdir()
        (folder / "f").write_bytes(b"1")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    Store(tmp_path, "test entry").get("e2", _builder([]))
    assert not old.exists() and young.exists() and (tmp_path / "e").is_dir()
