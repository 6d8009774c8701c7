"""ViT checkpoints in the vit_jax / big_vision ``.npz`` layout (the paper's ViTs, Kumar et al. 2022,
were trained with the vit_jax recipe) converted to lowps safetensors with timm's own npz loader."""
from __future__ import annotations

import os
from pathlib import Path

from . import WeightsError, save_checkpoint

__all__ = ["convert_vit_npz"]


def convert_vit_npz(path: str | os.PathLike[str], arch: str, out: str | os.PathLike[str]) -> str:
    """Load ``path`` (an ``.npz`` of a JAX ViT: ``embedding/kernel``, ``Transformer/encoderblock_N/...``)
    into timm model ``arch`` without its classifier (lowps taps the CLS token of every block), write
    ``out`` as safetensors and return its sha256. Missing or misshapen arrays are a `WeightsError`."""
    import timm
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    model = timm.create_model(arch, num_classes=0)
    if not isinstance(model, VisionTransformer):
        raise WeightsError(f"{Path(path).name}: a ViT .npz checkpoint loads into a timm VisionTransformer "
                           f"(vit_base_patch8_64, vit_large_patch4_64, ...), not {arch!r}")
    try:
        _load_weights(model, os.fspath(path))
    except (KeyError, ValueError, RuntimeError, OSError) as e:  # a missing array, a wrong shape, a bad file
        raise WeightsError(f"{path} does not load into {arch} as a vit_jax/big_vision .npz checkpoint "
                           f"({type(e).__name__}: {str(e)[:300]}); check the architecture (backbone=...)") from e
    return save_checkpoint(Path(out), model, arch=arch, num_classes=0, source=f"npz:{Path(path).name}")
