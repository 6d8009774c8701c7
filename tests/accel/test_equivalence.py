"""accelerate="auto" (lowps.accel's module swaps) against accelerate="none" (the reference network):
the same distances and input gradients for every head, fp32 and bf16, NCHW and channels_last inputs.

Tolerances come from what is compared. fp32: the same function with other summation orders (BN
folded, shortcuts merged, other kernels): ~1e-6 relative measured; bounded at 1e-4 (values) and,
for gradients, 1e-3 in norm, since a pre-activation within rounding of a ReLU kink may flip. bf16
(8-bit mantissa, unit roundoff 2^-8): both forms round the weights differently (folded before the
cast, or BN in bf16), so each is compared with the fp32 reference: the accelerated form must be no
less accurate than the reference form in bf16 (within 2x, plus one roundoff), and the two within
5% (values) / 15% (gradients, in norm) of each other, about 13 and 40 roundoffs (measured on an
Intel Xeon with AMX: 1.7% and 6.7%). The structure head's input gradient is itself ~20% off fp32 in
either bf16 form (it divides by each channel's spatial standard deviation, over 4 positions in the
last layer at 64 px; measured 0.20 reference, 0.24 accelerated): two such roundings may differ by up
to the sum of their errors, so the gradient bound between the forms is the larger of 15% and twice
the reference's own bf16 error.
"""
import pytest
import torch

import lowps

HEADS = ["structure", "meanpool", "local", "style", "linear"]


def _pair(layout):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 48, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return x.contiguous(memory_format=fmt), y.contiguous(memory_format=fmt)


def _run(metric, x, y):
    xx = x.clone().requires_grad_()
    d = metric(xx, y)
    d.sum().backward()
    with torch.inference_mode():
        d_inf = metric(x, y)  # the inference path too (other fast paths than the loss path)
    return d.detach(), d_inf, xx.grad


def _rel(a, b):
    return float(((a - b).abs() / b.abs()).max())


def _norm(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("head", HEADS)
def test_fp32_accelerated_equals_reference(head, layout):
    x, y = _pair(layout)
    kw = {"distance": head, "head_weights": "ones" if head == "linear" else None}
    fast, ref = (_run(lowps.PerceptualDistance(accelerate=a, **kw), x, y) for a in ("auto", "none"))
    assert _rel(fast[0], ref[0]) < 1e-4 and _rel(fast[1], ref[1]) < 1e-4
    assert _norm(fast[2], ref[2]) < 1e-3 and ref[2].abs().max() > 0


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("head", HEADS)
def test_bf16_accelerated_is_as_accurate_as_the_reference(head, layout):
    x, y = _pair(layout)
    kw = {"distance": head, "head_weights": "ones" if head == "linear" else None}
    exact = _run(lowps.PerceptualDistance(accelerate="none", **kw), x, y)
    fast, ref = (_run(lowps.PerceptualDistance(accelerate=a, precision="bf16", force_precision=True, **kw), x, y)
                 for a in ("auto", "none"))
    assert fast[0].dtype == ref[0].dtype == torch.float32
    for k in (0, 1):
        assert _rel(fast[k], exact[k]) <= 2 * _rel(ref[k], exact[k]) + 2 ** -8
        assert _rel(fast[k], ref[k]) < 0.05
    ref_error = _norm(ref[2], exact[2])
    assert _norm(fast[2], ref[2]) < max(0.15, 2 * ref_error) and _norm(fast[2], exact[2]) <= 2 * ref_error + 2 ** -8


def test_accelerate_option_swaps_modules_and_none_is_the_reference():
    from lowps.accel.conv import FastConvReLU
    from lowps.accel.stem import FastStem
    from lowps.backbones.resnet_tpu import SingleConvBlock

    fast, ref = lowps.PerceptualDistance(), lowps.PerceptualDistance(accelerate="none")
    kinds = {type(m) for m in fast.backbone.model.modules()}
    assert FastStem in kinds and FastConvReLU in kinds and torch.nn.BatchNorm2d not in kinds
    kinds = {type(m) for m in ref.backbone.model.modules()}
    assert SingleConvBlock in kinds and torch.nn.BatchNorm2d in kinds and FastStem not in kinds
    assert fast.config.accelerate == "auto" and ref.config.accelerate == "none"
    with pytest.raises(ValueError, match="accelerate"):
        lowps.PerceptualDistance(accelerate="fast")
    with pytest.raises(ValueError, match="unknown technique"):
        lowps.accel.accelerate(ref.backbone.model, skip={"bogus"})
