"""Human-judgement sets beyond BAPPS: readers that validate a layout up front and name the bad file/row.

Two kinds of record, whatever the source:

* `Triplet` (2AFC): a reference, two distorted versions ``p0``/``p1`` and ``h``, the fraction
  of judges who found ``p1`` closer to the reference (BAPPS's convention). Readers: a generic CSV
  (`read_2afc_csv`) and DreamSim's NIGHTS (`read_nights`).
* `Rated` (full-reference MOS): a reference, a distorted image and its subjective score.
  Readers: a generic CSV (`read_mos_csv`), TID2013 (`read_tid2013`), KADID-10k
  (`read_kadid10k`) and PIPAL's training release (`read_pipal`).

Every reader checks, before anything is scored: the score file's columns, each referenced image
exists as a regular file (no FIFOs/devices, which would hang), values are finite and in range, no
row appears twice, and the images of one row have one size (read from the file headers). Problems
raise `JudgementLayoutError` naming the file and row. Layouts and licences: docs/benchmarks.md.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..inputs import InputError, load_image, regular_file

__all__ = ["Triplet", "Rated", "JudgementLayoutError", "read_2afc_csv", "read_nights", "read_mos_csv",
           "read_tid2013", "read_kadid10k", "read_pipal", "ImageTuples", "READERS", "MOS_DIRECTION"]


class JudgementLayoutError(ValueError):
    """A judgement set that does not have its documented layout; the message names the file and row."""


@dataclass(frozen=True)
class Triplet:
    ref: Path
    p0: Path
    p1: Path
    h: float  # fraction of judges who found p1 closer to ref
    category: str = "all"
    where: str = ""  # "file:row" for error messages


@dataclass(frozen=True)
class Rated:
    ref: Path
    dist: Path
    score: float  # MOS (or DMOS, see MOS_DIRECTION)
    category: str = "all"
    where: str = ""


#: Whether each dataset's subjective score rises with quality (MOS) or falls (DMOS).
MOS_DIRECTION = {"tid2013": True, "kadid10k": True, "pipal": True}


def _is_hidden(p: Path) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in p.parts)


def _regular(path: Path, where: str) -> Path:
    return regular_file(path, JudgementLayoutError, "image", where)


def _score_file(path: Path) -> Path:
    return regular_file(path, JudgementLayoutError, "score file")


def _image_size(path: Path, where: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
    except Exception as e:
        raise JudgementLayoutError(f"{where}: cannot read image {path}: {e}") from e
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)  # EXIF rotations swap the displayed sides


def _check_sizes(paths: Sequence[Path], where: str) -> None:
    sizes = [_image_size(p, where) for p in paths]
    if len(set(sizes)) > 1:
        desc = ", ".join(f"{p.name} {h}x{w}" for p, (h, w) in zip(paths, sizes))
        raise JudgementLayoutError(f"{where}: the images of one row differ in size ({desc}); distances need "
                                   "one size per row: crop or resize them in the dataset")


def _float(value: str, where: str, column: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise JudgementLayoutError(f"{where}: column {column!r} is {value!r}, not a number") from None
    if not np.isfinite(v):
        raise JudgementLayoutError(f"{where}: column {column!r} is {value!r}; it must be finite")
    return v


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[dict[str, str]], list[str]]:
    path = _score_file(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise JudgementLayoutError(f"cannot read {path}: {e}") from e
    missing = [c for c in required if c not in header]
    if missing:
        raise JudgementLayoutError(f"{path}: missing column(s) {missing}; the header must have {list(required)} "
                                   f"(found {header})")
    if not rows:
        raise JudgementLayoutError(f"{path}: no rows")
    return rows, header


def _resolve(base: Path, rel: str, where: str, column: str) -> Path:
    if not rel:
        raise JudgementLayoutError(f"{where}: column {column!r} is empty")
    p = Path(rel)
    return _regular(p if p.is_absolute() else base / p, where)


def _no_duplicates(keys: list[tuple], wheres: list[str]) -> None:
    seen: dict[tuple, str] = {}
    for k, w in zip(keys, wheres):
        if k in seen:
            raise JudgementLayoutError(f"{w}: duplicate of {seen[k]} (same images); remove one of the rows")
        seen[k] = w


def _finish_triplets(items: list[Triplet], check_sizes: bool) -> list[Triplet]:
    _no_duplicates([(t.ref, t.p0, t.p1) for t in items], [t.where for t in items])
    if check_sizes:
        for t in items:
            _check_sizes([t.ref, t.p0, t.p1], t.where)
    return items


def _finish_rated(items: list[Rated], check_sizes: bool) -> list[Rated]:
    if not items:
        raise JudgementLayoutError("no rated images found")
    _no_duplicates([(r.ref, r.dist) for r in items], [r.where for r in items])
    if check_sizes:
        for r in items:
            _check_sizes([r.ref, r.dist], r.where)
    return items


# -- 2AFC ---------------------------------------------------------------------------------------

def read_2afc_csv(path: str | os.PathLike[str], check_sizes: bool = True) -> list[Triplet]:
    """A generic 2AFC CSV: header ``ref,p0,p1,h`` (+ optional ``category``), paths relative to the CSV.

    ``h`` in [0, 1] is the fraction of judges who found ``p1`` closer to ``ref`` (BAPPS's convention).
    """
    path = Path(path)
    rows, header = _read_csv(path, ["ref", "p0", "p1", "h"])
    base, items = path.parent, []
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"{path}:{i}"
        h = _float(row["h"], where, "h")
        if not 0 <= h <= 1:
            raise JudgementLayoutError(f"{where}: h = {h} is outside [0, 1] (the fraction of judges who found p1 "
                                       "closer to ref)")
        items.append(Triplet(_resolve(base, row["ref"], where, "ref"), _resolve(base, row["p0"], where, "p0"),
                             _resolve(base, row["p1"], where, "p1"), h,
                             (row.get("category") or "all") if "category" in header else "all", where))
    return _finish_triplets(items, check_sizes)


def read_nights(root: str | os.PathLike[str], split: str = "test", min_votes: int = 6,
                check_sizes: bool = True) -> list[Triplet]:
    """DreamSim's NIGHTS (Fu et al. 2023) as released: ``root/data.csv`` plus the image folders.

    ``data.csv`` columns used: ``ref_path``, ``left_path``, ``right_path`` (relative to ``root``),
    ``left_vote``, ``right_vote``, ``votes`` and ``split`` (``train``/``val``/``test``). ``p0`` is the
    left image, ``p1`` the right one, and ``h = right_vote / (left_vote + right_vote)`` (equal to
    ``right_vote`` where the votes are stored as fractions). As in DreamSim's evaluation, only
    triplets with ``votes >= min_votes`` (6: the unanimous ones) are kept; ``category`` is the
    ``is_imagenet`` flag when present (``imagenet``/``non_imagenet``).
    """
    root = Path(root)
    if (root / "nights" / "data.csv").is_file() and not (root / "data.csv").exists():
        root = root / "nights"
    path = root / "data.csv"
    rows, header = _read_csv(path, ["ref_path", "left_path", "right_path", "right_vote", "split"])
    items = []
    splits = sorted({r["split"] for r in rows})
    if split not in splits:
        raise JudgementLayoutError(f"{path}: no rows with split {split!r}; splits present: {splits}")
    for i, row in enumerate(rows, start=2):
        if row["split"] != split:
            continue
        where = f"{path}:{i}"
        if "votes" in header and _float(row["votes"], where, "votes") < min_votes:
            continue
        right = _float(row["right_vote"], where, "right_vote")
        left = _float(row["left_vote"], where, "left_vote") if "left_vote" in header else 1 - right
        if right < 0 or left < 0 or left + right <= 0:
            raise JudgementLayoutError(f"{where}: left_vote={left}, right_vote={right} must be >= 0, not both 0")
        h = right / (left + right)
        cat = "all"
        if "is_imagenet" in header:
            cat = "imagenet" if row["is_imagenet"].lower() in ("true", "1") else "non_imagenet"
        items.append(Triplet(_resolve(root, row["ref_path"], where, "ref_path"),
                             _resolve(root, row["left_path"], where, "left_path"),
                             _resolve(root, row["right_path"], where, "right_path"), h, cat, where))
    if not items:
        raise JudgementLayoutError(f"{path}: no {split} triplets with votes >= {min_votes}")
    return _finish_triplets(items, check_sizes)


# -- MOS ----------------------------------------------------------------------------------------

def read_mos_csv(path: str | os.PathLike[str], check_sizes: bool = True) -> list[Rated]:
    """A generic full-reference CSV: header ``ref,dist,mos`` (+ optional ``category``), paths relative
    to the CSV's folder. Whether ``mos`` rises with quality is the caller's flag (MOS vs DMOS)."""
    path = Path(path)
    rows, header = _read_csv(path, ["ref", "dist", "mos"])
    base, items = path.parent, []
    for i, row in enumerate(rows, start=2):
        where = f"{path}:{i}"
        items.append(Rated(_resolve(base, row["ref"], where, "ref"), _resolve(base, row["dist"], where, "dist"),
                           _float(row["mos"], where, "mos"),
                           (row.get("category") or "all") if "category" in header else "all", where))
    return _finish_rated(items, check_sizes)


def _find_ci(folder: Path, name: str, where: str) -> Path:
    """``folder/name`` matched case-insensitively (TID2013 mixes ``I01.BMP`` and ``i25.bmp``)."""
    p = folder / name
    if p.exists():
        return _regular(p, where)
    if not hasattr(_find_ci, "_cache"):
        _find_ci._cache = {}  # type: ignore[attr-defined]
    cache = _find_ci._cache  # type: ignore[attr-defined]
    key = str(folder)
    if key not in cache:
        cache[key] = {f.name.lower(): f for f in folder.iterdir()} if folder.is_dir() else {}
    hit = cache[key].get(name.lower())
    if hit is None:
        raise JudgementLayoutError(f"{where}: image {p} does not exist")
    return _regular(hit, where)


def read_tid2013(root: str | os.PathLike[str], check_sizes: bool = True) -> list[Rated]:
    """TID2013 (Ponomarenko et al. 2015) as released: ``mos_with_names.txt`` (``MOS name`` per line),
    ``reference_images/I01.BMP``..``I25.BMP`` and ``distorted_images/iRR_TT_L.bmp`` (reference RR,
    distortion type TT of 24, level L of 5). MOS in [0, 9], higher = better; category = type."""
    root = Path(root)
    if (root / "tid2013").is_dir() and not (root / "mos_with_names.txt").exists():
        root = root / "tid2013"
    path = _score_file(root / "mos_with_names.txt")
    items = []
    for i, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        parts = line.split()
        if len(parts) != 2:
            raise JudgementLayoutError(f"{where}: expected 'MOS filename', got {line!r}")
        mos, name = _float(parts[0], where, "MOS"), parts[1]
        stem = name.rsplit(".", 1)[0].split("_")
        if len(stem) != 3 or not stem[0][1:].isdigit():
            raise JudgementLayoutError(f"{where}: {name!r} is not named iRR_TT_L.bmp")
        if not 0 <= mos <= 9:
            raise JudgementLayoutError(f"{where}: MOS {mos} is outside TID2013's [0, 9]")
        ref = _find_ci(root / "reference_images", f"I{stem[0][1:]}.BMP", where)
        items.append(Rated(ref, _find_ci(root / "distorted_images", name, where), mos, f"type{stem[1]}", where))
    return _finish_rated(items, check_sizes)


def read_kadid10k(root: str | os.PathLike[str], check_sizes: bool = True) -> list[Rated]:
    """KADID-10k (Lin et al. 2019) as released: ``dmos.csv`` (``dist_img,ref_img,dmos,var``) and
    ``images/I01.png``, ``images/I01_TT_LL.png``. Despite its name, the score (1-5) rises with quality;
    category = distortion type TT of 25."""
    root = Path(root)
    if (root / "kadid10k").is_dir() and not (root / "dmos.csv").exists():
        root = root / "kadid10k"
    path = root / "dmos.csv"
    rows, _ = _read_csv(path, ["dist_img", "ref_img", "dmos"])
    items = []
    for i, row in enumerate(rows, start=2):
        where = f"{path}:{i}"
        score = _float(row["dmos"], where, "dmos")
        if not 1 <= score <= 5:
            raise JudgementLayoutError(f"{where}: dmos {score} is outside KADID-10k's [1, 5]")
        parts = row["dist_img"].rsplit(".", 1)[0].split("_")
        cat = f"type{parts[1]}" if len(parts) == 3 else "all"
        items.append(Rated(_resolve(root / "images", row["ref_img"], where, "ref_img"),
                           _resolve(root / "images", row["dist_img"], where, "dist_img"), score, cat, where))
    return _finish_rated(items, check_sizes)


def read_pipal(root: str | os.PathLike[str], check_sizes: bool = True) -> list[Rated]:
    """PIPAL's public training set (Jinjin et al. 2020): ``Train_Ref/A0001.bmp``,
    ``Train_Dist/A0001_TT_KK.bmp`` and ``Train_Label/A0001.txt`` with ``A0001_TT_KK.bmp,ELO`` lines
    (Elo score, higher = better); category = distortion group TT."""
    root = Path(root)
    labels = root / "Train_Label"
    if not labels.is_dir():
        raise JudgementLayoutError(f"{labels} is missing: expected Train_Ref/, Train_Dist/, Train_Label/ under {root}")
    items = []
    files = sorted(p for p in labels.iterdir() if p.suffix.lower() == ".txt" and not _is_hidden(p))
    if not files:
        raise JudgementLayoutError(f"{labels}: no label files")
    for lf in files:
        _score_file(lf)
        ref = _regular(root / "Train_Ref" / f"{lf.stem}.bmp", f"{lf}")
        for i, line in enumerate(lf.read_text(encoding="utf-8-sig", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{lf}:{i}"
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2:
                raise JudgementLayoutError(f"{where}: expected 'NAME.bmp,ELO', got {line!r}")
            name, score = parts[0], _float(parts[1], where, "ELO")
            if not name.startswith(lf.stem + "_"):
                raise JudgementLayoutError(f"{where}: {name} does not belong to reference {lf.stem}")
            group = name.rsplit(".", 1)[0].split("_")
            items.append(Rated(ref, _resolve(root / "Train_Dist", name, where, "name"), score,
                               f"type{group[1]}" if len(group) == 3 else "all", where))
    return _finish_rated(items, check_sizes)


#: Dataset name -> (kind, reader). ``2afc`` and ``mos`` take a CSV, the others a root folder.
READERS: dict[str, tuple[str, Callable[..., list]]] = {
    "2afc": ("2afc", read_2afc_csv), "nights": ("2afc", read_nights), "mos": ("mos", read_mos_csv),
    "tid2013": ("mos", read_tid2013), "kadid10k": ("mos", read_kadid10k), "pipal": ("mos", read_pipal)}


#: How `ImageTuples` resizes: ``bilinear`` (torch, antialiased) or ``lanczos`` (Pillow: Lanczos when
#: shrinking, bicubic when enlarging, as the material-similarity set's reference scores were made).
RESIZE_FILTERS = ("bilinear", "lanczos")


class ImageTuples(Dataset):
    """Load the images of each record as [0, 1] tensors: ``(images..., value, index)``.

    ``resize``: scale every image so its shorter side is ``resize`` px, with ``resize_filter``
    (`RESIZE_FILTERS`); ``None`` keeps the native size (the default; see docs/benchmarks.md for what
    each choice means).
    """

    def __init__(self, records: Sequence[Triplet | Rated], resize: int | None = None,
                 resize_filter: str = "bilinear") -> None:
        if resize is not None and resize < 1:
            raise ValueError(f"resize must be a positive side length, got {resize}")
        if resize_filter not in RESIZE_FILTERS:
            raise ValueError(f"unknown resize_filter {resize_filter!r}; choose one of {', '.join(RESIZE_FILTERS)}")
        self.records, self.resize, self.resize_filter = list(records), resize, resize_filter

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, p: Path, where: str) -> torch.Tensor:
        if self.resize is not None and self.resize_filter == "lanczos":
            return self._load_pil(p, where)
        try:
            x = load_image(p)
        except InputError as e:
            raise JudgementLayoutError(f"{where}: {e}") from e
        if self.resize is not None:
            h, w = x.shape[-2:]
            s = self.resize / min(h, w)
            size = (max(1, round(h * s)), max(1, round(w * s)))
            if size != (h, w):
                x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
                x = x.clamp_(0, 1)
        return x

    def _load_pil(self, p: Path, where: str) -> torch.Tensor:
        from PIL import Image, ImageOps

        from ..inputs import pil_to_tensor

        assert self.resize is not None
        try:
            with Image.open(p) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                w, h = im.size
                s = self.resize / min(h, w)
                size = (max(1, round(w * s)), max(1, round(h * s)))
                if size != (w, h):
                    im = im.resize(size, Image.Resampling.LANCZOS if s < 1 else Image.Resampling.BICUBIC)
                return pil_to_tensor(im)
        except OSError as e:
            raise JudgementLayoutError(f"{where}: cannot read image {p}: {e}") from e

    def __getitem__(self, i: int) -> tuple:
        r = self.records[i]
        if isinstance(r, Triplet):
            return (self._load(r.ref, r.where), self._load(r.p0, r.where), self._load(r.p1, r.where), r.h, i)
        return (self._load(r.ref, r.where), self._load(r.dist, r.where), r.score, i)
