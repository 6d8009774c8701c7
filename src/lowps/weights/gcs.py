"""The paper's own checkpoints from Google Cloud Storage, with no Google tools and no TensorFlow.

Kumar et al. 2022 released their ImageNet-64 checkpoints (ResNet-6, -50, -200 every 1000 steps,
sec. 9, and the ViTs) in the public bucket ``gs://gresearch/perceptual_similarity``. lowps reads
such a checkpoint from any public bucket:

* ``weights="gs://BUCKET/PATH/model.ckpt-N"`` (a TensorFlow checkpoint prefix) or
  ``"gs://BUCKET/PATH/file.npz"`` (a big_vision/vit_jax ViT checkpoint);
* ``weights="kumar2022:resnet6@5000"``: a short name from the catalogue of the paper's bucket
  (`catalogue`; ``lowps weights list --remote kumar2022``).

Objects are listed through the JSON API (``/storage/v1/b/BUCKET/o?prefix=``) and fetched as media
downloads, each checked against the MD5 that Cloud Storage reports, resumable and atomic
(`lowps.weights.hub.download_file`). A TensorFlow checkpoint is then read by
`lowps.weights.tf_checkpoint` and written as safetensors in the cache, in a folder keyed by the
objects' generations and MD5s. A small record pins what a ``gs://`` name resolved to, so later
calls load the cached copy with no network (delete ``<cache>/gcs`` to check the bucket again).

``STORAGE_EMULATOR_HOST`` (the variable Google's own clients read) points everything at another
endpoint, e.g. a fake bucket on ``http://127.0.0.1:PORT``: that is how the tests run it.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import requests

from . import WeightsError
from .hub import DownloadError, OfflineError, cache_dir, download_file, offline

__all__ = ["GCSObject", "endpoint", "list_objects", "fetch_checkpoint", "catalogue", "resolve_short_name",
           "KUMAR2022_BUCKET", "KUMAR2022_PREFIX"]

KUMAR2022_BUCKET = "gresearch"
KUMAR2022_PREFIX = "perceptual_similarity/"
_TIMEOUT = 30.0

#: Architecture tokens as they may appear in the bucket's folder names -> lowps backbones.
_ARCHS = {"resnet6": "resnet6", "resnet50": "resnet50_tpu", "resnet200": "resnet200_tpu", "resnet18": "resnet18_tpu",
          "vitb8": "vit_base_patch8_64", "vitl4": "vit_large_patch4_64"}


@dataclass(frozen=True)
class GCSObject:
    """One object of a listing: what the JSON API reports about it."""

    bucket: str
    name: str
    size: int
    md5_base64: str | None
    generation: str

    @property
    def media_url(self) -> str:
        return (f"{endpoint()}/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(self.name, safe='')}"
                f"?alt=media&generation={self.generation}")


def endpoint() -> str:
    """``https://storage.googleapis.com``, or ``$STORAGE_EMULATOR_HOST`` (scheme added if missing)."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip().rstrip("/")
    if not host:
        return "https://storage.googleapis.com"
    return host if "://" in host else f"http://{host}"


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/path`` -> ``(bucket, path)``; a clear error for anything else."""
    m = re.fullmatch(r"gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/(.+)", uri)
    if m is None:
        raise WeightsError(f"{uri!r} is not a gs://BUCKET/OBJECT name (e.g. gs://gresearch/perceptual_similarity/"
                           "<model>/model.ckpt-1000)")
    return m[1], m[2]


def list_objects(bucket: str, prefix: str = "") -> list[GCSObject]:
    """Every object of ``bucket`` whose name starts with ``prefix`` (the JSON API, all pages)."""
    if offline():
        raise OfflineError(f"LOWPS_OFFLINE is set: cannot list gs://{bucket}/{prefix}")
    url = f"{endpoint()}/storage/v1/b/{quote(bucket, safe='')}/o"
    out: list[GCSObject] = []
    token: str | None = None
    while True:
        params = {"prefix": prefix, "fields": "items(name,size,md5Hash,generation),nextPageToken"}
        if token:
            params["pageToken"] = token
        try:
            r = requests.get(url, params=params, timeout=_TIMEOUT)
        except requests.RequestException as e:
            raise DownloadError(f"cannot list gs://{bucket}/{prefix} at {endpoint()}: {type(e).__name__}: {e}") from e
        if r.status_code in (401, 403):
            raise DownloadError(f"gs://{bucket}: access denied (HTTP {r.status_code}); lowps reads public buckets "
                                "only. Copy the objects with your own credentials and pass the local prefix")
        if r.status_code == 404:
            raise DownloadError(f"gs://{bucket}: no such bucket (HTTP 404 from {endpoint()})")
        if r.status_code != 200:
            raise DownloadError(f"listing gs://{bucket}/{prefix} failed: HTTP {r.status_code} {r.reason}")
        try:
            page = r.json()
        except ValueError as e:
            raise DownloadError(f"listing gs://{bucket}/{prefix}: the answer is not JSON ({e})") from e
        for item in page.get("items", []):
            out.append(GCSObject(bucket, item["name"], int(item.get("size", 0)), item.get("md5Hash"),
                                 str(item.get("generation", "0"))))
        token = page.get("nextPageToken")
        if not token:
            return out


def _fetch(objects: list[GCSObject], folder: Path, progress: bool) -> list[Path]:
    return [download_file(o.media_url, folder / o.name.rsplit("/", 1)[-1], None, size=o.size, progress=progress,
                          desc=o.name.rsplit("/", 1)[-1], md5_base64=o.md5_base64) for o in objects]


def _ref_path(uri: str, arch: str) -> Path:
    return cache_dir() / "gcs" / "refs" / (hashlib.sha256(f"{uri}|{arch}".encode()).hexdigest()[:24] + ".json")


def _pinned_file(ref: Path) -> Path | None:
    """The converted file a pin record names, if it is still there with its recorded sha256."""
    from . import sha256_file

    if not ref.is_file():
        return None
    try:
        pinned = json.loads(ref.read_text())
        p = Path(pinned["file"])
        if p.is_file() and sha256_file(p) == pinned["sha256"]:
            return p
    except (ValueError, KeyError, OSError):
        pass  # a damaged record: resolve again
    return None


def _checkpoint_objects(uri: str, bucket: str, name: str) -> tuple[str, list[GCSObject]]:
    """The checkpoint's prefix and its objects in the bucket: a ``.npz`` file, or a TensorFlow
    checkpoint's ``.index`` and ``.data-*`` shards (``name`` may be the prefix or any of its files)."""
    if name.endswith((".index", ".npz")) or ".data-" in name:
        stem = name[: name.rindex(".data-")] if ".data-" in name else name.removesuffix(".index")
    else:
        stem = name
    objects = list_objects(bucket, stem)
    if name.endswith(".npz"):
        wanted = [o for o in objects if o.name == name]
    else:
        wanted = [o for o in objects if o.name == stem + ".index" or o.name.startswith(stem + ".data-")]
    if not wanted or (not name.endswith(".npz") and not any(o.name.endswith(".index") for o in wanted)):
        near = sorted({o.name for o in list_objects(bucket, stem.rsplit("/", 1)[0] + "/")
                       if o.name.endswith((".index", ".npz"))})[:20] if "/" in stem else []
        raise WeightsError(f"{uri}: no checkpoint there (a TensorFlow checkpoint needs {stem}.index and its "
                           f".data-* shards)" + (f"; checkpoints in that folder: {', '.join(near)}" if near else ""))
    return stem, wanted


