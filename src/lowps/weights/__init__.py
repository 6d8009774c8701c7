"""Weights: the registry of named weights, loading from names, files and URLs, strict checks.

``weights=`` everywhere in lowps accepts:

* ``None``: the backbone's default entry (``resnet6``: a checkpoint shipped inside the package,
  loaded with no network);
* ``"random"``: a seeded random initialisation (the paper's random-network baseline);
* ``"timm"``: timm's own pretrained weights for a timm model (fetched by timm/huggingface_hub);
* a registry name (`list`), a local ``.safetensors`` / ``.pth`` file, or an http(s) URL;
* ``"gs://BUCKET/PATH/model.ckpt-N"`` or ``"kumar2022:<arch>@<step>"``: the paper's TensorFlow
  checkpoints from Google Cloud Storage, converted without TensorFlow (`lowps.weights.gcs`);
* a vit_jax/big_vision ``.npz`` ViT checkpoint (local or ``gs://``), converted by timm's npz loader
  (`lowps.weights.vit_npz`) and cached.

Registry entries live in ``manifest.json`` next to this file: name, architecture, file, URLs,
sha256, size, license, source, recipe and known metrics. Embedded entries ship in the wheel;
the others are fetched into the cache by `lowps.weights.hub`.
"""
from __future__ import annotations

import builtins
import json
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .hub import ChecksumError, DownloadError, OfflineError, cache_dir, download_file, offline, sha256_file

if TYPE_CHECKING:
    from ..backbones import Backbone

__all__ = ["WeightsEntry", "list_weights", "get", "path", "download", "verify", "build_backbone", "url_cache_path",
           "load_head", "load_state_dict", "save_checkpoint", "default_for", "cache_dir",
           "DownloadError", "OfflineError", "ChecksumError", "WeightsError"]


class WeightsError(ValueError):
    """A weights file that does not fit the architecture, or an unknown weights name."""


@dataclass(frozen=True)
class WeightsEntry:
    """One named weights file in the registry."""

    name: str
    arch: str
    file: str
    sha256: str
    size: int
    kind: str = "backbone"  # "backbone" or "head"
    urls: tuple[str, ...] = ()
    embedded: bool = False
    default_for: str | None = None
    license: str = ""
    source: str = ""
    recipe: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 0
    base: str | None = None  # for heads: the backbone weights they were trained on

    def local_path(self) -> Path:
        """Where the file lives: inside the package if embedded, else in the cache."""
        base = Path(str(resources.files("lowps.weights") / "files")) if self.embedded else cache_dir() / "weights"
        p = base / self.file
        # a manifest entry must name a file inside its folder: never a path that climbs out ("../")
        if Path(self.file).is_absolute() or ".." in Path(self.file).parts or \
                not os.path.abspath(p).startswith(os.path.abspath(base) + os.sep):
            raise WeightsError(f"registry entry {self.name!r} names the file {self.file!r}, which is outside "
                               f"{base}; the manifest is invalid")
        return p


@lru_cache(maxsize=1)
def _manifest() -> dict[str, WeightsEntry]:
    raw = json.loads((resources.files("lowps.weights") / "manifest.json").read_text())
    out = {}
    for item in raw["weights"]:
        item = dict(item)
        item["urls"] = tuple(item.get("urls", ()))
        out[item["name"]] = WeightsEntry(**item)
    return out


def list_weights(arch: str | None = None, kind: str | None = None) -> builtins.list[WeightsEntry]:
    """Registry entries, optionally only those for one architecture or kind (``"backbone"``, ``"head"``)."""
    return [e for e in _manifest().values()
            if (arch is None or e.arch == arch) and (kind is None or e.kind == kind)]


def list(arch: str | None = None, kind: str | None = None) -> builtins.list[WeightsEntry]:  # noqa: A001
    """Deprecated alias of `list_weights` (the name shadowed the builtin ``list``); removed in 0.4."""
    warnings.warn("lowps.weights.list() is deprecated: use lowps.weights.list_weights()", DeprecationWarning,
                  stacklevel=2)
    return list_weights(arch, kind)


def get(name: str) -> WeightsEntry:
    """The registry entry called ``name``."""
    try:
        return _manifest()[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; registered: {', '.join(_manifest())}. "
                           "A local file path or an http(s) URL also works") from None


def default_for(arch: str) -> WeightsEntry | None:
    """The registry entry used when ``weights=None`` for ``arch``, if any."""
    return next((e for e in _manifest().values() if e.default_for == arch), None)


def path(name: str) -> Path:
    """Local path of a registry entry (it may not exist yet; `download` fetches it)."""
    return get(name).local_path()


def download(name: str, progress: bool = True) -> Path:
    """Make sure the registry entry ``name`` is available locally (verified); return its path."""
    e = get(name)
    p = e.local_path()
    if e.embedded:
        verify(name)
        return p
    return download_file(builtins.list(e.urls), p, e.sha256, size=e.size, progress=progress, desc=e.name)


