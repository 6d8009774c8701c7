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
    assert scoring.rank_correlation(d0, d1, h) < 0  # h high where d1 - d0 is low: a good metric
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
