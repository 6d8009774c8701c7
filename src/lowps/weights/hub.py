"""Downloads for lowps: streamed, resumable, checksum-verified, atomic and safe across processes.

* The cache is ``$LOWPS_HOME`` if set, else ``$XDG_CACHE_HOME/lowps``, else ``~/.cache/lowps``.
* ``LOWPS_OFFLINE=1`` never touches the network; a missing file raises `OfflineError` naming
  the exact file to place and where.
* A file enters the cache only after its sha256 (and size, when known) matched: bytes go to
  ``<cache>/.partial/<name>.part`` and are renamed into place with `os.replace`.
* An interrupted transfer keeps its ``.part`` file; the next attempt (within the same call, up to
  ``retries`` times, or a later call) resumes it with an HTTP ``Range`` request.
* A lock file (``filelock``) serialises processes fetching the same file.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from filelock import FileLock
from tqdm.auto import tqdm

__all__ = ["cache_dir", "offline", "download_file", "sha256_file", "DownloadError", "OfflineError",
           "ChecksumError"]

_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download failed (HTTP error, network error after all retries, unwritable cache)."""


class OfflineError(DownloadError):
    """The file is not cached and LOWPS_OFFLINE=1 forbids fetching it."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256 or size; nothing was cached."""


def cache_dir() -> Path:
    """The lowps cache root (not created here)."""
    if os.environ.get("LOWPS_HOME"):
        return Path(os.environ["LOWPS_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "lowps"


def offline() -> bool:
    """True when ``LOWPS_OFFLINE`` is set to 1/true/yes."""
    return os.environ.get("LOWPS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _md5_base64(path: Path) -> str:
    import base64

    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def _ensure_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise DownloadError(f"cannot write to the lowps cache {directory} ({e.strerror}); set LOWPS_HOME to a "
                            "writable directory, or place the file there yourself") from e


def download_file(url: str | list[str], dest: str | os.PathLike[str], sha256: str | None, *,
                  size: int | None = None, progress: bool = True, timeout: float = 30.0,
                  retries: int = 3, backoff: float = 0.5, desc: str | None = None,
                  deadline: float | None = None, md5_base64: str | None = None) -> Path:
    """Fetch ``url`` (or the first working of several mirrors) to ``dest``; return ``dest``.

    Returns at once when ``dest`` exists with the right checksum. ``sha256=None`` skips the
    check (only for user-given URLs; every registry entry has a checksum). ``timeout`` bounds each
    connect/read; ``deadline`` bounds each attempt's whole transfer, so a server that trickles bytes
    cannot stall a call forever (default: ``$LOWPS_DOWNLOAD_DEADLINE`` or 1 hour, plus 1 s per 100 kB
    of a known size). ``md5_base64``: the MD5 digest a server reports for the object (Google
    Cloud Storage's ``md5Hash``), checked before the file enters the cache, as the sha256 is.
    """
    if deadline is None:
        deadline = float(os.environ.get("LOWPS_DOWNLOAD_DEADLINE", 3600)) + (size or 0) / 1e5
    dest = Path(dest)
    urls = [url] if isinstance(url, str) else list(url)
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    if offline():
        raise OfflineError(f"LOWPS_OFFLINE is set and {dest.name} is not cached. Place the file at {dest} "
                           f"(download it elsewhere from {urls[0] if urls else 'its source'}"
                           + (f", sha256 {sha256}" if sha256 else "") + "), or unset LOWPS_OFFLINE.")
    if not urls:
        raise DownloadError(f"{dest.name} has no download URL; place the file at {dest}")
    _ensure_writable(dest.parent)
    partial_dir = dest.parent / ".partial"
    _ensure_writable(partial_dir)
    part = partial_dir / (dest.name + ".part")
    with FileLock(str(partial_dir / (dest.name + ".lock"))):
        # Another process may have finished the file while we waited for the lock.
        if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
            return dest
        _fetch_any(urls, part, dest.name, size, progress, timeout, desc or dest.name, deadline, retries, backoff)
        _verify(part, dest.name, size, md5_base64, sha256)
        os.replace(part, dest)
    return dest


def _fetch_any(urls: list[str], part: Path, name: str, size: int | None, progress: bool, timeout: float,
               desc: str, deadline: float, retries: int, backoff: float) -> None:
    """`_fetch` from the first mirror that works, retrying transient failures with exponential backoff;
    `DownloadError` naming the last failures when none does (the partial file stays for a resume)."""
    errors: list[str] = []
    for u in urls:
        for attempt in range(retries + 1):
            try:
                _fetch(u, part, size, progress, timeout, desc, deadline)
                return
            except _Fatal as e:
                errors.append(str(e))
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                errors.append(f"{u}: {type(e).__name__}: {e}")
                if attempt < retries:
                    time.sleep(backoff * (2 ** attempt))
            except requests.RequestException as e:  # redirect loops, file:// or ftp:// redirects, bad URLs
                errors.append(f"{u}: {type(e).__name__}: {e} (only http(s) downloads are supported)")
                break
    raise DownloadError(f"could not download {name}: " + "; ".join(errors[-3:])
                        + (f". Partial data kept in {part} for the next attempt." if part.is_file() else ""))


def _verify(part: Path, name: str, size: int | None, md5_base64: str | None, sha256: str | None) -> None:
    """The downloaded ``part`` has the expected size and checksums, or is deleted and `ChecksumError`
    says which check failed (nothing enters the cache)."""
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{name}: got {got_size} bytes, expected {size}; nothing was cached")
    if md5_base64 is not None:
        got_md5 = _md5_base64(part)
        if got_md5 != md5_base64:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{name}: MD5 {got_md5} does not match the server's {md5_base64}; "
                                "nothing was cached (the transfer was corrupted)")
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{name}: sha256 {got} does not match the expected {sha256}; "
                                "nothing was cached (the server sent other bytes)")


class _Fatal(Exception):
    """An HTTP answer that retrying will not change (4xx, bad range)."""


def _chunks_as_they_arrive(r: requests.Response) -> Iterator[bytes]:
    """The body in pieces as the network delivers them: ``iter_content`` blocks until a whole chunk
    has arrived, which would let a server that trickles bytes stall the deadline check."""
    read1 = getattr(r.raw, "read1", None)
    if read1 is None:  # urllib3 < 2
        yield from r.iter_content(_CHUNK)
        return
    try:
        while True:
            chunk = read1(_CHUNK, decode_content=True)
            if not chunk:
                return
            yield chunk
    except Exception as e:  # urllib3's ProtocolError etc.: map to what the retry loop understands
        import urllib3

        if isinstance(e, (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError, OSError)):
            raise requests.exceptions.ChunkedEncodingError(str(e)) from e
        raise


def _fetch(url: str, part: Path, size: int | None, progress: bool, timeout: float, desc: str,
           deadline: float = float("inf")) -> None:
    end = time.monotonic() + deadline
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have == size:
        return
    if size is not None and have > size:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as r:
        if r.status_code == 416:  # our partial file is already complete (or longer than the file)
            if size is None:
                return
            part.unlink(missing_ok=True)
            raise requests.ConnectionError(f"{url}: range not satisfiable; restarting")
        if 400 <= r.status_code < 500:
            raise _Fatal(f"{url}: HTTP {r.status_code} {r.reason}")
        if r.status_code >= 500:
            raise requests.ConnectionError(f"{url}: HTTP {r.status_code} {r.reason}")
        resumed = r.status_code == 206 and have > 0
        mode = "ab" if resumed else "wb"
        start = have if resumed else 0
        total = size
        if total is None and r.headers.get("Content-Length"):
            total = start + int(r.headers["Content-Length"])
        with open(part, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=desc,
                                         disable=not progress, leave=False) as bar:
            for chunk in _chunks_as_they_arrive(r):
                f.write(chunk)
                bar.update(len(chunk))
                if time.monotonic() > end:
                    raise requests.Timeout(f"{url}: the transfer took longer than its {deadline:.0f} s deadline "
                                           "(the server sends too slowly); partial data kept for a resume")
        expected = r.headers.get("Content-Length")
        if expected is not None and part.stat().st_size - start < int(expected):
            raise requests.exceptions.ChunkedEncodingError(
                f"{url}: connection closed after {part.stat().st_size - start} of {expected} bytes")
