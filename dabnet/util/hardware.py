"""What the machine is: the CPU's model and instruction sets, native bf16, and a one-line description for logs and cards."""

from __future__ import annotations

import os
import platform
from typing import Any, Dict

import torch

from .distributed import world_size


BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # x86 flags of native bf16 arithmetic


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text ('' where there is none): the one place dabnet reads the CPU's model and flags from
    (tests replace it to run as on another kind of CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX on x86, as its flags say) and oneDNN may use
    it (ONEDNN_MAX_CPU_ISA can cap it away); without it bf16 is emulated, many times slower than fp32. oneDNN's
    own answer is yes on any AVX-512 CPU, which emulates it."""
    onednn = onednn_bf16()
    if not onednn or not _x86() or not read_cpuinfo():  # no flags to read: oneDNN's word
        return onednn
    return bool(BF16_FLAGS & set(cpu_flags()["flags"]))


def onednn_bf16() -> bool:
    """Whether oneDNN runs bf16 here, natively or emulated (its answer on any AVX-512 CPU), within ONEDNN_MAX_CPU_ISA."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def isa_caps() -> Dict[str, str]:
    """The instruction-set caps set on oneDNN and ATen through their environment variables (how a smaller CPU is
    emulated): with them, the CPU's flags overstate what runs."""
    return {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)}


def cpu_flags() -> Dict[str, Any]:
    """The CPU's model and the instruction sets that decide the fastest path (x86 flags from /proc/cpuinfo)."""
    info = read_cpuinfo().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    present = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"model": model or platform.processor() or platform.machine(), "flags": [f for f in wanted if f in present],
            "capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip


def describe_hardware(device: torch.device) -> str:
    """The machine a run trains on, for logs and model cards: GPU name, or CPU model, ISA level and threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{world_size()}"
    cpu = cpu_flags()
    caps = " ".join(f"{k}={v}" for k, v in isa_caps().items())
    return (f"{cpu['model']} ({' '.join(cpu['flags']) or cpu['capability']}), {torch.get_num_threads()} threads x{world_size()}"
            + (f", capped by {caps}" if caps else ""))
