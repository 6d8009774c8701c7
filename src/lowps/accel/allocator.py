"""Opt-in process tuning: glibc's malloc thresholds (`tune_allocator`). Never done by a call."""
from __future__ import annotations

import ctypes
import os

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


def tune_allocator() -> bool:
    """Raise glibc's dynamic malloc thresholds to their ceiling (mmap 32 MiB, trim 64 MiB), once per
    process; True where that happened (glibc), False elsewhere. Irreversible for the process.

    A library call must not change process-global state, so lowps never does this by itself: call
    it once in a program where lowps is the only model (an image optimised against the metric, a
    folder scored). Why: glibc starts with 128 KiB thresholds and raises them only when a large
    mmapped block is freed, so the top of the heap goes back to the kernel after every call and is
    page-faulted in again by the next: ~1.1-1.2x the time of a 64x64/32 loss step or inference call
    on the CPUs measured (docs/performance.md). See `raise_malloc_thresholds` for how.
    """
    return raise_malloc_thresholds()


def tune_allocator_for_cli() -> bool:
    """`tune_allocator` for lowps's own command-line processes, unless ``LOWPS_TUNE_ALLOCATOR`` is
    0/false/no/off."""
    if os.environ.get("LOWPS_TUNE_ALLOCATOR", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return tune_allocator()
