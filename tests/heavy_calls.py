"""What makes a test slow, measured while it runs: a subprocess, a started process (loader workers, DDP ranks,
spawn), a fork, `torch.compile`, an export or a compile (ONNX, torch.export, TorchScript tracing, OpenVINO's converter
and compiler), or an int8 quantizer (NNCF, PT2E), and the use of what a session compiles or
quantizes once (dabnet's fused kernels, its int8 IR), which only the first test to need it makes. conftest.py uses this module's two hooks:
each test's call, and each fixture's setup, records what it set off, wherever the call came from (the test's
body, a helper in another module, a fixture), and a test not marked slow that set off any fails, naming it."""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import multiprocessing.process
import sys
import threading
from typing import Dict, Iterator, List, Optional

import pytest
import torch

# module -> its functions that quantize; each is wrapped when the module is imported (they are imported lazily)
QUANTIZERS = {
    "nncf": ("quantize", "quantize_with_accuracy_control"),
    "torchao.quantization.pt2e.quantize_pt2e": ("prepare_pt2e", "prepare_qat_pt2e"),
    "torch.ao.quantization.quantize_pt2e": ("prepare_pt2e", "prepare_qat_pt2e"),
}
# dabnet's functions that use what a session compiles or quantizes once and then caches: what they call counts
# whether this test or an earlier one made it (else a test's mark would depend on the order tests run in)
# module -> {function: (what it sets off, when: args, kwargs -> bool)}
CACHED = {
    "dabnet.models.fused": {"run_compiled": ("ran kernels compiled by torch.compile (compiled once a session)", lambda a, k: True)},
    "dabnet.runtimes.openvino": {"cached_ir": ("used an int8 IR quantized by NNCF (quantized once a session)",
                                               lambda a, k: bool(a[1] if len(a) > 1 else k.get("int8")))},
}
# module -> {"function" or "Class.method": what it sets off}: compiles and exports, paid by each test that needs one (an
# OpenVINO model imported from the blob this session compiled stands for its compile, so the mark is order-free)
COMPILERS = {
    "openvino": {"convert_model": "converted a model to OpenVINO"},
    "openvino._ov_api": {"Core.compile_model": "compiled an OpenVINO model",
                         "Core.import_model": "imported a compiled OpenVINO model (compiled once a session)"},
    "torch.onnx": {"export": "exported to ONNX"},
    "torch.export": {"export": "ran torch.export"},
    "torch.jit": {"trace": "traced to TorchScript"},
}
# audit events (sys.addaudithook) that start another program or process
AUDITED = {"subprocess.Popen": "ran a subprocess", "os.system": "ran a shell", "os.posix_spawn": "spawned a process",
           "os.spawn": "spawned a process", "os.fork": "forked", "os.forkpty": "forked"}  # fmt: skip
# Processes that are no work of the test's: OpenVINO's converter starts openvino_telemetry's sender on each conversion
# (unless the user opted out); keeping it from sending is issue 51's section 3, not a reason to mark a test slow.
NOT_THE_TESTS = ("openvino_telemetry.",)

_stack: List[Optional[List[str]]] = []  # open recorders; None hides what is recorded above it from those below
_by_fixture: Dict[object, List[str]] = {}  # FixtureDef -> what its setup set off
_quiet = threading.local()  # set while a process in NOT_THE_TESTS starts: its fork is not recorded either


def record(event: str) -> None:
    """Adds `event` to every open recorder (up to an isolating one)."""
    for sink in reversed(_stack):
        if sink is None:
            break
        sink.append(event)


@contextlib.contextmanager
def recording(isolated: bool = False) -> Iterator[List[str]]:
    """The heavy calls made inside the block; `isolated`: kept from the recorders outside it (a test of this module)."""
    events: List[str] = []
    depth = len(_stack)
    _stack.extend([None, events] if isolated else [events])
    try:
        yield events
    finally:
        del _stack[depth:]


