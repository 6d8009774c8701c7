"""Backbones: a timm model plus the feature taps a perceptual distance reads.

One contract for every backbone (`Backbone`): ``forward(x)`` takes an image batch that is
already normalised with ``backbone.mean`` / ``backbone.std`` and returns one tensor per layer,
``(N, C_l, H_l, W_l)``; ``backbone.layers`` describes them. Which taps a model gets:

* lowps' TPU-style ResNets (``resnet6``, ``resnet10``, ``resnet18_tpu``, ``resnet50_tpu``,
  ``resnet200_tpu``): the outputs of the four reduction stages (strides 4, 8, 16, 32), as in
  Kumar et al. 2022.
* Vision Transformers (``vit_base_patch8_64``, ``vit_large_patch4_64`` or any timm ViT): the CLS
  token after every encoder block, one layer each (C = width, H = W = 1), as in the paper.
* Any other timm CNN (``timm:<name>`` or the bare timm name): the last feature map at each of the
  strides 4, 8, 16 and 32 through timm's ``forward_intermediates``.

Names are timm registry names: importing `lowps` registers lowps' own models there.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

from . import resnet_tpu, tpu_registry, vit  # noqa: F401  (tpu_registry, vit: register lowps models in timm)
from .resnet_tpu import TPUResNet

__all__ = ["Backbone", "LayerInfo", "create_backbone", "check_backbone_name", "list_backbones", "LOWPS_BACKBONES",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The backbones of the paper's study that lowps defines itself (all also in timm's registry).
LOWPS_BACKBONES = ("resnet6", "resnet6_w50", "resnet6_w25", "resnet10", "resnet18_tpu", "resnet50_tpu", "resnet200_tpu",
                   "vit_base_patch8_64", "vit_large_patch4_64")

_CNN_REDUCTIONS = (4, 8, 16, 32)
_TPU_ARCHS = ("resnet6", "resnet6_w50", "resnet6_w25", "resnet10", "resnet18_tpu", "resnet50_tpu", "resnet200_tpu")


@dataclass(frozen=True)
class LayerInfo:
    """One feature tap: its name, channel count and spatial reduction (None for tokens)."""

    name: str
    channels: int
    reduction: int | None


class Backbone(nn.Module):
    """A timm model with feature taps (see module docstring for the contract).

    Attributes:
        arch: the timm model name.
        model: the full timm model (classifier included, so checkpoints load strictly).
        layers: one `LayerInfo` per tap, in forward order.
        mean, std: per-channel input normalisation on [0, 1] images.
        min_size: the smallest input side the taps are defined for.
        fixed_size: (H, W) for models that only take one input size (timm ViTs without
            ``dynamic_img_size``), else None.
        multiple_of: input sides must be a multiple of this (the ViT patch size), else 1.
    """

    def __init__(self, arch: str, model: nn.Module, layers: list[LayerInfo], kind: str,
                 mean: tuple[float, ...], std: tuple[float, ...], min_size: int,
                 tap_indices: list[int] | None = None, fixed_size: tuple[int, int] | None = None,
                 multiple_of: int = 1) -> None:
        super().__init__()
        self.arch, self.model, self.layers, self.kind = arch, model, layers, kind
        self.mean, self.std, self.min_size = tuple(mean), tuple(std), int(min_size)
        self._tap_indices = tap_indices
        self.fixed_size, self.multiple_of = fixed_size, multiple_of
        #: which weights are loaded (a registry name, file, URL, "random" or "timm") and their sha256;
        #: set by `lowps.weights.build_backbone`
        self.weights_name: str | None = None
        self.weights_sha256: str | None = None

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.kind == "cls":
            # forward_intermediates returns (spatial, prefix_tokens) per block; prefix[:, 0] is CLS.
            out = self.model.forward_intermediates(  # type: ignore[operator]
                x, indices=None, return_prefix_tokens=True, intermediates_only=True, output_fmt="NLC")
            return [prefix[:, 0, :, None, None] for _, prefix in out]
        return self.model.forward_intermediates(  # type: ignore[operator]
            x, indices=self._tap_indices, intermediates_only=True, stop_early=True)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, layers={self.layer_names}"

    def reparameterize(self) -> Backbone:
        """Switch the trunk to its fast inference form, in place, where it has one (timm's ``fuse``/
        ``reparameterize`` convention; `lowps.accel.accelerate`): for lowps's TPU ResNets BatchNorm
        folded, ResNet-6's shortcuts merged and the CPU fast paths swapped in, the same function up to
        float rounding. Other trunks are left as they are. The metric calls this (unless
        ``accelerate="none"``); a training loop must use the reference (``lowps.weights.build_backbone``)."""
        from ..accel import accelerate

        if not self.model.training:
            accelerate(self.model)
        return self


def list_backbones() -> list[str]:
    """The backbones of the paper's study that lowps provides; any timm model name also works."""
    return list(LOWPS_BACKBONES)


