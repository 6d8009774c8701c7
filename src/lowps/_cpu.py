"""What this CPU is, for the fast paths whose speed differs by vendor and vector ISA (docs/performance.md)."""
from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (``vendor_id``, ``model name``, ``cpu family``,
    ``model``, ``flags``, ...); empty where there is none (not Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if not line.strip():  # the first processor's block is enough
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


@torch.compiler.assume_constant_result  # cpu_info's cache wrapper would be traced by dynamo
def cpu_vendor() -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``, ...); "" where unknown."""
    return cpu_info().get("vendor_id", "")


_AVX512: list[bool] = []  # native_avx512's answer, once asked


# Asked on every small-map conv and loss-path block: cached, and a constant to torch.compile. Not a
# functools.cache: dynamo traces through that wrapper (and warns that it does).
@torch.compiler.assume_constant_result
def native_avx512() -> bool:
    """Whether this CPU runs PyTorch's AVX-512 kernels (oneDNN then picks its AVX-512 convolutions)."""
    if not _AVX512:
        _AVX512.append(torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX")))
    return _AVX512[0]
