"""lowps.accel.fuse: BatchNorm folding and ResNet-6's shortcut merge equal the reference network."""
import copy

import pytest
import timm
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from accel_helpers import _close, _with_random_bn_statistics
from lowps.accel.fuse import ConvReLU, fuse_resnet, merge_shortcut
from lowps.backbones.resnet_tpu import SingleConvBlock


@pytest.mark.parametrize("arch", ["resnet6", "resnet10"])
@pytest.mark.parametrize("size", [(64, 64), (37, 50)])
def test_fuse_folds_bn_and_merges_single_conv_shortcuts_exactly(arch, size):
    ref_model = _with_random_bn_statistics(timm.create_model(arch, num_classes=0))
    fused = fuse_resnet(copy.deepcopy(ref_model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    if arch == "resnet6":  # every block is one conv + ReLU now
        assert all(isinstance(block, ConvReLU) for stage in fused.stages for block in stage)
    x = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(1), requires_grad=True)
    ref, got = ref_model.forward_stages(x), fused.forward_stages(x)
    assert all(_close(a, b) for a, b in zip(got, ref))
    # Input gradients (the metric as a training loss) agree too. In float64: in float32 a
    # pre-activation within rounding of 0 can land on the other side of a ReLU, which moves the
    # gradient locally (by design of ReLU, not of the fusion).
    ref_model.double()
    fused = fuse_resnet(copy.deepcopy(ref_model))
    x = x.detach().double().requires_grad_()
    g_ref, = torch.autograd.grad(sum(f.square().mean() for f in ref_model.forward_stages(x)), x)
    g_got, = torch.autograd.grad(sum(f.square().mean() for f in fused.forward_stages(x)), x)
    assert _close(g_got, g_ref, rel=1e-9)


@pytest.mark.parametrize("stride", [1, 2])
def test_merge_identity_and_projection_shortcuts(stride):
    for project in ([True] if stride == 2 else [True, False]):
        block = _with_random_bn_statistics(SingleConvBlock(8, 8, stride, project=project))
        for m in block.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, std=0.3)
        x = torch.randn(2, 8, 9, 10)
        with torch.no_grad():
            ref = block(x)
        # Fold BN by hand so the block is tested on its own.
        block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), torch.nn.Identity()
        if project:
            block.shortcut[0] = fuse_conv_bn_eval(block.shortcut[0], block.shortcut[1])
            block.shortcut[1] = torch.nn.Identity()
        merged = merge_shortcut(block)
        with torch.no_grad():
            assert torch.allclose(merged(x), ref, rtol=1e-5, atol=1e-5)


def test_merge_shortcut_before_folding_bn_is_an_error():
    with pytest.raises(RuntimeError, match="BatchNorm folded first"):
        merge_shortcut(SingleConvBlock(4, 8, 2, project=True).eval())
