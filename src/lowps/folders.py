"""Distances over image folders: same-named pairs in two folders (``lowps dirs``, a generated-vs-reference
report) and the image list of one folder (``lowps allpairs``). The CLI and the examples call these."""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .inputs import IMAGE_EXTENSIONS, InputError, load_image
from .metric import PerceptualDistance

__all__ = ["images_in", "readable_images", "distance_folders", "FolderDistances"]


def images_in(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly in ``folder`` (by extension, `lowps.inputs.IMAGE_EXTENSIONS`), sorted,
    hidden files left out."""
    p = Path(folder)
    if not p.is_dir():
        raise ValueError(f"not a directory: {p}")
    return sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))


#: Called with (path, error) for each unreadable image when skipping; the default warns.
OnSkip = Callable[[Path, Exception], None]


def _warn_skip(path: Path, e: Exception) -> None:
    warnings.warn(f"skipped {path}: {e}", RuntimeWarning, stacklevel=4)


def _load(path: Path, skip_bad: bool, skipped: list[str], on_skip: OnSkip | None) -> torch.Tensor | None:
    try:
        return load_image(path)
    except InputError as e:
        if not skip_bad:
            raise InputError(f"{e} (pass skip_bad=True to go on without unreadable images)") from e
        (on_skip or _warn_skip)(path, e)
        skipped.append(str(path))
        return None


def readable_images(files: list[Path], skip_bad: bool = False, skipped: list[str] | None = None,
                    on_skip: OnSkip | None = None) -> list[Path]:
    """``files`` that decode as images; an unreadable one is an `InputError` unless ``skip_bad``
    (then it is left out, reported to ``on_skip`` (default: a warning) and appended to ``skipped``)."""
    skipped = [] if skipped is None else skipped
    return [f for f in files if _load(f, skip_bad, skipped, on_skip) is not None]


@dataclass
class FolderDistances:
    """What `distance_folders` measured: ``rows`` of (file name, distance) in name order."""

    rows: list[tuple[str, float]] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)  # names in only one of the two folders
    skipped: list[str] = field(default_factory=list)  # unreadable files (skip_bad=True)

    @property
    def distances(self) -> torch.Tensor:
        return torch.tensor([d for _, d in self.rows], dtype=torch.float64)

    def summary(self) -> dict[str, float | int]:
        """Mean, median, worst distance and the count (a generated-vs-reference report)."""
        d = self.distances
        if not len(d):
            return {"n": 0}
        return {"n": len(d), "mean": float(d.mean()), "median": float(d.median()), "max": float(d.max())}


def distance_folders(dir0: str | os.PathLike[str], dir1: str | os.PathLike[str],
                     metric: PerceptualDistance | None = None, *, batch_size: int = 32, skip_bad: bool = False,
                     progress: bool = False, on_unpaired: Callable[[list[str]], None] | None = None,
                     on_skip: OnSkip | None = None) -> FolderDistances:
    """Distance between every pair of same-named images in ``dir0`` and ``dir1`` (Kumar et al. 2022 metric).

    ``metric``: default ``lowps.get_metric()`` (the shipped default). Pairs of equal size run in
    batches of ``batch_size`` under ``torch.inference_mode``; pairs whose sizes differ are an error
    naming the file. Names present in one folder only are reported in ``unpaired`` (and passed to
    ``on_unpaired`` before any work, e.g. to warn); no common name at all is an error. Unreadable
    images are an `InputError` unless ``skip_bad`` (see `readable_images`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if metric is None:
        from .functional import get_metric

        metric = get_metric()
    files0 = {f.name: f for f in images_in(dir0)}
    files1 = {f.name: f for f in images_in(dir1)}
    common = sorted(set(files0) & set(files1))
    if not common:
        raise ValueError(f"no file names in common between {dir0} and {dir1}")
    out = FolderDistances(unpaired=sorted(set(files0) ^ set(files1)))
    if out.unpaired and on_unpaired is not None:
        on_unpaired(out.unpaired)
    device = metric.device
    batch: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        with torch.inference_mode():
            d = metric(torch.stack([x for _, x, _ in batch]), torch.stack([y for _, _, y in batch]))
        out.rows.extend((name, float(v)) for (name, _, _), v in zip(batch, d))
        batch.clear()

    for name in tqdm(common, disable=not progress, desc="pairs"):
        x = _load(files0[name], skip_bad, out.skipped, on_skip)
        y = _load(files1[name], skip_bad, out.skipped, on_skip)
        if x is None or y is None:
            continue
        if x.shape != y.shape:
            raise ValueError(f"{name}: {tuple(x.shape[1:])} in {dir0} but {tuple(y.shape[1:])} in {dir1}; "
                             f"resize one of them (distances need equal sizes)")
        if batch and (x.shape != batch[0][1].shape or len(batch) == batch_size):
            flush()
        batch.append((name, x.to(device), y.to(device)))
    flush()
    return out
