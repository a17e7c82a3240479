"""What the README says of the suite holds: `pytest -m "not slow"` leaves out every test that runs a subprocess,
compiles kernels or starts processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["pytester"]

INNER_TESTS = """
import subprocess

import pytest
import torch
from torch.utils.data import DataLoader

import inner_helpers


@pytest.fixture(scope="module")
def prepared():
    inner_helpers.run_a_program()  # a fixture's subprocess counts for every test that uses it, whichever set it up
    return 1


def test_light():
    assert sum(range(3)) == 3


def test_subprocess_in_a_helper():
    inner_helpers.run_a_program()


def test_subprocess_through_a_fixture(prepared):
    pass


def test_light_again():
    pass


def test_loader_workers():
    assert sorted(int(b) for b in DataLoader(list(range(4)), num_workers=1)) == [0, 1, 2, 3]


def test_compile():
    with pytest.raises(RuntimeError):  # fails at once: the call, not a kernel, is what is recorded
        torch.compile(lambda x: x, mode="default", options={"a": 1})


@pytest.mark.slow
def test_marked(prepared):
    subprocess.run(["true"], check=True)
"""


@pytest.fixture
def compile_loaded():
    """The modules torch.compile imports, imported before pytester notes which are loaded: it unloads the others
    after its run, and torch cannot load them twice."""
    import heavy_calls

    with heavy_calls.recording(isolated=True), pytest.raises(RuntimeError):
        torch.compile(lambda x: x, mode="default", options={"a": 1})


def test_every_subprocess_compile_or_multiprocess_test_is_marked_slow(compile_loaded, pytester):
    """conftest's hooks (tests/heavy_calls.py) fail, at run time, a test not marked slow that starts a subprocess or
    process or calls torch.compile, however it got there: its body, a helper in another module, a fixture."""
    import heavy_calls

    pytester.makeconftest(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                          "from heavy_calls import pytest_fixture_setup, pytest_runtest_call  # noqa: F401\n")  # fmt: skip
    pytester.makepyfile(inner_helpers="import subprocess\n\ndef run_a_program():\n    subprocess.run(['true'], check=True)\n",
                        test_inner=INNER_TESTS)  # fmt: skip
    with heavy_calls.recording(isolated=True):  # what the inner tests set off is theirs, not this test's
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly", "-W", "ignore")
    outcomes = {r.nodeid.split("::")[-1]: r.outcome for r in result.reprec.getreports("pytest_runtest_logreport") if r.when == "call"}
    assert outcomes == {"test_light": "passed", "test_subprocess_in_a_helper": "failed", "test_subprocess_through_a_fixture": "failed",
                        "test_light_again": "passed", "test_loader_workers": "failed", "test_compile": "failed",
                        "test_marked": "passed"}, outcomes  # fmt: skip
    text = result.stdout.str()
    assert "test_subprocess_through_a_fixture is not marked slow, but it ran a subprocess (true) in fixture prepared" in text
    assert "test_loader_workers is not marked slow, but it started a process" in text
    assert "test_compile is not marked slow, but it called torch.compile" in text


def test_a_quantizer_imported_later_is_recorded_too():
    """The quantizers are imported lazily, after conftest: their functions are wrapped as their modules load."""
    import heavy_calls

    xiq = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
    with heavy_calls.recording(isolated=True) as events, pytest.raises(Exception):
        xiq.prepare_pt2e(None, None)
    assert events == ["quantized (torchao.quantization.pt2e.quantize_pt2e.prepare_pt2e)"]


def test_what_a_session_makes_once_counts_for_every_test_that_uses_it(monkeypatch):
    """dabnet's fused kernels and int8 IR are made by the first test that needs them and cached: using them counts."""
    import heavy_calls

    from dabnet.models import fused
    from dabnet.runtimes import openvino

    monkeypatch.setattr(fused, "_broken", "no compiler here")  # run_compiled returns at once
    with heavy_calls.recording(isolated=True) as events:
        assert fused.run_compiled(lambda x: x, 1) is None
        for int8 in (False, True):
            with pytest.raises(Exception):  # no model: fails at once, after the call is recorded
                openvino.cached_ir(None, int8, None)
    assert events == ["ran kernels compiled by torch.compile (compiled once a session)",
                      "used an int8 IR quantized by NNCF (quantized once a session)"]  # fmt: skip


def test_no_generated_files_in_the_repository_root():  # row 16
    debris = [p.name for p in ROOT.iterdir() if p.suffix in (".onnx", ".data", ".xml", ".bin") or p.name.startswith("sym_shape_infer")]
    assert debris == []


class _Item:
    """What `sharing.longest_first` reads of a collected test: its node id and its slow mark."""

    def __init__(self, nodeid: str, slow: bool = False) -> None:
        self.nodeid, self.slow = nodeid, slow

    def get_closest_marker(self, name: str):
        return object() if name == "slow" and self.slow else None

    def __repr__(self) -> str:
        return self.nodeid


def test_each_worker_starts_with_the_longest_tests_and_ends_with_the_shortest():
    """The order the xdist workers get: LONGEST first, dealt between the workers, then the other slow tests, then
    the rest, in each worker's block (worksteal hands each worker a block, and steals from the end of one)."""
    import sharing

    fast = [_Item(f"tests/test_a.py::test_fast{i}") for i in range(4)]
    slow = [_Item(f"tests/test_b.py::test_slow{i}", slow=True) for i in range(2)]
    first, second = (_Item(f"tests/{name}[case]", slow=True) for name in sharing.LONGEST[:2])
    items = [fast[0], slow[0], second, fast[1], first, fast[2], slow[1], fast[3]]
    order = sharing.longest_first(items, 2)
    assert sorted(order, key=repr) == sorted(items, key=repr)
    assert order[:4] == [first, slow[0], fast[0], fast[2]] and order[4:] == [second, slow[1], fast[1], fast[3]]


def test_the_workers_share_the_session_cache_and_one_of_them_builds_an_entry():
    """A missing entry of the session's cache (DABNET_CACHE, one for all the xdist workers) wanted by two at once:
    one builds it while the other waits, then reads it (each would otherwise quantize the same weights)."""
    import os
    import threading
    import time
    import uuid

    from dabnet.util.store import Store

    building, built = threading.Event(), []

    def build(folder: Path) -> None:
        built.append(folder)
        building.set()
        time.sleep(0.5)  # the second caller arrives meanwhile
        (folder / "x.bin").write_bytes(b"made once")

    name, got = f"entry-{uuid.uuid4().hex}", []
    store = Path(os.environ["DABNET_CACHE"]) / "suite"
    fill = lambda: got.append(Store(store).get(name, build).files["x.bin"])  # noqa: E731  (a Store per caller)
    threads = [threading.Thread(target=fill), threading.Thread(target=fill)]
    threads[0].start()
    assert building.wait(30)
    threads[1].start()
    for t in threads:
        t.join(60)
    assert got == [b"made once"] * 2 and len(built) == 1, built
