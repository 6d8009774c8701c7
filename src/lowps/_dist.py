"""torch.distributed in one place: this process's (rank, world size), and the process group that the
CLIs set up when launched by ``torchrun`` (library functions use a group, they never create one)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

__all__ = ["rank_world", "launched_world_size", "require_group_if_launched", "process_group_from_env"]


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_world_size() -> int:
    """The world size ``torchrun`` launched this process with (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def require_group_if_launched(what: str) -> None:
    """Refuse to run ``what`` once per process when torchrun launched several but no group exists
    (each rank would do all the work and write the same files)."""
    if launched_world_size() > 1 and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{what} was launched by torchrun with WORLD_SIZE={launched_world_size()} but no process "
                           f"group is initialised; wrap the call in lowps._dist.process_group_from_env(device) or call "
                           f"torch.distributed.init_process_group() first")


@contextlib.contextmanager
def process_group_from_env(device: str | torch.device = "cpu") -> Iterator[tuple[int, int]]:
    """Under torchrun (WORLD_SIZE > 1) initialise the default group (nccl for CUDA, else gloo) for the
    ``with`` block and tear it down cleanly after (gloo aborts at interpreter exit if left open).
    Yields (rank, world size); does nothing when not launched by torchrun or a group already exists."""
    own = launched_world_size() > 1 and dist.is_available() and not dist.is_initialized()
    if own:
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    try:
        yield rank_world()
        if own:
            dist.barrier()
    finally:
        if own:
            dist.destroy_process_group()
