"""Scores against human judgements (Zhang et al. 2018; Kumar et al. 2022, eq. 2 and app. J).

All functions take 1-D arrays (numpy, lists or tensors) and return floats in [0, 1] (multiply by
100 for the paper's "PS"). They equal the ``lpips`` package's scoring on the same arrays, ties
included (tested).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["score_2afc", "score_jnd", "voc_ap", "rank_correlation", "margins", "layerwise_2afc",
           "DISTORTION_SETS", "REAL_ALGORITHM_SETS", "VAL_CATEGORIES", "summarize"]

DISTORTION_SETS = ("traditional", "cnn")
REAL_ALGORITHM_SETS = ("superres", "deblur", "color", "frameinterp")
VAL_CATEGORIES = DISTORTION_SETS + REAL_ALGORITHM_SETS


def _vec(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def score_2afc(d0: Any, d1: Any, judge: Any) -> float:
    """2AFC agreement: mean of ``(d0<d1)(1-h) + (d1<d0) h + (d0==d1)/2``.

    ``judge`` h in [0, 1] is the fraction of raters who found ``p1`` closer to the reference.
    """
    a, b, h = _vec(d0, "d0"), _vec(d1, "d1"), _vec(judge, "judge")
    if not (len(a) == len(b) == len(h)) or len(a) == 0:
        raise ValueError(f"d0, d1 and judge must be non-empty and equally long, got {len(a)}, {len(b)}, {len(h)}")
    if h.min() < 0 or h.max() > 1:
        raise ValueError("judge values must lie in [0, 1] (fraction of raters choosing p1)")
    return float(np.mean((a < b) * (1 - h) + (b < a) * h + (a == b) * 0.5))


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC average precision: area under the monotone (non-increasing) precision envelope."""
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]  # envelope: max precision at any recall >= r
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def score_jnd(d: Any, same: Any) -> float:
    """JND score: VOC AP of detecting "same" pairs by ascending distance.

    ``same`` in [0, 1] is the fraction of raters who saw no difference. Ordering of tied
    distances follows ``np.argsort``'s default, as the reference implementation does.
    """
    dist, s = _vec(d, "d"), _vec(same, "same")
    if len(dist) != len(s) or len(dist) == 0:
        raise ValueError(f"d and same must be non-empty and equally long, got {len(dist)} and {len(s)}")
    order = np.argsort(dist)
    s = s[order]
    tp = np.cumsum(s)
    fp = np.cumsum(1 - s)
    fn = s.sum() - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return voc_ap(recall, precision)


def rank_correlation(d0: Any, d1: Any, judge: Any) -> float:
    """Spearman correlation between the margin ``d1 - d0`` and the judge (paper app. J)."""
    from scipy.stats import spearmanr

    a, b, h = _vec(d0, "d0"), _vec(d1, "d1"), _vec(judge, "judge")
    return float(spearmanr(b - a, h).statistic)


def margins(d0: Any, d1: Any, judge: Any) -> dict[str, float]:
    """Distances to the farther and nearer patch on unanimous triplets (h in {0, 1}; paper sec. 8.2)."""
    a, b, h = _vec(d0, "d0"), _vec(d1, "d1"), _vec(judge, "judge")
    keep = (h == 0) | (h == 1)
    if not keep.any():
        return {"n": 0, "farther": float("nan"), "nearer": float("nan"), "margin": float("nan")}
    farther = np.where(h[keep] == 1, a[keep], b[keep])  # h=1: p1 is nearer, so p0 is farther
    nearer = np.where(h[keep] == 1, b[keep], a[keep])
    return {"n": int(keep.sum()), "farther": float(farther.mean()), "nearer": float(nearer.mean()),
            "margin": float((farther - nearer).mean())}


def layerwise_2afc(d0_layers: Mapping[str, Any], d1_layers: Mapping[str, Any], judge: Any) -> dict[str, float]:
    """2AFC score of each layer's distance alone (the paper's layer-wise PS)."""
    return {name: score_2afc(d0_layers[name], d1_layers[name], judge) for name in d0_layers}


def summarize(per_category: Mapping[str, float]) -> dict[str, float]:
    """Means over the two distortion sets, the four real-algorithm sets and all six.

    A group's mean is reported only when every category of the group was scored.
    """
    out = {}
    for label, group in [("distortions", DISTORTION_SETS), ("real_algorithms", REAL_ALGORITHM_SETS),
                         ("all", VAL_CATEGORIES)]:
        if all(c in per_category for c in group):
            out[label] = float(np.mean([per_category[c] for c in group]))
    return out