def verify(name_or_path: str | os.PathLike[str], sha256: str | None = None) -> str:
    """Check a registry entry's (or a file's) sha256; return the digest. Raises on mismatch."""
    if isinstance(name_or_path, str) and name_or_path in _manifest():
        e = get(name_or_path)
        p, sha256 = e.local_path(), e.sha256
        if not p.is_file():
            raise WeightsError(f"{name_or_path} is not downloaded yet (expected at {p}); run "
                               f"`lowps weights download {name_or_path}`")
    else:
        p = Path(name_or_path)
    digest = sha256_file(p)
    if sha256 is not None and digest != sha256:
        raise ChecksumError(f"{p}: sha256 {digest} does not match the expected {sha256}; the file is corrupt "
                            "or another version: delete it and download it again")
    return digest


def url_cache_path(url: str) -> Path:
    """Where a user-given URL is cached: keyed by a hash of the *whole* URL (two URLs ending in the same
    file name never share a file), with the last path segment kept as a readable, sanitised name."""
    import hashlib
    import re

    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    last = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", last).lstrip(".") or "weights"
    return cache_dir() / "url" / key / name[:100]


def _resolve_file(spec: str | os.PathLike[str]) -> tuple[Path, WeightsEntry | None]:
    s = os.fspath(spec)
    if s in _manifest():
        e = get(s)
        return (download(s) if not e.embedded else e.local_path()), e
    if s.startswith(("http://", "https://")):
        return download_file(s, url_cache_path(s), None), None
    p = Path(s).expanduser()
    if p.is_file():
        return p, None
    raise WeightsError(f"weights {s!r} is neither a registered name ({', '.join(_manifest())}), an existing file, "
                       "nor an http(s) URL")


def load_state_dict(spec: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """Load weights from a name, path or URL: ``(state_dict, metadata, sha256)``.

    ``.safetensors`` is the format lowps writes; ``.pth``/``.pt`` are read only with
    ``torch.load(weights_only=True)`` (no pickled code runs).
    """
    p, entry = _resolve_file(spec)
    from_url = entry is None and os.fspath(spec).startswith(("http://", "https://"))
    try:
        return _load_file(p, entry)
    except WeightsError:
        if from_url:  # never keep a downloaded file that does not parse: the next call downloads again
            p.unlink(missing_ok=True)
        raise


def _load_file(p: Path, entry: WeightsEntry | None) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    suffix = p.suffix.lower()
    if suffix in (".pth", ".pt", ".bin"):
        digest = sha256_file(p)
        if entry is not None and digest != entry.sha256:
            raise ChecksumError(f"{p}: sha256 {digest} does not match the registry's {entry.sha256} for "
                                f"{entry.name}; delete the file and download it again")
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(f"cannot load {p} with torch.load(weights_only=True): {e}. lowps does not "
                               "unpickle arbitrary objects; convert the file to safetensors") from e
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightsError(f"{p} does not hold a flat state dict of tensors")
        return _finish_state(p, obj, {}, digest, entry)
    if suffix != ".safetensors" and not p.name.startswith("weights"):
        raise WeightsError(f"{p}: unknown weights format {p.suffix!r}; use .safetensors (or .pth/.pt)")
    return _load_safetensors(p, entry)  # .safetensors, or a URL without a usable name: safetensors or an error


def _load_safetensors(p: Path, entry: WeightsEntry | None, digest: str | None = None
                      ) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    from safetensors import safe_open

    digest = digest or sha256_file(p)
    if entry is not None and digest != entry.sha256:
        raise ChecksumError(f"{p}: sha256 {digest} does not match the registry's {entry.sha256} for "
                            f"{entry.name}; delete the file and download it again")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError: corrupt, truncated, empty, or an HTML page saved as weights
        raise WeightsError(f"{p} is not a valid safetensors file ({e}): it is corrupt, truncated or not "
                           "weights at all (e.g. an HTML page); delete it and download or export it "
                           "again") from e
    return _finish_state(p, state, meta, digest, entry)


def _finish_state(p: Path, state: dict[str, torch.Tensor], meta: dict[str, str], digest: str,
                  entry: WeightsEntry | None) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"{p}: tensors {bad[:5]} hold NaN or inf values; these weights would give NaN "
                           "distances. Use another checkpoint (a diverged training run writes such files)")
    if entry is not None:
        meta.setdefault("lowps_name", entry.name)
        meta.setdefault("arch", entry.arch)
    return state, meta, digest


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, **metadata: Any) -> str:
    """Write ``model``'s state dict as safetensors with string metadata; return the sha256."""
    from safetensors.torch import save_file

    from .._io import atomic_path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    with atomic_path(p) as tmp:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    return sha256_file(p)


def _strict_load(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    own = {k for k in module.state_dict() if not k.endswith("num_batches_tracked")}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(own - given), sorted(given - own)
    if missing or unexpected:
        def show(keys: builtins.list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        raise WeightsError(f"{what} does not match the architecture: missing keys [{show(missing)}], "
                           f"unexpected keys [{show(unexpected)}]")
    own_state = module.state_dict()
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own_state[k].shape)}"
           for k in sorted(own) if tuple(state[k].shape) != tuple(own_state[k].shape)]
    if bad:
        raise WeightsError(f"{what} has tensors of the wrong shape: " + "; ".join(bad[:8]))
    module.load_state_dict(state, strict=False)  # strictness checked above, with readable errors


