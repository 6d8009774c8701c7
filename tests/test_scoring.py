import numpy as np
import pytest
import torch

from lowps import scoring

lpips = pytest.importorskip("lpips")
from lpips import trainer as lpips_trainer  # noqa: E402


class _Loader:
    """Feeds lpips's dataset scorers precomputed distances: item index travels in 'ref'/'p0'."""

    def __init__(self, n, batch, **arrays):
        self.n, self.batch, self.arrays = n, batch, arrays

    def load_data(self):
        for i in range(0, self.n, self.batch):
            idx = torch.arange(i, min(i + self.batch, self.n))
            item = {"ref": idx, "p0": torch.zeros_like(idx), "p1": torch.ones_like(idx)}
            for k, v in self.arrays.items():
                item[k] = torch.from_numpy(v[idx.numpy()])
            yield item


def _arrays(seed, n=500, ties=True):
    rng = np.random.default_rng(seed)
    d0 = rng.integers(0, 20, n).astype(np.float64) / 10 if ties else rng.random(n)
    d1 = rng.integers(0, 20, n).astype(np.float64) / 10 if ties else rng.random(n)
    judge = rng.integers(0, 6, n) / 5
    same = rng.integers(0, 4, n) / 3
    return d0, d1, judge, same


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [True, False])
def test_2afc_equals_lpips(seed, ties):
    d0, d1, judge, _ = _arrays(seed, ties=ties)

    def func(ref, p):
        return torch.from_numpy(np.where(p.numpy() == 0, d0[ref.numpy()], d1[ref.numpy()]))
    want, _ = lpips_trainer.score_2afc_dataset(_Loader(len(d0), 64, judge=judge), func)
    assert scoring.score_2afc(d0, d1, judge) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [True, False])
def test_jnd_equals_lpips(seed, ties):
    _, d, _, same = _arrays(seed, ties=ties)

    def func(p0, p1):
        return torch.from_numpy(d[p0.numpy()])
    class JndLoader(_Loader):
        def load_data(self):
            for item in super().load_data():
                yield {"p0": item["ref"], "p1": item["p1"], "same": item["same"]}
    want, _ = lpips_trainer.score_jnd_dataset(JndLoader(len(d), 64, same=same), func)
    assert scoring.score_jnd(d, same) == pytest.approx(want, abs=1e-12)


def test_voc_ap_equals_lpips():
    rng = np.random.default_rng(0)
    rec = np.sort(rng.random(50))
    prec = rng.random(50)
    assert scoring.voc_ap(rec, prec) == pytest.approx(lpips.voc_ap(rec, prec, use_07_metric=False), abs=1e-12)


