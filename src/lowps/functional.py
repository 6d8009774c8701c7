"""Functional interface: ``lowps.distance(img0, img1, **options)`` with a cached module."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from .config import MetricConfig, WeightsSpec, create_metric
from .inputs import ImageLike
from .metric import PerceptualDistance

__all__ = ["distance", "get_metric", "clear_cache"]

_CACHE: OrderedDict[tuple, PerceptualDistance] = OrderedDict()
_CACHE_SIZE = 4


class _Unset:
    """A keyword the caller did not pass (its `MetricConfig` default applies)."""

    def __repr__(self) -> str:
        return "<MetricConfig default>"


#: The default of every metric keyword of `get_metric`/`distance`: "not given", so a keyword beside
#: ``config=`` is refused even where it equals the default (it would otherwise be silently ignored).
UNSET: Any = _Unset()
_METRIC_KEYS = ("backbone", "distance", "weights", "layers", "input_range", "head_weights", "precision",
                "check_inputs", "force_precision", "style_norm")


def _config(config: MetricConfig | None, given: dict[str, Any]) -> MetricConfig:
    options = {k: v for k, v in given.items() if v is not UNSET}
    if config is None:
        return MetricConfig(**options)
    if not isinstance(config, MetricConfig):
        raise TypeError(f"config must be a lowps.MetricConfig, got {type(config).__name__}")
    if options:
        names = ", ".join(f"{k}=" for k in options)
        raise ValueError(f"pass the metric's options either as config= or as keywords, not both (got config= and "
                         f"{names}); use config.replace({next(iter(options))}=...)")
    return config


def get_metric(backbone: str = UNSET, distance: str = UNSET, weights: WeightsSpec = UNSET,
               layers: Sequence[str | int] | None = UNSET, input_range: tuple[float, float] | str = UNSET,
               head_weights: WeightsSpec = UNSET, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32, precision: str = UNSET, check_inputs: bool = UNSET,
               force_precision: bool = UNSET, style_norm: str = UNSET, *,
               config: MetricConfig | None = None) -> PerceptualDistance:
    """The cached `PerceptualDistance` for these options (or ``config``) on ``device``/``dtype`` (LRU of 4).

    Options default to `MetricConfig`'s defaults. Give them as keywords or as one ``config``, not
    both: a keyword beside ``config=`` is an error, even one equal to its default. The cached
    modules work in every autograd mode in any order (inference_mode, no_grad, grad, autocast), so
    one program can validate and train with the same cached metric.
    """
    config = _config(config, {"backbone": backbone, "distance": distance, "weights": weights, "layers": layers,
                              "input_range": input_range, "head_weights": head_weights, "precision": precision,
                              "check_inputs": check_inputs, "force_precision": force_precision,
                              "style_norm": style_norm})
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (config, str(dev), dtype)
    m = _CACHE.get(key)
    if m is None:
        m = create_metric(config, device=dev, dtype=None if dtype == torch.float32 else dtype)
        _CACHE[key] = m
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return m


def clear_cache() -> None:
    """Drop the cached modules of `distance`."""
    _CACHE.clear()


def distance(img0: ImageLike, img1: ImageLike, backbone: str = UNSET, distance: str = UNSET,
             weights: WeightsSpec = UNSET, layers: Sequence[str | int] | None = UNSET,
             input_range: tuple[float, float] | str = UNSET, head_weights: WeightsSpec = UNSET,
             per_layer: bool = False, precision: str = UNSET, check_inputs: bool = UNSET,
             force_precision: bool = UNSET, style_norm: str = UNSET, *,
             config: MetricConfig | None = None) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Perceptual distance between ``img0`` and ``img1`` (Kumar et al. 2022), shape (N,).

    Takes tensors (N, 3, H, W) or (3, H, W) in ``input_range`` (1 channel is repeated to 3), PIL
    images, uint8 numpy arrays (H x W x 3) or image file paths. The module for each set of options
    is built once and cached per device and dtype; tensors decide both (files and PIL images run on
    the CPU in float32). Gradients flow to tensor inputs, so this works as a training loss, on raw
    network outputs too: values up to 10% of the range's width outside ``input_range`` are taken
    as they are (see `lowps.inputs.check_range`). Options are those of
    `lowps.PerceptualDistance` (the fields of `lowps.MetricConfig`, with its defaults: ResNet-6,
    ``distance="structure"``), or one ``config`` (not both).

    (``distance=`` names the head, as everywhere in the API; the parameter shadows this function's
    name only inside its own body.)
    """
    ref = img0 if isinstance(img0, torch.Tensor) else img1 if isinstance(img1, torch.Tensor) else None
    dev = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.dtype in (torch.float32, torch.float64, torch.float16,
                                                         torch.bfloat16) else torch.float32
    m = get_metric(backbone, distance, weights, layers, input_range, head_weights, dev, dtype, precision,
                   check_inputs, force_precision, style_norm, config=config)
    return m(img0, img1, per_layer=per_layer)
