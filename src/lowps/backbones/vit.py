"""ViTs at 64x64 input as studied by Kumar et al. 2022 (ViT-B/8 and ViT-L/4), registered in timm."""
from __future__ import annotations

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

__all__ = ["vit_base_patch8_64", "vit_large_patch4_64"]


def _vit(pretrained: bool, **kwargs: object) -> VisionTransformer:
    if pretrained:
        raise ValueError("lowps' 64px ViTs carry no timm pretrained weights; pass weights= to lowps")
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm factory extras
        kwargs.pop(k, None)
    kwargs.setdefault("img_size", 64)
    # dynamic_img_size lets the metric run at other sizes by interpolating position embeddings.
    kwargs.setdefault("dynamic_img_size", True)
    return VisionTransformer(**kwargs)  # type: ignore[arg-type]


@register_model
def vit_base_patch8_64(pretrained: bool = False, **kwargs: object) -> VisionTransformer:
    """ViT-B/8 at 64x64 (12 blocks, width 768), as in Kumar et al. 2022."""
    return _vit(pretrained, patch_size=8, embed_dim=768, depth=12, num_heads=12, **kwargs)


@register_model
def vit_large_patch4_64(pretrained: bool = False, **kwargs: object) -> VisionTransformer:
    """ViT-L/4 at 64x64 (24 blocks, width 1024), as in Kumar et al. 2022."""
    return _vit(pretrained, patch_size=4, embed_dim=1024, depth=24, num_heads=16, **kwargs)
