"""Functional interface: ``lowps.distance(img0, img1, **options)`` with a cached module."""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch

from .inputs import ImageLike, parse_input_range
from .metric import PerceptualDistance, WeightsSpec

__all__ = ["distance", "get_metric", "clear_cache"]

_CACHE: OrderedDict[tuple, PerceptualDistance] = OrderedDict()
_CACHE_SIZE = 4


def _key(x: object) -> object:
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if isinstance(x, (list, tuple)):
        return tuple(_key(v) for v in x)
    return x


def get_metric(backbone: str = "resnet6", distance: str = "meanpool", weights: WeightsSpec = None,
               layers: Sequence[str | int] | None = None, input_range: tuple[float, float] | str = (0.0, 1.0),
               head_weights: WeightsSpec = None, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32, precision: str = "fp32", check_inputs: bool = True,
               force_precision: bool = False) -> PerceptualDistance:
    """The cached `PerceptualDistance` for these options on ``device``/``dtype`` (LRU of 4).

    The cached modules work in every autograd mode in any order (inference_mode, no_grad, grad,
    autocast), so one program can validate and train with the same cached metric.
    """
    rng = parse_input_range(input_range)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (backbone, distance, _key(weights), _key(layers), rng, _key(head_weights), str(dev), dtype, precision,
           bool(check_inputs), bool(force_precision))
    m = _CACHE.get(key)
    if m is None:
        m = PerceptualDistance(backbone, distance, weights=weights, layers=layers, input_range=rng,
                               head_weights=head_weights, precision=precision, check_inputs=check_inputs,
                               force_precision=force_precision).to(device=dev)
        if dtype != torch.float32:
            m = m.to(dtype=dtype)
        _CACHE[key] = m
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return m


def clear_cache() -> None:
    """Drop the cached modules of `distance`."""
    _CACHE.clear()


def distance(img0: ImageLike, img1: ImageLike, backbone: str = "resnet6", distance: str = "meanpool",
             weights: WeightsSpec = None, layers: Sequence[str | int] | None = None,
             input_range: tuple[float, float] | str = (0.0, 1.0), head_weights: WeightsSpec = None,
             per_layer: bool = False, precision: str = "fp32", check_inputs: bool = True,
             force_precision: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Perceptual distance between ``img0`` and ``img1`` (Kumar et al. 2022), shape (N,).

    Takes tensors (N, 3, H, W) or (3, H, W) in ``input_range`` (1 channel is repeated to 3), PIL
    images, uint8 numpy arrays (H x W x 3) or image file paths. The module for each set of options
    is built once and cached per device and dtype; tensors decide both (files and PIL images run on
    the CPU in float32). Gradients flow to tensor inputs, so this works as a training loss, on raw
    network outputs too: values up to 10% of the range's width outside ``input_range`` are taken
    as they are (see `lowps.inputs.check_range`). Options are those of
    `lowps.PerceptualDistance`.
    """
    ref = img0 if isinstance(img0, torch.Tensor) else img1 if isinstance(img1, torch.Tensor) else None
    dev = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.dtype in (torch.float32, torch.float64, torch.float16,
                                                         torch.bfloat16) else torch.float32
    m = get_metric(backbone, distance, weights, layers, input_range, head_weights, dev, dtype, precision,
                   check_inputs, force_precision)
    return m(img0, img1, per_layer=per_layer)
