"""Facts about the machine effconv runs on: its cores, CPU model and int8 instructions."""

from __future__ import annotations

import os
import platform
from pathlib import Path

X86_INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_INT8_FLAGS = ("asimddp", "i8mm")  # ARMv8.2 dot product, ARMv8.6 int8 matrix multiply


def default_threads() -> int:
    return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_int8_features() -> list[str]:
    """The instruction sets onnxruntime's int8 GEMM kernels dispatch on (Linux /proc/cpuinfo: x86 `flags`,
    ARM `Features`)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in lines if line.lower().startswith(("flags", "features"))), [])
    return [flag for flag in (*X86_INT8_FLAGS, *ARM_INT8_FLAGS) if flag in flags]
