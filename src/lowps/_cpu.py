"""What this CPU is, for the fast paths whose speed differs by vendor and vector ISA (docs/performance.md)."""
from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_vendor() -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``, ...) from /proc/cpuinfo; "" where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.cache  # asked on every small-map conv and loss-path block: the answer never changes
def native_avx512() -> bool:
    """Whether this CPU runs PyTorch's AVX-512 kernels (oneDNN then picks its AVX-512 convolutions)."""
    return torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX"))
