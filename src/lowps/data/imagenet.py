"""Classification data for training backbones, decoded once into memory as uint8 tensors.

Specs (``--data`` of ``lowps train backbone``):

* ``tiny-imagenet:DIR``: the repacked Tiny ImageNet (``train-*.zip``, ``val.zip``, ``wnids.txt``;
  members ``train/<wnid>/<file>.JPEG`` and ``val/<wnid>/<file>.JPEG``), read from the zips directly.
* ``imagenet64:DIR``: Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017): ``train_data_batch_*.npz``
  and ``val_data.npz`` with ``data`` (N, 12288) as R, G, B planes and ``labels`` 1..1000.
* ``folder:DIR``: ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` image trees (resized to the
  training size with a centre crop).
"""
from __future__ import annotations

import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..inputs import IMAGE_EXTENSIONS as _IMG_EXT  # one list for all of lowps

__all__ = ["ClassificationData", "DataError", "load_split", "parse_spec"]



class DataError(ValueError):
    """Missing, unreadable or wrongly laid out training data; the message names the file."""


@dataclass
class ClassificationData:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return int(self.labels.numel())


def parse_spec(spec: str) -> tuple[str, Path]:
    kinds = ("tiny-imagenet", "imagenet64", "folder")
    kind, sep, root = spec.partition(":")
    if not sep or kind not in kinds:
        raise DataError(f"data spec {spec!r} must be one of {', '.join(k + ':DIR' for k in kinds)}")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise DataError(f"data directory not found: {p}")
    return kind, p


def _decode(data: bytes, where: str, size: int | None = None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")  # ~1 in 300 Tiny ImageNet images is greyscale
            if size is not None and im.size != (size, size):
                w, h = im.size
                s = size / min(w, h)
                im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
                w, h = im.size
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
            return np.asarray(im)
    except Exception as e:
        raise DataError(f"cannot decode image {where}: {e}") from e


def _stack(arrays: list[np.ndarray], where: str) -> torch.Tensor:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"images in {where} have different sizes {sorted(shapes)[:4]}; use folder: data, which resizes")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _zip_members(z: Path, split: str, index: dict[str, int], wnids_file: Path) -> list[tuple[Path, str, int]]:
    """``(archive, member, label)`` of every image in a Tiny ImageNet zip laid out as ``split/<wnid>/<file>``."""
    try:
        with zipfile.ZipFile(z) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(_IMG_EXT)]
    except zipfile.BadZipFile as e:
        raise DataError(f"{z} is not a readable zip archive: {e}") from e
    items = []
    for n in names:
        parts = n.split("/")
        if len(parts) != 3 or parts[0] != split:
            raise DataError(f"{z}: member {n!r} is not laid out as {split}/<wnid>/<file>")
        if parts[1] not in index:
            raise DataError(f"{z}: member {n!r} has class {parts[1]!r}, which is not in {wnids_file}")
        items.append((z, n, index[parts[1]]))
    return items


def _first_per_class(items: list[tuple[Path, str, int]], limit: int) -> list[tuple[Path, str, int]]:
    """The first ``limit`` items of each label, in member-name order (the same subset on every machine)."""
    seen: dict[int, int] = {}
    kept = []
    for it in sorted(items, key=lambda t: t[1]):
        if seen.get(it[2], 0) < limit:
            seen[it[2]] = seen.get(it[2], 0) + 1
            kept.append(it)
    return kept


def _decode_members(z: Path, names: list[str]) -> list[np.ndarray]:
    """The images ``names`` of archive ``z``, decoded in order."""
    out = []
    with zipfile.ZipFile(z) as zf:
        for n in names:
            try:
                data = zf.read(n)
            except (zipfile.BadZipFile, OSError, KeyError) as e:
                raise DataError(f"{z}: cannot read member {n}: {e}") from e
            out.append(_decode(data, f"{z}:{n}"))
    return out


