"""lowps's TPU ResNets in timm's registry: ``timm.create_model("resnet6")`` works once ``lowps`` is
imported (the network itself: `lowps.backbones.resnet_tpu`).

Pretrained tags point at the checkpoints shipped inside the package (`file`), so
timm.create_model("resnet6.tiny_s1250", pretrained=True) loads offline; features_only=True gives
timm's FeatureGetterNet over forward_intermediates with feature_info, like timm's own models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .resnet_tpu import TPUResNet

__all__ = ["resnet6", "resnet6_w50", "resnet6_w25", "resnet10", "resnet18_tpu", "resnet50_tpu", "resnet200_tpu"]

_FILES = Path(__file__).resolve().parents[1] / "weights" / "files"


def _cfg(file: str | None, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "url": "", "num_classes": 202 if file else 1000, "input_size": (3, 64, 64), "pool_size": (2, 2),
        "crop_pct": 1.0, "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225), "first_conv": "conv1", "classifier": "fc",
        "license": "cc-by-nc-4.0 (trained on Tiny ImageNet: ImageNet's non-commercial terms)" if file else None}
    if file:
        cfg["file"] = str(_FILES / file)
    return cfg | kw


default_cfgs = generate_default_cfgs({
    "resnet6.tiny_s1250": _cfg("resnet6_tiny_s1250.safetensors"),  # lowps's default (docs/models.md)
    "resnet6.tiny_s100": _cfg("resnet6_tiny_s100.safetensors"),
    "resnet6.tiny_s500": _cfg("resnet6_tiny_s500.safetensors"),
    "resnet6.tiny_s2500": _cfg("resnet6_tiny_s2500.safetensors"),
    "resnet6.tiny_s5910": _cfg("resnet6_tiny_s5910.safetensors"),
    "resnet10.tiny_s5910": _cfg("resnet10_tiny_s5910.safetensors"),
    "resnet18_tpu.tiny_s3940": _cfg("resnet18_tiny_s3940.safetensors"),
    **{f"{name}.untrained": _cfg(None) for name in ("resnet6_w50", "resnet6_w25", "resnet50_tpu", "resnet200_tpu")},
})


def _create(variant: str, layers: tuple[int, ...], block: str, pretrained: bool, **kwargs: Any) -> TPUResNet:
    return build_model_with_cfg(TPUResNet, variant, pretrained, layers=layers, block=block,
                                feature_cfg={"feature_cls": "getter", "out_indices": (0, 1, 2, 3)}, **kwargs)


@register_model
def resnet6(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-6 of Kumar et al. 2022: four single-conv residual blocks, 1,774,656 trunk parameters."""
    return _create("resnet6", (1, 1, 1, 1), "single", pretrained, **kwargs)


@register_model
def resnet6_w50(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-6 at half width (stem 32, stages 32-256 channels): the paper's width axis (sec. 6)."""
    return _create("resnet6_w50", (1, 1, 1, 1), "single", pretrained, width=0.5, **kwargs)


@register_model
def resnet6_w25(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-6 at quarter width (stem 16, stages 16-128), the paper's best width for ResNet-6 (Fig. 6b)."""
    return _create("resnet6_w25", (1, 1, 1, 1), "single", pretrained, width=0.25, **kwargs)


@register_model
def resnet10(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-10 (lowps's; in neither the paper nor the TPU code): basic blocks [1, 1, 1, 1], projection
    shortcut in every stage as the TPU code does for its first blocks."""
    return _create("resnet10", (1, 1, 1, 1), "basic", pretrained, **kwargs)


@register_model
def resnet18_tpu(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-18, TPU style (projection on every stage)."""
    return _create("resnet18_tpu", (2, 2, 2, 2), "basic", pretrained, **kwargs)


@register_model
def resnet50_tpu(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-50, TPU style (bottleneck, stride on the 3x3, projection on every stage)."""
    return _create("resnet50_tpu", (3, 4, 6, 3), "bottleneck", pretrained, **kwargs)


@register_model
def resnet200_tpu(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-200, TPU style."""
    return _create("resnet200_tpu", (3, 24, 36, 3), "bottleneck", pretrained, **kwargs)