def test_2afc_simple_cases():
    assert scoring.score_2afc([0.1], [0.2], [0.0]) == 1.0
    assert scoring.score_2afc([0.1], [0.2], [1.0]) == 0.0
    assert scoring.score_2afc([0.3], [0.3], [0.8]) == 0.5
    with pytest.raises(ValueError, match="equally long"):
        scoring.score_2afc([0.1, 0.2], [0.1], [0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scoring.score_2afc([0.1], [0.2], [2.0])
    with pytest.raises(ValueError, match="NaN"):
        scoring.score_2afc([float("nan")], [0.2], [0.0])


def test_rank_correlation_and_margins():
    d0 = np.array([0.1, 0.5, 0.2, 0.9])
    d1 = np.array([0.4, 0.1, 0.2, 0.3])
    h = np.array([0.0, 1.0, 0.6, 1.0])
    # the paper's sign (app. J): h high where d0 - d1 is high (p1 nearer) -> positive for a good metric
    assert scoring.rank_correlation(d0, d1, h) > 0
    assert scoring.rank_correlation(d1, d0, h) < 0  # a metric that disagrees with the judges
    assert np.isnan(scoring.rank_correlation(d0, d1, np.full(4, 0.5)))  # undefined, not 0
    m = scoring.margins(d0, d1, h)
    assert m["n"] == 3
    assert m["farther"] == pytest.approx((0.4 + 0.5 + 0.9) / 3) and m["nearer"] == pytest.approx((0.1 + 0.1 + 0.3) / 3)


def test_layerwise_and_summary():
    per = scoring.layerwise_2afc({"a": [0.1], "b": [0.3]}, {"a": [0.2], "b": [0.2]}, [0.0])
    assert per == {"a": 1.0, "b": 0.0}
    s = scoring.summarize({"traditional": 0.7, "cnn": 0.8})
    assert s == {"distortions": pytest.approx(0.75)}
    full = scoring.summarize({c: 0.6 for c in scoring.VAL_CATEGORIES})
    assert set(full) == {"distortions", "real_algorithms", "all"}


def _reference_logistic_fit(x, y):
    # An independent fit of the same 5-parameter VQEG logistic: scipy.optimize.least_squares (trust
    # region) on standardised x, from the same start; PLCC of the fitted values with y.
    from scipy.optimize import least_squares
    z = (x - x.mean()) / x.std()

    def f(b, t):
        return b[0] * (0.5 - 1 / (1 + np.exp(b[1] * (t - b[2])))) + b[3] * t + b[4]
    slope = np.polyfit(z, y, 1)[0]
    b0 = [np.sign(slope) * (y.max() - y.min()), 1.0, 0.0, 0.0, y.mean()]
    res = least_squares(lambda b: f(b, z) - y, b0, method="trf", xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=20000)
    fitted = f(res.x, z)
    return np.corrcoef(fitted, y)[0, 1], np.sqrt(np.mean((fitted - y) ** 2))


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_mos_statistics_signs_and_reference_fit(higher_is_better):
    from scipy.stats import kendalltau, spearmanr
    rng = np.random.default_rng(0)
    severity = rng.uniform(0, 1, 200)
    d = 1e-4 * (np.exp(2 * severity) + 0.3 * rng.standard_normal(200))  # a metric that follows severity
    mos = 9 - 8 * severity + 0.5 * rng.standard_normal(200)  # quality falls with severity
    score = mos if higher_is_better else 10 - mos  # DMOS: higher = worse
    st = scoring.mos_statistics(d, score, higher_is_better=higher_is_better)
    sign = -1 if higher_is_better else 1
    assert st["srcc"] == pytest.approx(sign * spearmanr(d, score).statistic, abs=1e-12) and st["srcc"] > 0.5
    assert st["krcc"] == pytest.approx(sign * kendalltau(d, score).statistic, abs=1e-12) and st["krcc"] > 0.3
    plcc, rmse = _reference_logistic_fit(sign * d, score)
    assert st["plcc"] == pytest.approx(plcc, abs=1e-4) and st["plcc"] > 0.5
    assert st["rmse"] == pytest.approx(rmse, rel=1e-3)
    # a perfect metric (monotone in the score) gives +1 rank correlations in either direction
    perfect = scoring.mos_statistics(np.exp(sign * score), score, higher_is_better)
    assert perfect["srcc"] == pytest.approx(1.0) and perfect["krcc"] == pytest.approx(1.0)


def test_mos_statistics_undefined_is_none():
    st = scoring.mos_statistics([0.1, 0.1, 0.1], [1.0, 2.0, 3.0])
    assert st["srcc"] is None and st["plcc"] is None and st["n"] == 3


def test_bootstrap_is_deterministic_and_groups_whole_references():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(20), 5)
    d = rng.uniform(size=100)
    mos = -d + 0.2 * rng.standard_normal(100)

    def stat(idx):
        return scoring.mos_statistics(d[idx], mos[idx])
    a = scoring.bootstrap(stat, groups, n=100, seed=3)
    b = scoring.bootstrap(stat, groups, n=100, seed=3)
    c = scoring.bootstrap(stat, groups, n=100, seed=4)
    assert a == b and a != c
    full = stat(np.arange(100))
    for k in ("srcc", "krcc", "plcc"):
        lo, hi = a[k]
        assert lo <= full[k] <= hi and hi - lo < 0.5
    seen = []
    scoring.bootstrap(lambda idx: seen.append(idx) or {}, groups, n=100, seed=0)
    assert len(seen) == 101  # 100 resamples, then the full set once (for the statistics' names)
    for idx in seen:  # every drawn reference brings all 5 of its items
        assert all(np.sum(np.isin(idx, np.nonzero(groups == g)[0])) % 5 == 0 for g in range(20))


def test_bootstrap_refuses_too_few_or_too_many_resamples_and_undefined_cis():
    """Issue #37: --bootstrap 1 gave zero-width CIs, --bootstrap 1e9 ran for ever, one reference image
    gave "CI [80, 80]"."""
    groups = np.repeat(np.arange(5), 3)
    d = np.linspace(0, 1, 15)

    def stat(idx):
        return {"m": float(d[idx].mean())}
    for n in (1, 99, 100_001, 1_000_000_000):
        with pytest.raises(ValueError, match="100..100,000"):
            scoring.bootstrap(stat, groups, n=n)
    assert scoring.bootstrap(stat, groups, n=0) == {}
    assert scoring.bootstrap(stat, np.zeros(15), n=100) == {"m": None}  # one reference: undefined, not [x, x]
    lo, hi = scoring.bootstrap(stat, groups, n=100)["m"]
    assert lo < hi
