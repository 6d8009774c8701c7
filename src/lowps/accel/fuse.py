"""BatchNorm folding and ResNet-6's shortcut merge: the inference form of a TPU ResNet (timm's
``fuse``/``reparameterize`` convention). Same function up to float rounding (~1e-6 relative); for
ResNet-6 it removes the four shortcut convs and residual adds (7% of the MACs at 64x64)."""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..backbones.resnet_tpu import SingleConvBlock, TPUResNet

__all__ = ["ConvReLU", "fold_batchnorm", "merge_shortcut", "fuse_resnet"]


class ConvReLU(nn.Module):
    """``relu(conv(x))``: a single-conv block with its shortcut merged into the conv (`merge_shortcut`)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


@torch.no_grad()
def fold_batchnorm(model: TPUResNet) -> TPUResNet:
    """Fold every eval-mode BatchNorm into its conv (exact up to float rounding); in place."""
    if model.training:
        raise RuntimeError("fold_batchnorm() needs eval mode: BatchNorm statistics must be frozen")
    for conv_name, bn_name in model.conv_bn_pairs():
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if isinstance(bn, nn.Identity):
            continue  # already folded
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d), (conv_name, bn_name)
        _set(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _set(model, bn_name, nn.Identity())
    return model


@torch.no_grad()
def merge_shortcut(block: SingleConvBlock) -> ConvReLU:
    """The block as one conv + ReLU (BatchNorm folded first, `fold_batchnorm`).

    Both paths are linear and read the same input with the same stride: a 1x1 conv with stride s
    and no padding samples exactly the centre tap of the 3x3 window (padding 1) at stride s, for
    every input size. So ``conv3x3(x) + conv1x1(x) == conv3x3'(x)`` with the 1x1 kernel added to
    the centre of the 3x3 one (an identity shortcut adds the identity there), as in RepVGG.
    """
    conv = block.conv1
    if not isinstance(block.bn1, nn.Identity) or conv.bias is None:
        raise RuntimeError("merge_shortcut() needs BatchNorm folded first (fold_batchnorm)")
    weight, bias = conv.weight.clone(), conv.bias.clone()
    if isinstance(block.shortcut, nn.Identity):
        weight[:, :, 1, 1] += torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    else:
        shortcut = cast(nn.Sequential, block.shortcut)
        proj, bn = cast(nn.Conv2d, shortcut[0]), shortcut[1]
        if not isinstance(bn, nn.Identity) or proj.bias is None:
            raise RuntimeError("merge_shortcut() needs BatchNorm folded first (fold_batchnorm)")
        weight[:, :, 1, 1] += proj.weight[:, :, 0, 0]
        bias += proj.bias
    # skip_init: no draw from the global RNG for weights that are overwritten at once
    merged = nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, 3, conv.stride, conv.padding,
                                bias=True, device=weight.device, dtype=weight.dtype)
    merged.weight.copy_(weight)
    cast(torch.Tensor, merged.bias).copy_(bias)
    return ConvReLU(merged.requires_grad_(conv.weight.requires_grad))


def fuse_resnet(model: TPUResNet) -> TPUResNet:
    """`fold_batchnorm`, then every single-conv block as a `ConvReLU` (`merge_shortcut`); in place."""
    fold_batchnorm(model)
    for stage in model.stages:
        blocks = cast(nn.Sequential, stage)
        for j, block in enumerate(blocks.children()):
            if isinstance(block, SingleConvBlock):
                blocks[j] = merge_shortcut(block)
    return model
