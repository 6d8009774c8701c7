"""What this CPU is, for the fast paths whose speed differs by vendor and vector ISA, and the one process-level
allocator setting lowps makes on CPU (`raise_malloc_thresholds`; docs/performance.md)."""
from __future__ import annotations

import ctypes
import functools
import os

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


# Both facts are read once, when this module is imported: the functions below then return plain module
# constants, which torch.compile/export treat as constants (no file reads or caches to trace), and no
# compiler module is imported on the call path (torch.compiler.assume_constant_result imported
# torch._dynamo, which sets TORCHINDUCTOR_CACHE_DIR in the process's environment).
_VENDOR = cpu_info().get("vendor_id", "")
_NATIVE_AVX512 = torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX"))


def cpu_vendor() -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``, ...); "" where unknown."""
    return _VENDOR


def native_avx512() -> bool:
    """Whether this CPU runs PyTorch's AVX-512 kernels (oneDNN then picks its AVX-512 convolutions)."""
    return _NATIVE_AVX512


#: glibc's ceiling for its dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): freeing an
#: mmapped block up to this size raises the threshold to the block's size and the trim threshold to twice it.
GLIBC_DYNAMIC_MMAP_MAX = 32 * 2**20
_MALLOC_RAISED: list[bool] = []  # raise_malloc_thresholds' answer, once asked


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # no such name: not glibc (musl, macOS, Windows)
        return False


def raise_malloc_thresholds() -> bool:
    """Raise glibc's dynamic malloc thresholds to their ceiling once per process (mmap 32 MiB, trim 64 MiB)
    by freeing one untouched block just under 32 MiB; True where that happened (glibc).

    glibc starts with small thresholds (128 KiB) and raises them only when the process frees an mmapped
    block larger than the current one. A process whose largest block is small against what one step
    allocates gives the top of its heap back to the kernel after every step, and every page of the next
    step's tensors faults on first touch. lowps at 64x64/32 is that case when it is the only model in
    the process (blocks of at most 4.7 MiB, ~24 MiB allocated and freed per loss step): ~5,000 page
    faults and ~1.2x the time per loss step or inference call, where LPIPS-alex shows none, because its constructor
    happens to free AlexNet's 16 MiB classifier weight (`benchmarks/bench_alloc.py`, docs/performance.md).
    This does on purpose what that free does by accident, within glibc's own adaptive rule: no
    ``mallopt``, no fixed thresholds, no page touched. The process then serves blocks up to 32 MiB from
    its heap and keeps up to 64 MiB of freed heap for reuse. Does nothing under other C libraries or
    where an allocator is preloaded in place of glibc's malloc (its malloc/free pair runs unchanged).
    """
    if not _MALLOC_RAISED:
        done = False
        if _glibc():  # CS_GNU_LIBC_VERSION exists only under glibc
            libc = ctypes.CDLL(None)  # the process's malloc/free, as PyTorch's CPU allocator calls them
            libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
            libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
            # under the ceiling with room for glibc's chunk header and page rounding
            block = libc.malloc(GLIBC_DYNAMIC_MMAP_MAX - 2**16)
            if block:
                libc.free(block)
                done = True
        _MALLOC_RAISED.append(done)
    return _MALLOC_RAISED[0]
