"""All-pairs distances with features computed once per image (N + M forward passes, not N x M)."""
from __future__ import annotations

import os
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .functional import get_metric
from .inputs import ImageLike, InputError, to_tensor
from .metric import PerceptualDistance

__all__ = ["pairwise", "embed_all"]


def _as_images(imgs: torch.Tensor | Sequence[ImageLike]) -> torch.Tensor | list:
    if isinstance(imgs, torch.Tensor):
        return imgs if imgs.ndim == 4 else imgs.unsqueeze(0)
    return list(imgs)


@torch.no_grad()
def embed_all(metric: PerceptualDistance, imgs: torch.Tensor | Sequence[ImageLike], batch_size: int = 64,
              progress: bool = False, desc: str = "features") -> list[torch.Tensor | None]:
    """Embed a tensor batch or a list of images (paths, PIL, arrays) in chunks of ``batch_size``."""
    imgs = _as_images(imgs)
    n = len(imgs)
    if n == 0:
        raise InputError("no images given")
    parts: list[list[torch.Tensor | None]] = []
    for i in tqdm(range(0, n, batch_size), disable=not progress, desc=desc, leave=False):
        chunk = imgs[i:i + batch_size]
        if not isinstance(chunk, torch.Tensor):
            tensors = [to_tensor(x, metric.input_range) for x in chunk]
            shapes = {tuple(t.shape) for t in tensors}
            if len(shapes) > 1:
                names = [os.fspath(x) for x in chunk if isinstance(x, (str, os.PathLike))][:3]
                raise InputError(f"images differ in size {sorted(shapes)[:3]} (e.g. {names}); pairwise distances "
                                 "need one size: resize them first")
            chunk = torch.stack([t if t.ndim == 3 else t[0] for t in tensors]).to(metric._scale.device)
        parts.append(metric.embed(chunk))
    return [torch.cat([p[k] for p in parts]) if parts[0][k] is not None else None  # type: ignore[misc]
            for k in range(len(parts[0]))]


@torch.no_grad()
def pairwise(a: torch.Tensor | Sequence[ImageLike], b: torch.Tensor | Sequence[ImageLike] | None = None,
             metric: PerceptualDistance | None = None, batch_size: int = 64, chunk: int = 1024,
             progress: bool = False, **options: object) -> torch.Tensor:
    """The N x M distance matrix between images ``a`` and ``b`` (``b=None``: ``a`` against itself).

    Every image goes through the backbone once; distances are then computed from the cached
    features ``chunk`` pairs at a time, which bounds memory. ``metric`` (or the options of
    :func:`lowps.distance`) selects the metric. No gradients flow (use the module for losses).
    """
    m = metric if metric is not None else get_metric(**options)  # type: ignore[arg-type]
    fa = embed_all(m, a, batch_size, progress, "features a")
    fb = fa if b is None else embed_all(m, b, batch_size, progress, "features b")
    n = next(f for f in fa if f is not None).shape[0]
    k = next(f for f in fb if f is not None).shape[0]
    out = torch.empty(n, k, dtype=torch.float64 if m._scale.dtype == torch.float64 else torch.float32)
    flat_i = torch.arange(n).repeat_interleave(k)
    flat_j = torch.arange(k).repeat(n)
    total = n * k
    for s in tqdm(range(0, total, chunk), disable=not progress, desc="pairs", leave=False):
        i, j = flat_i[s:s + chunk], flat_j[s:s + chunk]
        f0 = [f[i.to(f.device)] if f is not None else None for f in fa]
        f1 = [f[j.to(f.device)] if f is not None else None for f in fb]
        out.view(-1)[s:s + chunk] = m.distance_features(f0, f1).to(out.dtype).cpu()
    return out
