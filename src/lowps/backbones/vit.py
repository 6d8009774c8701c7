"""ViTs at 64x64 input as studied by Kumar et al. 2022 (ViT-B/8 and ViT-L/4), registered in timm.

Choices the paper leaves open or gets wrong, and what lowps does (docs/concepts.md):

* Input normalisation: the paper trains its ViTs with the vit_jax recipe, which feeds [-1, 1]
  pixels; lowps's ViTs therefore normalise with mean = std = 0.5 (``pretrained_cfg``), not ImageNet's
  mean/std. Override with ``timm.create_model(..., pretrained_cfg_overlay={"mean": ..., "std": ...})``.
* ViT-L/4 heads: the paper's table lists 12 heads, which cannot divide width 1024; lowps uses ViT-L's
  standard 16 (64 dims per head).
* Taps: the CLS token after every block, *before* the final LayerNorm (timm's
  ``forward_intermediates(norm=False)``), one layer each.
"""
from __future__ import annotations

from typing import Any

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

__all__ = ["vit_base_patch8_64", "vit_large_patch4_64"]


def _vit(pretrained: bool, **kwargs: Any) -> VisionTransformer:
    if pretrained:
        raise ValueError("lowps' 64px ViTs carry no timm pretrained weights; pass weights= to lowps")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("cache_dir", None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    kwargs.setdefault("img_size", 64)
    # dynamic_img_size lets the metric run at other sizes by interpolating position embeddings.
    kwargs.setdefault("dynamic_img_size", True)
    model: Any = VisionTransformer(**kwargs)
    # vit_jax's [-1, 1] input: x01 * 2 - 1 == (x01 - 0.5) / 0.5
    model.pretrained_cfg = {"input_size": (3, 64, 64), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                            "first_conv": "patch_embed.proj", "classifier": "head", **overlay}
    return model


@register_model
def vit_base_patch8_64(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B/8 at 64x64 (12 blocks, width 768), as in Kumar et al. 2022."""
    return _vit(pretrained, patch_size=8, embed_dim=768, depth=12, num_heads=12, **kwargs)


@register_model
def vit_large_patch4_64(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-L/4 at 64x64 (24 blocks, width 1024), as in Kumar et al. 2022."""
    return _vit(pretrained, patch_size=4, embed_dim=1024, depth=24, num_heads=16, **kwargs)
