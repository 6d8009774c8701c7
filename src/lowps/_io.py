"""Output files: strict JSON written atomically, and one error type for unwritable outputs."""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, TextIO

__all__ = ["OutputError", "strict_json", "write_json", "write_text_atomic", "atomic_path"]


class OutputError(ValueError):
    """An output path that cannot be written; the message names the path and the fix."""


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by ``None`` (RFC 8259 JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return strict_json(obj.item())
    return obj


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it, if only for a moment)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place, on failure remove it.

    The one way lowps writes an output file (JSON, CSV, checkpoints, resume states): an interrupted
    or failed write (Ctrl-C, full disk) leaves any previous file untouched and no partial file
    behind. Unwritable destinations are an `OutputError` naming the path.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"output {p} is a directory; give a file name (e.g. {p / 'out.json'})")
    if p.exists() and not p.is_file():
        raise OutputError(f"output {p} exists and is not a regular file (a device, FIFO or socket); give a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist; create it first")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot write {p}: {e.strerror or e}; choose a writable location") from e
    tmp = Path(name)
    try:
        # mkstemp makes 0600 files: give the output the mode a plain open() would (or the old file's)
        os.chmod(tmp, p.stat().st_mode & 0o7777 if p.is_file() else 0o666 & ~_umask())
        yield tmp
        os.replace(tmp, p)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":
            raise OutputError(f"cannot write {p}: {getattr(e, 'strerror', None) or e}; choose a writable "
                              f"location with free space") from e
        raise


def write_text_atomic(path: str | os.PathLike[str], write: Callable[[TextIO], None]) -> Path:
    """Write text through ``write(f)`` atomically (`atomic_path`), fsynced before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> Path:
    """Strict JSON (``null`` for NaN/inf), written atomically (`write_text_atomic`)."""
    data = strict_json(obj)
    return write_text_atomic(path, lambda f: json.dump(data, f, indent=indent, allow_nan=False))