def fetch_checkpoint(spec: str, arch: str, progress: bool = True) -> Path:
    """The local safetensors file for checkpoint ``spec`` (``gs://...`` or ``kumar2022:<arch>@<step>``)
    converted for backbone ``arch``.

    First call: list, download (MD5-checked), convert, cache, and pin. Later calls: the pinned copy,
    no network."""
    ref = _ref_path(spec, arch)
    pinned = _pinned_file(ref)
    if pinned is not None:
        return pinned
    uri = spec
    if spec.startswith("kumar2022:"):
        entry = resolve_short_name(spec)
        if entry.arch != arch:
            raise WeightsError(f"{spec} is a {entry.arch} checkpoint; pass backbone={entry.arch!r} with it")
        uri = entry.uri
    bucket, name = parse_gs_uri(uri)
    stem, wanted = _checkpoint_objects(uri, bucket, name)
    key = hashlib.sha256("|".join(f"{o.name}:{o.generation}:{o.md5_base64}" for o in sorted(
        wanted, key=lambda o: o.name)).encode()).hexdigest()[:24]
    folder = cache_dir() / "gcs" / bucket / key
    files = _fetch(wanted, folder, progress)
    out = folder / f"{arch}.safetensors"
    if name.endswith(".npz"):
        from .vit_npz import convert_vit_npz

        digest = convert_vit_npz(files[0], arch, out)
    else:
        from .convert_tf import convert_tf_checkpoint

        digest = convert_tf_checkpoint(folder / stem.rsplit("/", 1)[-1], arch, out)
    ref.parent.mkdir(parents=True, exist_ok=True)
    from .._io import write_json

    write_json(ref, {"spec": spec, "uri": uri, "arch": arch, "file": str(out), "sha256": digest,
                     "objects": [{"name": o.name, "generation": o.generation, "md5": o.md5_base64} for o in wanted]})
    return out


