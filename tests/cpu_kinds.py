"""The kinds of x86 CPU users run dabnet on, as the suite emulates them (`pytest --cpu-kind KIND`).

What differs between them, and how each is set here:
- oneDNN's instruction set, in PyTorch and in OpenVINO's kernels: ONEDNN_MAX_CPU_ISA, and ATEN_CPU_CAPABILITY for
  PyTorch's other kernels (both read on first use, so set before any test runs);
- OpenVINO's CPU plugin's default inference precision (bf16 on CPUs with native bf16, else f32): set on every
  `openvino.Core` made, since the plugin reads the real CPU, whatever ONEDNN_MAX_CPU_ISA says;
- the CPU flags dabnet reads (`dabnet.util.hardware.read_cpuinfo`): `auto`'s choice and `cpu_has_bf16`.
A cap only lowers: a kind above the machine at hand runs that machine's kernels (its flags and defaults still
those of the kind). bf16 numerics need a machine with native bf16 (AVX512_BF16 or AMX).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import pytest


@dataclass(frozen=True)
class CpuKind:
    name: str
    model: str  # the model name /proc/cpuinfo gives
    onednn: str  # ONEDNN_MAX_CPU_ISA
    aten: str  # ATEN_CPU_CAPABILITY
    flags: Tuple[str, ...]  # /proc/cpuinfo flags
    plugin_precision: str  # OpenVINO CPU plugin's default INFERENCE_PRECISION_HINT there
    onednn_isa: str  # how oneDNN's verbose header ends when capped to `onednn` (its name for that instruction set)

    @property
    def env(self) -> Dict[str, str]:
        return {"ONEDNN_MAX_CPU_ISA": self.onednn, "ATEN_CPU_CAPABILITY": self.aten}

    def cpuinfo(self) -> str:
        return f"processor\t: 0\nmodel name\t: {self.model}\nflags\t\t: {' '.join(self.flags)}\n"


_AVX2 = ("sse4_2", "avx", "f16c", "fma", "avx2")
_AVX512 = (*_AVX2, "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni")
KINDS = {k.name: k for k in (
    CpuKind("avx2", "AVX2-only x86 (emulated: EPYC Zen 2/3)", "AVX2", "avx2", _AVX2, "f32", "Intel AVX2"),
    CpuKind("avx512", "AVX-512 x86 without bf16 (emulated: Xeon Cascade/Ice Lake)", "AVX512_CORE_VNNI", "avx512", _AVX512, "f32",
            "Intel AVX-512 with Intel DL Boost"),
    CpuKind("avx512_bf16", "AVX512-BF16 x86 (emulated: EPYC Zen 4)", "AVX512_CORE_BF16", "avx512", (*_AVX512, "avx512_bf16"), "bf16",
            "Intel AVX-512 with Intel DL Boost and bfloat16 support"),
    CpuKind("amx", "AMX x86 (emulated: Xeon Sapphire Rapids)", "AVX512_CORE_AMX", "avx512",
            (*_AVX512, "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"), "bf16", "Intel AMX with bfloat16 and 8-bit integer support"),
)}  # fmt: skip


def machine_flags() -> set:
    """The flags of the CPU at hand (read past any emulation): a cap above them changes nothing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


@functools.lru_cache(maxsize=None)
def onednn_isa() -> str:
    """The instruction set oneDNN in PyTorch runs with, as its verbose header names it (after ONEDNN_MAX_CPU_ISA, a
    misspelt value of which it ignores). oneDNN prints that header once per process, to the C stdout: kept."""
    import ctypes
    import tempfile

    import torch

    libc = ctypes.CDLL(None)
    x, w = torch.randn(1, 32, 32, 32), torch.randn(32, 32, 3, 3)  # big enough for oneDNN's convolution
    with tempfile.TemporaryFile() as out:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(out.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                torch.nn.functional.conv2d(x, w)
            libc.fflush(None)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    isa = [line.split(",isa:", 1)[1].strip() for line in text.splitlines() if ",info,cpu,isa:" in line]
    assert isa, f"oneDNN printed no instruction set (its header comes once per process; verbose on already?): {text[:500]!r}"
    return isa[0]


def assert_onednn_capped(kind: CpuKind) -> None:
    """oneDNN runs `kind`'s instruction set where the machine has it: the cap took effect, not only its variable."""
    if set(kind.flags) <= machine_flags():
        isa = onednn_isa()
        assert isa.endswith(kind.onednn_isa), f"ONEDNN_MAX_CPU_ISA={kind.onednn} left oneDNN on {isa!r}, not {kind.onednn_isa!r}"


def emulate(kind: CpuKind, mp: pytest.MonkeyPatch) -> None:
    """This process as on `kind`, for what is read after its start: dabnet's CPU flags and OpenVINO's default
    precision (the oneDNN caps are environment variables, set by whoever starts the process)."""
    import dabnet.util.hardware as hardware

    mp.setattr(hardware, "read_cpuinfo", kind.cpuinfo)
    try:
        import openvino
    except ImportError:
        return
    import dabnet.runtimes.openvino as ovr

    class Core(openvino.Core):
        """The plugin as on `kind`: its default inference precision is that kind's (a hint given still wins)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.set_property("CPU", {"INFERENCE_PRECISION_HINT": kind.plugin_precision})

    mp.setattr(openvino, "Core", Core)
    mp.setattr(ovr, "_CORE", [])  # dabnet's one Core is made again, as on that kind
