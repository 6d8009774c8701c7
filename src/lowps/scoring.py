"""Scores against human judgements (Zhang et al. 2018; Kumar et al. 2022, eq. 2 and app. J).

All functions take 1-D arrays (numpy, lists or tensors) and return floats in [0, 1] (multiply by
100 for the paper's "PS"). They equal the ``lpips`` package's scoring on the same arrays, ties
included (tested).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["score_2afc", "score_jnd", "voc_ap", "rank_correlation", "margins", "layerwise_2afc",
           "DISTORTION_SETS", "REAL_ALGORITHM_SETS", "VAL_CATEGORIES", "summarize", "logistic5", "fit_logistic5",
           "mos_statistics", "bootstrap", "finite_or_none", "MIN_BOOTSTRAP", "MAX_BOOTSTRAP"]

#: Baselines ``lowps-score`` can run next to lowps (lowps.agreement.build_scorer).
BASELINES = ("l2", "psnr", "ssim", "lpips-alex", "lpips-vgg", "lpips-squeeze")

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
    """Spearman correlation between the margin ``d0 - d1`` and the judge h (Kumar et al. 2022, app. J).

    h is the fraction of raters who found ``p1`` closer; a metric that agrees with them gives p1 the
    smaller distance when h is high, so ``d0 - d1`` grows with h: higher is better, +1 is perfect
    (the paper's sign). ``nan`` when either side is constant.
    """
    from scipy.stats import spearmanr

    a, b, h = _vec(d0, "d0"), _vec(d1, "d1"), _vec(judge, "judge")
    if np.ptp(a - b) == 0 or np.ptp(h) == 0:
        return float("nan")
    return float(spearmanr(a - b, h).statistic)


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


# -- MOS statistics (full-reference IQA: TID2013, KADID-10k, PIPAL, any MOS CSV) -------------------

def logistic5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """The VQEG 5-parameter logistic (Sheikh et al. 2006): ``b1 (1/2 - 1/(1 + e^{b2 (x - b3)})) + b4 x + b5``."""
    return b1 * (0.5 - 1.0 / (1.0 + np.exp(np.clip(b2 * (x - b3), -50, 50)))) + b4 * x + b5


def fit_logistic5(x: Any, y: Any) -> tuple[np.ndarray, Any]:
    """Fit `logistic5` from metric values ``x`` to subjective scores ``y``; returns (fitted y, params).

    Least squares by ``scipy.optimize.curve_fit`` (Levenberg-Marquardt) on ``x`` standardised to zero
    mean and unit variance (distances are ~1e-4, which would make the problem badly scaled), from
    ``b1 = ±(max y - min y)`` (the sign of the linear trend), ``b2 = 1``, ``b3 = 0``, ``b4 = 0``,
    ``b5 = mean y``. If the fit does not converge, the least-squares line is used (recorded as
    ``params = "linear"``), so PLCC is never undefined for lack of a fit.
    """
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    xv, yv = _vec(x, "x"), _vec(y, "y")
    mu, sd = xv.mean(), xv.std()
    z = (xv - mu) / sd if sd > 0 else xv - mu
    slope = np.polyfit(z, yv, 1)[0] if sd > 0 else 0.0
    p0 = [np.sign(slope or 1.0) * (yv.max() - yv.min() or 1.0), 1.0, 0.0, 0.0, yv.mean()]
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # the parameters' covariance is not used
            params, _ = curve_fit(logistic5, z, yv, p0=p0, maxfev=20000)
        fitted = logistic5(z, *params)
        if not np.isfinite(fitted).all():
            raise RuntimeError("non-finite fit")
        return fitted, params
    except (RuntimeError, ValueError, TypeError):
        coef = np.polyfit(z, yv, 1) if sd > 0 else np.array([0.0, yv.mean()])
        return np.polyval(coef, z), "linear"


def mos_statistics(d: Any, mos: Any, higher_is_better: bool = True) -> dict[str, float | None]:
    """SRCC, KRCC, PLCC (after `fit_logistic5`) and RMSE of distances ``d`` against ``mos``.

    Signs: a perfect distance gives +1 whatever the direction of the subjective score: with MOS
    (higher = better quality) a good distance falls as MOS rises, so the rank correlations are taken
    between ``-d`` and MOS; with DMOS (``higher_is_better=False``) between ``d`` and DMOS. PLCC is
    Pearson's r between the logistic-fitted prediction and the scores (the fit absorbs the direction),
    RMSE their root-mean-square difference in the scores' own units (lower is better). Undefined
    statistics (constant input, fewer than 3 items) are ``None``.
    """
    from scipy.stats import kendalltau, pearsonr, spearmanr

    dv, m = _vec(d, "d"), _vec(mos, "mos")
    if len(dv) != len(m):
        raise ValueError(f"d and mos must be equally long, got {len(dv)} and {len(m)}")
    out: dict[str, float | None] = {"n": len(dv), "srcc": None, "krcc": None, "plcc": None, "rmse": None}
    if len(dv) < 3 or np.ptp(dv) == 0 or np.ptp(m) == 0:
        return out
    x = -dv if higher_is_better else dv
    out["srcc"] = float(spearmanr(x, m).statistic)
    out["krcc"] = float(kendalltau(x, m).statistic)
    fitted, _ = fit_logistic5(x, m)
    out["plcc"] = float(pearsonr(fitted, m).statistic) if np.ptp(fitted) > 0 else None
    out["rmse"] = float(np.sqrt(np.mean((fitted - m) ** 2)))
    return {k: finite_or_none(v) for k, v in out.items()}


def finite_or_none(v: Any) -> Any:
    """``None`` for NaN/inf floats (strict JSON has no NaN), the value otherwise."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


#: Fewest and most resamples `bootstrap` takes: below 100 a 95% percentile interval is read off a
#: handful of draws (1 resample gives a zero-width "interval"); above 100,000 a run takes hours for
#: no visible change in the digits reported.
MIN_BOOTSTRAP, MAX_BOOTSTRAP = 100, 100_000


def bootstrap(stat: Any, groups: Any, n: int = 1000, seed: int = 0, level: float = 0.95,
              progress: bool = False) -> dict[str, list[float | None] | None]:
    """Percentile bootstrap confidence intervals, resampling whole groups (reference images).

    ``stat(index_array) -> {name: value}`` computes the statistics on a subset of the items;
    ``groups`` gives each item's group (its reference image), so all distortions of one image are
    drawn together, as the items of one image are not independent. ``n`` resamples from
    ``numpy.random.default_rng(seed)``: the same seed gives the same intervals. Returns
    ``{name: [low, high]}``; ``{name: None}`` where an interval is undefined: a statistic undefined in
    every resample, or a single group (every resample is the same set, so there is nothing to vary).
    ``n`` is 0 (no intervals) or `MIN_BOOTSTRAP`..`MAX_BOOTSTRAP`.
    """
    if n == 0:
        return {}
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not MIN_BOOTSTRAP <= n <= MAX_BOOTSTRAP:
        raise ValueError(f"bootstrap must be 0 (no confidence intervals) or {MIN_BOOTSTRAP}..{MAX_BOOTSTRAP:,} "
                         f"resamples, got {n}")
    g = np.asarray(groups)
    uniq, inv = np.unique(g, return_inverse=True)
    if len(uniq) < 2:
        return {name: None for name in stat(np.arange(len(g)))}
    members = [np.nonzero(inv == k)[0] for k in range(len(uniq))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    from tqdm.auto import tqdm

    for _ in tqdm(range(n), desc="bootstrap", disable=not progress, leave=False):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([members[k] for k in pick])
        for name, value in stat(idx).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None \
                    and np.isfinite(value):
                draws.setdefault(name, []).append(float(value))
    alpha = (1 - level) / 2
    out: dict[str, list[float | None] | None] = {name: None for name in stat(np.arange(len(g)))}
    out.update({name: [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] for name, v in draws.items()})
    return out