def _audit(event: str, args: tuple) -> None:
    if _stack and event in AUDITED and not getattr(_quiet, "on", False):  # never raise here: the audited call would fail
        record(AUDITED[event] + (f" ({args[0]})" if event == "subprocess.Popen" else ""))


def _recorded(fn, what: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        record(what)
        return fn(*args, **kwargs)

    wrapper.__heavy_call__ = True
    return wrapper


def _wrap_quantizers(module) -> None:
    for dotted, what in COMPILERS.get(module.__name__, {}).items():
        owner_name, _, name = dotted.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        fn = getattr(owner, name, None)
        if fn is not None and not getattr(fn, "__heavy_call__", False):
            setattr(owner, name, _recorded(fn, what))
    for name in QUANTIZERS.get(module.__name__, ()):
        fn = getattr(module, name, None)
        if fn is not None and not getattr(fn, "__heavy_call__", False):
            setattr(module, name, _recorded(fn, f"quantized ({module.__name__}.{name})"))
    for name, (what, when) in CACHED.get(module.__name__, {}).items():
        fn = getattr(module, name, None)
        if fn is None or getattr(fn, "__heavy_call__", False):
            continue

        def wrapper(*args, _fn=fn, _what=what, _when=when, **kwargs):
            if _when(args, kwargs):
                record(_what)
            return _fn(*args, **kwargs)

        wrapper.__heavy_call__ = True
        functools.update_wrapper(wrapper, fn)
        for other in list(sys.modules.values()):  # and where it was imported by name already (`from .fused import ...`)
            if getattr(other, "__name__", "").startswith("dabnet") and getattr(other, name, None) is fn:
                setattr(other, name, wrapper)


def _recorded_start(start):
    @functools.wraps(start)
    def wrapper(self):
        target = getattr(self, "_target", None)
        if f"{getattr(target, '__module__', '')}.".startswith(NOT_THE_TESTS):
            _quiet.on = True
            try:
                return start(self)
            finally:
                _quiet.on = False
        record("started a process")
        return start(self)

    return wrapper


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds the quantizers' modules as the other finders do, and wraps their functions once they have run."""

    def __init__(self) -> None:
        self.busy: set = set()

    def find_spec(self, name, path, target=None):
        if (name not in QUANTIZERS and name not in CACHED and name not in COMPILERS) or name in self.busy:
            return None
        self.busy.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy.discard(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _wrap_quantizers(module)

            spec.loader.exec_module = exec_module
        return spec


_installed = False


def install() -> None:
    """Starts recording what tests set off (once per process; each wrapper is a call and a list append)."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.addaudithook(_audit)
    start = multiprocessing.process.BaseProcess.start  # every start method's processes: fork, spawn, forkserver
    multiprocessing.process.BaseProcess.start = _recorded_start(start)
    torch.compile = _recorded(torch.compile, "called torch.compile")
    for name in [*QUANTIZERS, *CACHED, *COMPILERS]:
        if name in sys.modules:
            _wrap_quantizers(sys.modules[name])
    sys.meta_path.insert(0, _WrapOnImport())


def _fixture_events(item: pytest.Item) -> List[str]:
    defs = getattr(item, "_fixtureinfo", None)
    found = []
    for name in getattr(item, "fixturenames", ()):
        chain = defs.name2fixturedefs.get(name) if defs is not None else None
        if chain:
            found += [f"{e} in fixture {name}" for e in _by_fixture.get(chain[-1], [])]
    return found


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """What a fixture's setup sets off counts for every test that uses it, whichever test set it up."""
    with recording() as events:
        result = yield
    if events:
        _by_fixture.setdefault(fixturedef, []).extend(events)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test that set off a subprocess, a process, a compile or a quantizer, itself or through its fixtures,
    fails unless it is marked slow (`pytest -m "not slow"` is the inner loop)."""
    with recording() as events:
        result = yield
    heavy = list(dict.fromkeys(events + _fixture_events(item)))
    if heavy and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} is not marked slow, but it {'; '.join(heavy[:4])}: mark it @pytest.mark.slow", pytrace=False)
    return result
