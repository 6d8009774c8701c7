"""Opt-in process tuning for speed: what lowps never does by itself as a side effect of a call.

A library must not change process-global state from a forward pass. The one such setting lowps
offers is glibc's malloc thresholds (`tune_allocator`): call it yourself, once, in a program where
lowps is the only model (an image optimised against the metric, a folder scored); the ``lowps`` and
``lowps-score`` commands call it for their own process unless ``LOWPS_TUNE_ALLOCATOR=0``.
"""
from __future__ import annotations

import os

from ._cpu import raise_malloc_thresholds

__all__ = ["tune_allocator", "tune_allocator_for_cli"]


def tune_allocator() -> bool:
    """Raise glibc's dynamic malloc thresholds to their ceiling (mmap 32 MiB, trim 64 MiB), once per
    process; True where that happened (glibc), False elsewhere. Irreversible for the process.

    Why: glibc starts with 128 KiB thresholds and raises them only when a large mmapped block is
    freed. In a process where lowps is the only model, the top of the heap goes back to the kernel
    after every call and is page-faulted in again by the next: ~4,000-6,000 faults and ~1.1-1.2x the
    time of a 64x64/32 loss step or inference call on the CPUs measured (docs/performance.md,
    "Alone in a process"). Done within glibc's own adaptive rule (one untouched block just under
    32 MiB freed), as freeing any 16-32 MiB tensor would do by accident: no ``mallopt``, no page
    touched. The process then keeps up to 64 MiB of freed heap for reuse.
    """
    return raise_malloc_thresholds()


def tune_allocator_for_cli() -> bool:
    """`tune_allocator` for lowps's own command-line processes, unless ``LOWPS_TUNE_ALLOCATOR`` is
    0/false/no/off."""
    if os.environ.get("LOWPS_TUNE_ALLOCATOR", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return tune_allocator()
