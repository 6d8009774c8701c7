"""BAPPS (Zhang et al. 2018): readers for the 2AFC and JND layouts, and the dataset download.

Layout (``root`` is the ``dataset`` directory, or its parent)::

    2afc/{train/{traditional,cnn,mix}, val/{traditional,cnn,superres,deblur,color,frameinterp}}/
        {ref,p0,p1,judge}/NNNNNN.{png,npy}
    jnd/val/{traditional,cnn}/{p0,p1,same}/NNNNNN.{png,npy}

Files pair by sorted name; every ``judge``/``same`` ``.npy`` holds one float in [0, 1]. The layout is
validated when a set is opened: differing names or counts, missing folders and unreadable
``.npy`` files raise `BappsLayoutError` naming the file.
"""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..inputs import InputError, load_image, regular_file
from ..weights.hub import cache_dir, download_file

__all__ = ["TwoAFCSet", "JNDSet", "BappsLayoutError", "find_root", "list_categories", "download_bapps",
           "BAPPS_URL", "SUBSETS"]

BAPPS_URL = "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset"
SUBSETS = {"val": ["twoafc_val"], "train": ["twoafc_train"], "jnd": ["jnd"],
           "all": ["twoafc_train", "twoafc_val", "jnd"]}


class BappsLayoutError(ValueError):
    """A BAPPS tree that does not have the expected layout; the message names the file or folder."""


def find_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The BAPPS ``dataset`` directory: ``root`` (or ``root/dataset``), else the downloaded copy in the cache."""
    if root is None:
        p = cache_dir() / "bapps" / "dataset"
        if not p.is_dir():
            raise BappsLayoutError(f"no BAPPS root given and none downloaded at {p}; pass --root DIR or run "
                                   "`lowps-score --dataset bapps --download --subset val`")
        return p
    p = Path(root).expanduser()
    if (p / "dataset").is_dir() and not (p / "2afc").is_dir() and not (p / "jnd").is_dir():
        p = p / "dataset"
    if not p.is_dir():
        raise BappsLayoutError(f"BAPPS root {p} does not exist")
    return p


def list_categories(root: Path, mode: str = "2afc", split: str = "val") -> list[str]:
    """Categories present under ``root/mode/split`` (paper order first)."""
    from ..scoring import VAL_CATEGORIES

    d = root / mode / split
    if not d.is_dir():
        raise BappsLayoutError(f"{d} is missing: expected {mode}/{split}/<category>/ under {root}")
    found = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    order = [c for c in VAL_CATEGORIES + ("mix",) if c in found]
    return order + [c for c in found if c not in order]


def _listing(d: Path, ext: str) -> list[Path]:
    if not d.is_dir():
        raise BappsLayoutError(f"folder {d} is missing")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() == ext and not p.name.startswith("."))
    return [regular_file(p, BappsLayoutError, f"{ext} file") for p in files]


def _read_scalar(p: Path) -> float:
    try:
        a = np.load(p)
    except Exception as e:
        raise BappsLayoutError(f"cannot read {p}: {e}") from e
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.size != 1 or not np.isfinite(a[0]) or not 0 <= a[0] <= 1:
        raise BappsLayoutError(f"{p} must hold one value in [0, 1], got {a[:4]}")
    return float(a[0])


def _paired(base: Path, image_dirs: list[str], value_dir: str) -> tuple[list[list[Path]], list[Path]]:
    images = [_listing(base / d, ".png") for d in image_dirs]
    values = _listing(base / value_dir, ".npy")
    names = [[p.stem for p in lst] for lst in images] + [[p.stem for p in values]]
    for d, lst in zip(image_dirs + [value_dir], names):
        if len(lst) != len(names[0]):
            raise BappsLayoutError(f"{base}: {image_dirs[0]}/ has {len(names[0])} files but {d}/ has {len(lst)}")
    for d, lst in zip(image_dirs + [value_dir], names):
        for a, b in zip(names[0], lst):
            if a != b:
                raise BappsLayoutError(f"{base}: {image_dirs[0]}/{a} has no partner in {d}/ (found {b} there)")
    if not names[0]:
        raise BappsLayoutError(f"{base}: no files in {image_dirs[0]}/")
    return images, values


def _load(p: Path, size: int) -> torch.Tensor:
    try:
        x = load_image(p)
    except InputError as e:
        raise BappsLayoutError(str(e)) from e
    if x.shape[-2:] != (size, size):
        # The LPIPS loader resizes to 64 px as well; BAPPS patches are already 64x64.
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp_(0, 1)


class _BappsSet(Dataset):
    """One category of one BAPPS mode: image lists per folder plus one value per item."""

    mode: str = ""
    image_dirs: tuple[str, ...] = ()
    value_dir: str = ""

    def __init__(self, root: str | os.PathLike[str] | None, category: str, split: str = "val",
                 load_size: int = 64) -> None:
        self.root = find_root(root)
        self.category, self.split, self.load_size = category, split, load_size
        base = self.root / self.mode / split / category
        if not base.is_dir():
            raise BappsLayoutError(f"{base} is missing; categories here: "
                                   f"{', '.join(list_categories(self.root, self.mode, split))}")
        images, values = _paired(base, list(self.image_dirs), self.value_dir)
        for name, files in zip(self.image_dirs, images):
            setattr(self, name, files)
        setattr(self, self.value_dir, torch.tensor([_read_scalar(p) for p in values], dtype=torch.float64))

    def __len__(self) -> int:
        return len(getattr(self, self.image_dirs[0]))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        imgs = tuple(_load(getattr(self, d)[i], self.load_size) for d in self.image_dirs)
        return imgs + (getattr(self, self.value_dir)[i],)


class TwoAFCSet(_BappsSet):
    """One 2AFC category: items ``(ref, p0, p1, judge)`` with images in [0, 1], (3, 64, 64)."""

    mode, image_dirs, value_dir = "2afc", ("ref", "p0", "p1"), "judge"


class JNDSet(_BappsSet):
    """One JND category: items ``(p0, p1, same)``."""

    mode, image_dirs, value_dir = "jnd", ("p0", "p1"), "same"


def _safe_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    out = []
    root = dest.resolve()
    for m in tar.getmembers():
        target = (dest / m.name).resolve()
        if target == root and m.isdir():
            continue  # the "./" entry many tar tools write first
        if not str(target).startswith(str(root) + os.sep) or m.issym() or m.islnk():
            raise BappsLayoutError(f"archive member {m.name!r} would be written outside {dest}; refusing")
        out.append(m)
    return out


def download_bapps(subset: str = "val", base_url: str | None = None, progress: bool = True) -> Path:
    """Fetch and extract BAPPS archives into ``<cache>/bapps/dataset``; return that directory.

    Archives go through `lowps.weights.hub.download_file` (progress, resume, retries, atomic);
    BAPPS publishes no checksums, so each archive is verified by its length and by extracting it
    completely into a staging folder before anything moves into place. ``LOWPS_BAPPS_URL`` overrides
    the server (a mirror).
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    base_url = (base_url or os.environ.get("LOWPS_BAPPS_URL") or BAPPS_URL).rstrip("/")
    home = cache_dir() / "bapps"
    dataset = home / "dataset"
    for name in SUBSETS[subset]:
        marker = home / f".{name}.complete"
        if marker.is_file() and dataset.is_dir():
            continue
        archive = download_file(f"{base_url}/{name}.tar.gz", home / "archives" / f"{name}.tar.gz", None,
                                progress=progress, desc=f"BAPPS {name}")
        staging = home / f".staging-{name}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # tarfile's "data" filter: regular files and folders only (no FIFOs or devices), no
                # setuid/setgid bits, nothing outside the staging folder
                tar.extractall(staging, members=_safe_members(tar, staging), filter="data")
        except tarfile.FilterError as e:
            archive.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            raise BappsLayoutError(f"{name}.tar.gz holds a member that is not a plain file or folder ({e}); "
                                   "refusing to extract it. Is it really BAPPS?") from e
        except (tarfile.TarError, EOFError, OSError) as e:
            archive.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            raise BappsLayoutError(f"{name}.tar.gz is truncated or corrupt ({e}); it was removed, run the download "
                                   "again") from e
        top = staging / "dataset" if (staging / "dataset").is_dir() else staging
        moved = 0
        for mode in ("2afc", "jnd"):
            for split_dir in sorted((top / mode).glob("*")) if (top / mode).is_dir() else []:
                dest = dataset / mode / split_dir.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(split_dir, dest)
                moved += 1
        shutil.rmtree(staging, ignore_errors=True)
        if not moved:
            raise BappsLayoutError(f"{name}.tar.gz holds no 2afc/ or jnd/ folders; is it a BAPPS archive?")
        marker.write_text("ok\n")
        archive.unlink(missing_ok=True)  # the extracted tree is what is kept
    return dataset