def _num_classes(backbone: Backbone, state: dict[str, torch.Tensor], meta: dict[str, str]) -> int:
    if "num_classes" in meta:
        return int(meta["num_classes"])
    cfg: Any = getattr(backbone.model, "pretrained_cfg", None) or {}
    clf = cfg.get("classifier", "fc")
    w = state.get(f"{clf}.weight")
    return int(w.shape[0]) if w is not None else 0


def build_backbone(name: str, weights: str | os.PathLike[str] | None) -> Backbone:
    """Create backbone ``name`` with ``weights`` (see module docstring); records name and sha256 on it."""
    from ..backbones import check_backbone_name, create_backbone  # timm: imported only when a model is built

    arch = check_backbone_name(name)
    if weights is None:
        entry = default_for(arch)
        if entry is None:
            raise WeightsError(
                f"backbone {name!r} has no default weights in lowps. Pass weights='random' for a randomly "
                f"initialised network (the paper's baseline), weights='timm' for timm's pretrained weights, "
                f"a registry name ({', '.join(e.name for e in list_weights(arch)) or 'none registered for it'}), "
                "a file or a URL")
        weights = entry.name
    if weights == "random":
        bb = create_backbone(arch)
        bb.weights_name, bb.weights_sha256 = "random", None
        return bb
    if weights == "timm":
        import timm

        bb = create_backbone(arch)
        hub_constants: Any = None
        was_offline = None
        if offline():
            # timm's hub client would otherwise retry the network for over a minute before failing;
            # huggingface_hub reads HF_HUB_OFFLINE once at import, so switch its module flag for this call
            try:
                import huggingface_hub.constants

                hub_constants = huggingface_hub.constants
                was_offline, hub_constants.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE, True
            except ImportError:
                hub_constants = None
        try:
            pretrained = timm.create_model(arch, pretrained=True, num_classes=0)
        except Exception as e:  # huggingface_hub / urllib errors: no network, not cached
            hint = (" LOWPS_OFFLINE is set: place timm's files in the Hugging Face cache ($HF_HOME) on a machine "
                    "with network (timm.create_model(name, pretrained=True) there), or pass weights=<file>."
                    if offline() else " Check the network, or pass weights=<file>.")
            raise OfflineError(f"timm's pretrained weights for {arch!r} could not be loaded ({type(e).__name__}: "
                               f"{str(e)[:200]}).{hint}") from e
        finally:
            if hub_constants is not None:
                hub_constants.HF_HUB_OFFLINE = was_offline
        bb.model.load_state_dict(pretrained.state_dict())
        bb.weights_name, bb.weights_sha256 = "timm", None
        return bb
    spec = os.fspath(weights)
    if spec.startswith(("gs://", "kumar2022:")):  # the paper's checkpoints: fetched, converted, cached
        from .gcs import fetch_checkpoint

        state, meta, digest = load_state_dict(fetch_checkpoint(spec, arch))
        meta["lowps_name"] = spec
    elif spec.endswith(".npz") and Path(spec).expanduser().is_file():  # a vit_jax/big_vision ViT checkpoint
        from .vit_npz import convert_vit_npz

        src = Path(spec).expanduser()
        converted = cache_dir() / "npz" / f"{sha256_file(src)[:24]}-{arch}.safetensors"
        if not converted.is_file():
            converted.parent.mkdir(parents=True, exist_ok=True)
            convert_vit_npz(src, arch, converted)
        state, meta, digest = load_state_dict(converted)
        meta["lowps_name"] = spec
    else:
        state, meta, digest = load_state_dict(weights)
    file_arch = meta.get("arch")
    if file_arch and file_arch != arch:
        raise WeightsError(f"weights {os.fspath(weights)!r} are for {file_arch!r}, not for backbone {arch!r}; "
                           f"pass backbone={file_arch!r}")
    bb = create_backbone(arch)
    n = _num_classes(bb, state, meta)
    if n:
        bb = create_backbone(arch, num_classes=n)
    _strict_load(bb.model, state, f"weights {os.fspath(weights)!r}")
    bb.weights_name, bb.weights_sha256 = meta.get("lowps_name", os.fspath(weights)), digest
    return bb


def load_head(head: nn.Module, spec: str | os.PathLike[str], arch: str | None = None) -> None:
    """Load linear-head weights (``lin{l}.weight``; LPIPS's ``lin{l}.model.1.weight`` also accepted)."""
    state, meta, _ = load_state_dict(spec)
    if arch is not None and meta.get("arch") not in (None, arch):
        raise WeightsError(f"linear head {os.fspath(spec)!r} was trained on {meta['arch']!r}, not {arch!r}")
    state = {k.replace(".model.1.", ".").replace(".model.0.", "."): v for k, v in state.items()}
    _strict_load(head, state, f"linear head weights {os.fspath(spec)!r}")
    head.check()  # type: ignore[operator]
