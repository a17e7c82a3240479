"""The suite on every kind of CPU users have (tests/cpu_kinds.py): the tests whose outcome depends on the CPU
(marked cpu_kind) run once per kind, each in a process of its own that runs as on that kind: oneDNN capped to
its instruction set (read once per process), OpenVINO's default precision and the CPU flags dabnet reads set as
there. What fails on an AVX2 EPYC or an AMX Xeon fails here too, as far as this machine's instructions allow."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cpu_kinds import KINDS, assert_onednn_capped

from dabnet.util.hardware import cpu_flags, isa_caps

ROOT = Path(__file__).resolve().parents[1]


def test_this_process_runs_as_its_kind_of_cpu(cpu_kind, request):
    """dabnet reads the kind's model and flags; under --cpu-kind oneDNN and ATen are capped to its instruction set."""
    cpu = cpu_flags()
    assert cpu["model"] == cpu_kind.model and set(cpu["flags"]) <= set(cpu_kind.flags) and "avx2" in cpu["flags"]
    if request.config.getoption("--cpu-kind"):
        assert isa_caps() == cpu_kind.env
        assert_onednn_capped(cpu_kind)  # the variable took effect: oneDNN names the kind's instruction set
        if cpu_kind.aten == "avx2":
            assert torch.backends.cpu.get_cpu_capability() == "AVX2"


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_cpu_dependent_tests_pass_as_on_each_kind_of_cpu(kind, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ONEDNN_", "ATEN_"))}
    env.update(KINDS[kind].env)  # before the process starts: oneDNN and ATen read them once
    files = [str(f.relative_to(ROOT)) for f in sorted((ROOT / "tests").glob("test_*.py")) if "cpu_kind" in f.read_text()]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-n", "0", "-m", "cpu_kind",
                           "--cpu-kind", kind, "--basetemp", str(tmp_path / "tmp"), "-W", "ignore::DeprecationWarning", *files],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, f"as on {kind} ({KINDS[kind].model}): {summary}\n{proc.stdout[-6000:]}"
    assert f"PASSED tests/test_cpu_kinds.py::test_this_process_runs_as_its_kind_of_cpu[{kind}]" in proc.stdout, proc.stdout[-3000:]
    assert " passed" in summary and "error" not in summary, summary
    print(f"{kind}: {summary} ({time.perf_counter() - t0:.1f} s)")
