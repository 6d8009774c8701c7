"""Perceptual sanity check: does distance grow with distortion severity on real images?

For ``n`` natural patches (48x48 centre crops) and five severities of each distortion, compute the
distance between the clean crop and its distorted version, then the Spearman correlation between
severity and distance. Two figures per distortion:

* ``within``: the mean over patches of the per-patch Spearman correlation across the 5 severities
  (does the metric rank severities correctly for one image?); the headline number;
* ``pooled``: one Spearman correlation over all ``n x 5`` (severity, distance) points (also asks
  that distances be comparable across images).

No human data is involved: this checks monotonicity only and is no substitute for BAPPS scores.
"""
from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .inputs import pil_to_tensor

__all__ = ["DISTORTIONS", "distort_batch", "sanity_table", "format_sanity"]

CROP = 48
DISTORTIONS: dict[str, list[float]] = {
    "blur": [0.5, 1.0, 1.5, 2.0, 3.0],  # Gaussian sigma, px
    "noise": [0.02, 0.05, 0.1, 0.15, 0.2],  # Gaussian std on [0, 1]
    "jpeg": [80, 60, 40, 20, 10],  # JPEG quality (lower = more severe)
    "contrast": [0.9, 0.75, 0.6, 0.45, 0.3],  # blend factor towards the mean grey (lower = more severe)
    "shift": [1, 2, 3, 4, 5],  # horizontal translation, px
}


def _crop(x: torch.Tensor, dx: int = 0) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - CROP) // 2, (w - CROP) // 2 - 4
    return x[..., top:top + CROP, left + dx:left + dx + CROP]


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k, groups=3)
    return F.conv2d(x, k.transpose(2, 3), groups=3)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    out = []
    for img in x:
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            out.append(pil_to_tensor(im))  # the one decoder lowps uses for every image
    return torch.stack(out)


def distort_batch(x: torch.Tensor, kind: str, severity: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean crop, distorted crop) of full 64x64 patches ``x`` in [0, 1]."""
    if kind == "shift":
        return _crop(x), _crop(x, int(severity))
    if kind == "blur":
        y = _gaussian_blur(x, float(severity))
    elif kind == "noise":
        g = torch.Generator().manual_seed(seed)
        y = (x + severity * torch.randn(x.shape, generator=g)).clamp(0, 1)
    elif kind == "jpeg":
        y = _jpeg(x, int(severity))
    elif kind == "contrast":
        mean = x.mean((1, 2, 3), keepdim=True)
        y = mean + severity * (x - mean)
    else:
        raise ValueError(f"unknown distortion {kind!r}; choose from {', '.join(DISTORTIONS)}")
    return _crop(x), _crop(y)


def _spearman_rows(sev: np.ndarray, d: np.ndarray) -> float:
    from scipy.stats import spearmanr

    # a constant row has no rank order: it counts as undefined, not as agreement
    vals = [spearmanr(sev, row).statistic for row in d if np.ptp(row) > 0]
    return float(np.mean(vals)) if vals else float("nan")


@torch.no_grad()
def sanity_table(metrics: Mapping[str, torch.nn.Module], patches: torch.Tensor, batch_size: int = 100,
                 seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """``{metric: {distortion: {"within": rho, "pooled": rho}}}`` on uint8 or float patches (N, 3, 64, 64)."""
    from scipy.stats import spearmanr

    x = patches.float() / 255 if patches.dtype == torch.uint8 else patches
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in metrics}
    for kind, severities in DISTORTIONS.items():
        pairs = [distort_batch(x, kind, s, seed=seed + k) for k, s in enumerate(severities)]
        for name, m in metrics.items():
            d = np.stack([torch.cat([m(a[i:i + batch_size], b[i:i + batch_size])
                                     for i in range(0, len(a), batch_size)]).double().numpy()
                          for a, b in pairs], axis=1)  # (N, 5)
            rank = np.arange(len(severities), dtype=float)  # severities are listed mild -> severe
            pooled = spearmanr(np.tile(rank, len(d)), d.reshape(-1)).statistic if np.ptp(d) > 0 else float("nan")
            out[name][kind] = {"within": _spearman_rows(rank, d), "pooled": float(pooled)}
    return out


def format_sanity(table: dict[str, dict[str, dict[str, float]]]) -> str:
    kinds = list(DISTORTIONS)
    lines = ["| metric | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, row in table.items():
        cells = [f"{row[k]['within']:.3f} ({row[k]['pooled']:.3f})" for k in kinds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
