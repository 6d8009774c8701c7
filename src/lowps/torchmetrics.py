"""A torchmetrics ``Metric`` for lowps (optional extra: ``pip install lowps[torchmetrics]``).

``update(preds, target)`` accumulates distances, ``compute()`` returns their mean over every batch
and, under DDP, every process (the sum and the count are synced with ``dist_reduce_fx="sum"``).
Lower is better (``higher_is_better = False``), as for torchmetrics' LPIPS.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

try:
    from torchmetrics import Metric
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("lowps.torchmetrics needs torchmetrics: pip install 'lowps[torchmetrics]'") from e

from .config import MetricConfig, create_metric
from .metric import PerceptualDistance

__all__ = ["LowpsDistance"]


class LowpsDistance(Metric):
    """Mean lowps distance between ``preds`` and ``target`` batches (Kumar et al. 2022).

    Args:
        metric: a ready :class:`lowps.PerceptualDistance`; or leave it ``None`` and pass its options
            (``backbone``, ``distance``, ``weights``, ``input_range``, ...) as keyword arguments.
    """

    sum_distance: torch.Tensor  # states (add_state)
    total: torch.Tensor
    higher_is_better = False
    is_differentiable = True
    full_state_update = False

    def __init__(self, metric: PerceptualDistance | None = None, **options: Any) -> None:
        fields = {f.name for f in dataclasses.fields(MetricConfig)}
        metric_kwargs = {k: options.pop(k) for k in list(options) if k in fields}  # the rest go to torchmetrics
        super().__init__(**options)
        self.metric = metric if metric is not None else create_metric(**metric_kwargs)
        self.add_state("sum_distance", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        d = self.metric(preds, target)
        self.sum_distance += d.sum().double()
        self.total += d.numel()

    def compute(self) -> torch.Tensor:
        return (self.sum_distance / self.total).float()
