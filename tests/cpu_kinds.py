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

from dataclasses import dataclass
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

    @property
    def env(self) -> Dict[str, str]:
        return {"ONEDNN_MAX_CPU_ISA": self.onednn, "ATEN_CPU_CAPABILITY": self.aten}

    def cpuinfo(self) -> str:
        return f"processor\t: 0\nmodel name\t: {self.model}\nflags\t\t: {' '.join(self.flags)}\n"


_AVX2 = ("sse4_2", "avx", "f16c", "fma", "avx2")
_AVX512 = (*_AVX2, "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni")
KINDS = {k.name: k for k in (
    CpuKind("avx2", "AVX2-only x86 (emulated: EPYC Zen 2/3)", "AVX2", "avx2", _AVX2, "f32"),
    CpuKind("avx512", "AVX-512 x86 without bf16 (emulated: Xeon Cascade/Ice Lake)", "AVX512_CORE_VNNI", "avx512", _AVX512, "f32"),
    CpuKind("avx512_bf16", "AVX512-BF16 x86 (emulated: EPYC Zen 4)", "AVX512_CORE_BF16", "avx512", (*_AVX512, "avx512_bf16"), "bf16"),
    CpuKind("amx", "AMX x86 (emulated: Xeon Sapphire Rapids)", "AVX512_CORE_AMX", "avx512",
            (*_AVX512, "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"), "bf16"),
)}  # fmt: skip


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
