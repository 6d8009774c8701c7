"""Ecosystem adapters: torchmetrics Metric, torch.hub entry points."""
from pathlib import Path

import pytest
import torch

import lowps
from conftest import pair

ROOT = Path(__file__).resolve().parents[1]


def test_torchmetrics_metric_is_the_mean_over_batches():
    pytest.importorskip("torchmetrics")
    from lowps.torchmetrics import LowpsDistance
    m = lowps.PerceptualDistance(weights="random")
    tm = LowpsDistance(metric=m)
    batches = [pair(n, seed=s) for n, s in ((2, 0), (3, 1), (1, 2))]
    direct = []
    for x, y in batches:
        tm.update(x, y)
        direct.append(m(x, y))
    assert torch.allclose(tm.compute(), torch.cat(direct).mean(), rtol=1e-6)
    assert tm.higher_is_better is False
    tm.reset()
    assert tm.total == 0


def test_torchmetrics_builds_its_own_metric_from_options():
    pytest.importorskip("torchmetrics")
    from lowps.torchmetrics import LowpsDistance
    tm = LowpsDistance(distance="local", weights="random")
    x, y = pair(2)
    tm.update(x, y)
    assert torch.allclose(tm.compute(), lowps.PerceptualDistance(distance="local", weights="random")(x, y).mean())


def test_torch_hub_local_load():
    m = torch.hub.load(str(ROOT), "lowps", source="local", trust_repo=True)
    x, y = pair(2)
    assert isinstance(m, lowps.PerceptualDistance)
    assert torch.allclose(m(x, y), lowps.distance(x, y), rtol=1e-5)