@dataclass(frozen=True)
class CatalogueEntry:
    """A checkpoint of the paper's bucket: short name ``<arch>@<step>`` and where it lives."""

    short: str
    arch: str  # lowps backbone
    step: int
    uri: str
    folder: str


def _arch_of(folder: str) -> str | None:
    token = re.sub(r"[^a-z0-9]", "", folder.lower())
    for key in sorted(_ARCHS, key=len, reverse=True):
        if key in token:
            return key
    return None


def catalogue(bucket: str = KUMAR2022_BUCKET, prefix: str = KUMAR2022_PREFIX) -> list[CatalogueEntry]:
    """The checkpoints in the paper's bucket, from its listing.

    The layout is not documented; lowps assumes checkpoints are TensorFlow prefixes
    ``.../<folder>/model.ckpt-<step>.index`` (or ``.npz`` files with a step in their name) whose
    folder path names the architecture (``resnet6``, ``resnet_50``, ``ResNet-200``, ``vit_b8``...).
    Short names are ``<arch>@<step>``; where two folders hold the same architecture and step, the
    folder's name replaces the architecture (``<folder>@<step>``)."""
    found: list[tuple[str, str, int, str]] = []
    for o in list_objects(bucket, prefix):
        m = re.fullmatch(r"(?P<folder>.*)/(?P<file>[^/]*?(?:ckpt|checkpoint)[-_]?(?P<step>\d+))(?P<ext>\.index|\.npz)",
                         o.name)
        if m is None:
            continue
        arch = _arch_of(m["folder"])
        if arch is None:
            continue
        target = m["folder"] + "/" + m["file"] + (".npz" if m["ext"] == ".npz" else "")
        found.append((arch, m["folder"], int(m["step"]), f"gs://{bucket}/{target}"))
    counts: dict[tuple[str, int], int] = {}
    for arch, _, step, _ in found:
        counts[(arch, step)] = counts.get((arch, step), 0) + 1
    out = []
    for arch, folder, step, uri in found:
        label = arch if counts[(arch, step)] == 1 else folder.rsplit("/", 1)[-1]
        out.append(CatalogueEntry(f"{label}@{step}", _ARCHS[arch], step, uri, folder))
    return sorted(out, key=lambda e: (e.short.split("@")[0], e.step))


def resolve_short_name(spec: str) -> CatalogueEntry:
    """``kumar2022:<arch>@<step>`` -> its catalogue entry; an unknown name lists the nearest ones."""
    source, _, short = spec.partition(":")
    if source != "kumar2022" or not short:
        raise WeightsError(f"{spec!r}: short names look like kumar2022:resnet6@5000 (see `lowps weights list "
                           "--remote kumar2022`)")
    entries = catalogue()
    by_name = {e.short: e for e in entries}
    if short in by_name:
        return by_name[short]
    near = difflib.get_close_matches(short, list(by_name), n=8, cutoff=0.3)
    raise WeightsError(f"{spec!r} is not in the catalogue of gs://{KUMAR2022_BUCKET}/{KUMAR2022_PREFIX} "
                       f"({len(entries)} checkpoints)" + (f"; nearest: {', '.join(near)}" if near else "")
                       + ". `lowps weights list --remote kumar2022` lists them all")