class _Concat(Dataset):
    """Items of several BAPPS category sets in order, each as the set loads it (what was scored)."""

    def __init__(self, sets: list[_BappsSet]) -> None:
        self.sets = sets
        self.index = [(k, i) for k, ds in enumerate(sets) for i in range(len(ds))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, ...]:
        k, i = self.index[j]
        return self.sets[k][i]


def bapps_records(root: str | os.PathLike[str] | None, mode: str = "2afc", split: str = "val",
                  categories: list[str] | None = None) -> tuple[list, Dataset]:
    """Every item of the chosen BAPPS categories as judgement records (`Triplet` for 2AFC with
    ``h`` = the judge value; `Rated` for JND with ``score`` = the fraction who judged the pair the
    same, p0 as ``ref``), in category order, with a dataset that loads them as scoring does. Used by
    ``lowps-score --dataset bapps --report``."""
    from .judgements import Rated, Triplet

    base = find_root(root)
    cats = categories or list_categories(base, mode, split)
    sets: list[_BappsSet] = [TwoAFCSet(base, c, split) if mode == "2afc" else JNDSet(base, c, split) for c in cats]
    records: list = []
    for cat, ds in zip(cats, sets):
        if isinstance(ds, TwoAFCSet):
            records += [Triplet(r, a, b, float(h), f"{cat}", f"{mode}/{split}/{cat}/{r.stem}")
                        for r, a, b, h in zip(ds.ref, ds.p0, ds.p1, ds.judge.tolist())]  # type: ignore[attr-defined]
        else:
            records += [Rated(a, b, float(v), f"{cat}", f"{mode}/{split}/{cat}/{a.stem}")
                        for a, b, v in zip(ds.p0, ds.p1, ds.same.tolist())]  # type: ignore[attr-defined]
    return records, _Concat(sets)

