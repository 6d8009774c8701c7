"""Opt-in speed: module swaps that make a loaded, frozen network faster, and process tuning.

The networks in `lowps.backbones` are the reference: plain PyTorch modules, what the paper
describes. `accelerate` turns one into its fast inference form after its weights are loaded
(timm's ``fuse``/``reparameterize`` convention), one technique per module of this package:

======================  ============================================================================
`fuse`                  BatchNorm folded into the convs; ResNet-6's shortcuts merged into its 3x3 convs
`stem`                  the stem in sub-batches, pooled in place (`pool`), with a loss-path backward
                        that keeps no conv output (`grad`: polyphase input gradient) and, on AVX2
                        CPUs, the 7x7 conv with its column taps unrolled (`width_im2col`)
`conv`                  merged blocks on prepacked oneDNN weights, small maps NCHW, small-map input
                        gradients as one matrix product (`grad`)
======================  ============================================================================

Which path runs on which CPU is decided in one place, `probe`. ``PerceptualDistance(accelerate=
"auto")`` (the default) applies `accelerate`; ``accelerate="none"`` runs the reference network:
the same distances within float rounding (tests/accel/test_equivalence.py).

`tune_allocator` is the one process-level setting lowps offers; no call of lowps makes it.
"""
from __future__ import annotations

from collections.abc import Collection
from typing import cast

from torch import nn

from .allocator import tune_allocator, tune_allocator_for_cli
from .fuse import ConvReLU, fuse_resnet

__all__ = ["TECHNIQUES", "accelerate", "fuse_resnet", "tune_allocator", "tune_allocator_for_cli"]

#: What `accelerate` can apply, by name (its ``skip`` argument takes these).
TECHNIQUES = ("fuse", "stem", "packed_weights", "small_map_nchw", "gemm_input_grad")


def accelerate(model: nn.Module, skip: Collection[str] = ()) -> nn.Module:
    """The fast inference form of ``model``, in place: for lowps's TPU ResNets every technique in
    `TECHNIQUES` but those in ``skip``; other models are returned unchanged. The model must be in
    eval mode (BatchNorm statistics frozen); it is for inference and for losses through a frozen
    trunk, not for training (train the reference).
    """
    from ..backbones.resnet_tpu import TPUResNet
    from .conv import FastConvReLU
    from .stem import FastStem

    unknown = sorted(set(skip) - set(TECHNIQUES))
    if unknown:
        raise ValueError(f"unknown technique(s) {', '.join(unknown)}; choose from {', '.join(TECHNIQUES)}")
    if not isinstance(model, TPUResNet) or "fuse" in skip:
        return model
    fuse_resnet(model)
    if "stem" not in skip:  # the whole stem in conv1's place; its ReLU and pool become identities
        model.add_module("conv1", FastStem(model.conv1))
        model.add_module("act1", nn.Identity())
        model.add_module("pool", nn.Identity())
    for stage in model.stages:
        blocks = cast(nn.Sequential, stage)
        for j, block in enumerate(blocks.children()):
            if isinstance(block, ConvReLU):
                blocks[j] = FastConvReLU(block.conv, packed="packed_weights" not in skip,
                                         small_map_nchw=False if "small_map_nchw" in skip else None,
                                         loss_input_grad="autograd" if "gemm_input_grad" in skip else "auto")
    return model