def _tiny_imagenet(root: Path, split: str, limit_per_class: int | None) -> ClassificationData:
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise DataError(f"{wnids_file} is missing: a tiny-imagenet directory holds wnids.txt, train-*.zip and val.zip")
    wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    zips = sorted(root.glob("train-*.zip")) if split == "train" else [root / "val.zip"]
    if not zips or not all(z.is_file() for z in zips):
        raise DataError(f"no {'train-*.zip' if split == 'train' else 'val.zip'} in {root}")
    items = [it for z in zips for it in _zip_members(z, split, index, wnids_file)]
    if limit_per_class is not None:
        items = _first_per_class(items, limit_per_class)
    found = {lab for _, _, lab in items}
    if split == "train" and len(found) != len(wnids):
        missing = [wnids[i] for i in range(len(wnids)) if i not in found][:5]
        raise DataError(f"{root}: wnids.txt lists {len(wnids)} classes but the train archives hold {len(found)} "
                        f"(missing e.g. {missing})")

    with ThreadPoolExecutor(max_workers=min(4, len(zips))) as ex:  # PIL decoding releases the GIL
        decoded = list(ex.map(lambda z: _decode_members(z, [n for zz, n, _ in items if zz == z]), zips))
    arrays = [a for chunk in decoded for a in chunk]
    labels = [lab for z in zips for zz, _, lab in items if zz == z]
    return ClassificationData(_stack(arrays, str(root)), torch.tensor(labels, dtype=torch.int64), wnids,
                              f"tiny-imagenet:{root}")


def _imagenet64(root: Path, split: str) -> ClassificationData:
    files = sorted(root.glob("train_data_batch_*.npz")) if split == "train" else [root / "val_data.npz"]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"no {'train_data_batch_*.npz' if split == 'train' else 'val_data.npz'} in {root}")
    images, labels = [], []
    for f in files:
        try:
            with np.load(f) as npz:
                data, lab = npz["data"], npz["labels"]
        except Exception as e:
            raise DataError(f"cannot read {f}: {e} (expected keys 'data' and 'labels')") from e
        if data.ndim != 2 or data.shape[1] != 3 * 64 * 64 or data.dtype != np.uint8:
            raise DataError(f"{f}: 'data' must be uint8 (N, 12288), got {data.dtype} {data.shape}")
        lab = np.asarray(lab).astype(np.int64) - 1  # stored 1..1000
        if lab.min() < 0 or lab.max() > 999 or len(lab) != len(data):
            raise DataError(f"{f}: 'labels' must hold {len(data)} values in 1..1000")
        images.append(torch.from_numpy(data.reshape(-1, 3, 64, 64)))
        labels.append(torch.from_numpy(lab))
    return ClassificationData(torch.cat(images), torch.cat(labels), [str(i) for i in range(1000)],
                              f"imagenet64:{root}")


def _folder(root: Path, split: str, size: int) -> ClassificationData:
    d = root / split
    if not d.is_dir():
        raise DataError(f"{d} is missing: folder data needs {root}/train/<class>/ and {root}/val/<class>/")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) if (root / "train").is_dir() else []
    split_classes = sorted(p.name for p in d.iterdir() if p.is_dir())
    unknown = set(split_classes) - set(classes)
    if unknown:
        raise DataError(f"{d} has classes not in {root / 'train'}: {sorted(unknown)[:5]}")
    arrays, labels = [], []
    for c in split_classes:
        for f in sorted((d / c).iterdir()):
            if f.suffix.lower() in _IMG_EXT:
                arrays.append(_decode(f.read_bytes(), str(f), size))
                labels.append(classes.index(c))
    if not arrays:
        raise DataError(f"no images under {d}")
    return ClassificationData(_stack(arrays, str(d)), torch.tensor(labels), classes, f"folder:{root}")


def load_split(spec: str, split: str, image_size: int = 64,
               limit_per_class: int | None = None) -> ClassificationData:
    """Decode a whole split (``"train"`` or ``"val"``) of ``spec`` into memory."""
    kind, root = parse_spec(spec)
    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")
    if kind == "tiny-imagenet":
        return _tiny_imagenet(root, split, limit_per_class)
    if kind == "imagenet64":
        return _imagenet64(root, split)
    return _folder(root, split, image_size)