def _timm_name(name: str) -> str:
    return name[len("timm:"):] if name.startswith("timm:") else name


_SEED_LOCK = threading.Lock()


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # Random-init backbones are a baseline in the paper; make them the same network every time. timm
    # models draw from the global RNG: seed it inside a lock (threads building at once get the same
    # network as a serial build) and restore its state afterwards (callers' streams are unchanged).
    with _SEED_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_backbone_name(name: str) -> str:
    """The timm name of backbone ``name``; an error listing close matches if there is no such model."""
    import difflib

    arch = _timm_name(name)
    if timm.is_model(arch):
        return arch
    known = list(dict.fromkeys([*LOWPS_BACKBONES, *timm.list_models()]))
    close = difflib.get_close_matches(arch, known, n=5, cutoff=0.75) if arch else []
    raise ValueError(f"unknown backbone {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ".")
                     + f" lowps backbones: {', '.join(LOWPS_BACKBONES)}; any timm model name also works "
                     "(timm.list_models())")


def create_backbone(name: str, num_classes: int = 0, seed: int = 0) -> Backbone:
    """Build a backbone by timm name (``"resnet6"``, ``"timm:convnext_tiny"``, ...), randomly initialised.

    Weights are loaded separately (`lowps.weights.load_into`). ``num_classes`` keeps a
    classifier on the underlying model (used by training and by checkpoints that carry one).
    """
    arch = check_backbone_name(name)
    with _seeded(seed):
        extra: dict[str, Any] = {"init_seed": seed} if arch in _TPU_ARCHS else {}
        # Any: lowps reads attributes that only some timm models have (cls_token, patch_embed, ...)
        model: Any = timm.create_model(arch, pretrained=False, num_classes=num_classes, **extra)
    model.eval()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    if isinstance(model, TPUResNet):
        # the same forward_intermediates contract as timm's CNNs, all four reduction stages
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        layers = [LayerInfo(f"stage{i + 1}", c, r)
                  for i, (c, r) in enumerate(zip(model.stage_channels, model.stage_reductions))]
        return Backbone(arch, model, layers, "intermediates", mean, std, min_size=16, tap_indices=[0, 1, 2, 3])
    blocks = getattr(model, "blocks", None)
    if hasattr(model, "cls_token") and model.cls_token is not None and blocks is not None:
        width = int(model.embed_dim)
        layers = [LayerInfo(f"block{i}", width, None) for i in range(len(blocks))]
        patch = model.patch_embed.patch_size
        fixed = None
        if not getattr(model, "dynamic_img_size", False):
            fixed = tuple(model.patch_embed.img_size)
        return Backbone(arch, model, layers, "cls", mean, std, min_size=max(patch), fixed_size=fixed,
                        multiple_of=max(patch))
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        raise ValueError(f"timm model {arch!r} exposes no feature_info/forward_intermediates; "
                         "lowps cannot tap its features. Use a timm CNN or ViT that supports "
                         "forward_intermediates, or one of " + ", ".join(LOWPS_BACKBONES))
    taps: dict[int, int] = {}
    for idx, f in enumerate(info):  # the last map at each reduction
        if f["reduction"] in _CNN_REDUCTIONS:
            taps[f["reduction"]] = idx
    if not taps:
        raise ValueError(f"timm model {arch!r} has no feature maps at strides {_CNN_REDUCTIONS}")
    indices = [taps[r] for r in sorted(taps)]
    layers = [LayerInfo(f"stage{i + 1}", info[j]["num_chs"], info[j]["reduction"])
              for i, j in enumerate(indices)]
    return Backbone(arch, model, layers, "intermediates", mean, std,
                    min_size=_probe_min_size(model, indices, max(r for r in taps) // 2), tap_indices=indices)


@torch.no_grad()
def _probe_min_size(model: nn.Module, indices: list[int], start: int) -> int:
    """The smallest square input side the model's taps accept, found by trying (doubling, then
    bisecting): a timm CNN's stem and downsampling kernels, not only its strides, set it (e.g.
    convnext_atto needs 32 px, not 16), and the input validator reports it instead of a conv error."""
    def ok(side: int) -> bool:
        try:
            model.forward_intermediates(torch.zeros(1, 3, side, side), indices=indices, intermediates_only=True,
                                        stop_early=True)  # type: ignore[operator]
            return True
        except (RuntimeError, ValueError, AssertionError):
            return False
    lo, hi = max(1, start // 2), start
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > 1024:
            return start  # let the model speak for itself
    while hi - lo > 1:  # invariant: lo fails (or is below start), hi works
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi
