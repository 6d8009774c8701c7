"""lowps.accel.stem: the stem in sub-batches and bands, its loss-path backward (polyphase or native
input gradient) and the column-unrolled conv equal the plain ops."""
import pytest
import timm
import torch

from accel_helpers import _close, fast_resnet6
from lowps.accel import accelerate
from lowps.accel.stem import FastStem, _pool_sub_batches
from lowps.backbones.resnet_tpu import tf_same_max_pool


@pytest.mark.parametrize("keep_indices", [False, True])
def test_stem_pool_keeps_one_sub_batch_conv_output_alive(keep_indices):
    # The stem's conv output is the network's largest activation: holding the first sub-batch's through
    # the loop (as an argument did) raised inference's peak at 64x64/32 from 13.0 to 19.7 MiB.
    import weakref

    x = torch.randn(7, 4, 10, 12, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)
    made: list[weakref.ref] = []

    def conv(i):
        assert all(r() is None for r in made), f"a previous sub-batch's conv output is still alive at image {i}"
        y = x[i:i + 3].clone(memory_format=torch.channels_last)
        made.append(weakref.ref(y))
        return y
    out, idx = _pool_sub_batches(conv, 7, 3, keep_indices=keep_indices)
    assert len(made) == 3 and (idx is not None) == keep_indices
    assert torch.equal(out, tf_same_max_pool(x).relu())
    # off CPU (here: the meta device, shapes only) inference pools with the max-pool kernel per
    # sub-batch and a scratch for its indices, one launch per sub-batch instead of four
    xm = torch.empty(7, 4, 10, 12, device="meta").contiguous(memory_format=torch.channels_last)
    om, im = _pool_sub_batches(lambda i: xm[i:i + 3], 7, 3, keep_indices=keep_indices)
    assert om.shape == out.shape and om.is_contiguous(memory_format=torch.channels_last)
    assert (im is not None) == keep_indices


@pytest.mark.parametrize("arch", ["resnet6", "resnet10"])
def test_stem_sub_batches_at_inference_are_exact(arch):
    model = accelerate(timm.create_model(arch, num_classes=0).eval())
    x = torch.randn(5, 3, 40, 48)
    with torch.no_grad():
        ref = model.forward_stages(x)  # the whole batch in one stem call
        model.conv1.chunk_pixels = 2 * 40 * 48  # sub-batches of 2, 2, 1
        got = model.forward_stages(x)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, ref))  # conv algo may differ by batch
    with torch.enable_grad():  # with autograd the stem runs whole (nothing to save by splitting)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.forward_stages(x), ref))


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (33, 33), (40, 31), (17, 16), (100, 23)])
def test_stem_row_bands_for_large_images_are_exact(size):
    # When one image's stem output exceeds stem_chunk_pixels, the stem runs in bands of pooled rows,
    # each from only the input rows it depends on (the conv's zero padding and the pool's TF "SAME"
    # padding applied only where a band meets the border). Every band height, odd and even sizes.
    model = accelerate(timm.create_model("resnet6", num_classes=0).eval())
    h, w = size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        model.conv1.chunk_pixels = 10 ** 9
        ref = model.conv1(x)
        for bound in (1, 4 * w, 8 * w, 12 * w + 1, h * w - 1):  # 1, 1, 2, 3 ... pooled rows per band
            model.conv1.chunk_pixels = bound
            got = model.conv1(x)
            assert got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-5, atol=1e-6), bound
        model.conv1.chunk_pixels = 8 * w
        full = model.forward_stages(x)
    model.conv1.chunk_pixels = 10 ** 9
    with torch.no_grad():
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(full, model.forward_stages(x)))


@pytest.mark.parametrize("conv", ["direct", "width_im2col"])
@pytest.mark.parametrize("mode", ["polyphase", "native"])
@pytest.mark.parametrize("size", [(64, 64), (37, 50), (33, 64)])
def test_loss_stem_gradients_equal_autograd_through_the_plain_ops(mode, conv, size):
    # The loss path's stem (_LossStem: sub-batches, pool indices only, polyphase or native input
    # gradient, direct or column-unrolled conv) against plain autograd, in float64 (so ReLU kinks
    # cannot differ), odd and even sizes, with sub-batches of 2 images, and through a nonlinear
    # function of the features.
    model = fast_resnet6()
    model.conv1.conv_mode = conv
    model.conv1.chunk_pixels = 2 * size[0] * size[1]
    x0 = torch.rand(5, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x0 = x0.contiguous(memory_format=torch.channels_last)
    out = {}
    for m in (mode, "autograd"):
        model.conv1.input_grad = m
        x = x0.clone().requires_grad_()
        feats = model.forward_stages(x)
        loss = sum((f / (f.norm(dim=1, keepdim=True) + 1e-3)).square().mean() for f in feats)
        g, = torch.autograd.grad(loss, x, create_graph=True)
        gg, = torch.autograd.grad((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g)).sum(), x)
        out[m] = ([f.detach() for f in feats], g.detach(), gg)
    (f_fast, g_fast, gg_fast), (f_ref, g_ref, gg_ref) = out[mode], out["autograd"]
    assert all(_close(a, b, rel=1e-12) for a, b in zip(f_fast, f_ref))
    assert _close(g_fast, g_ref, rel=1e-9) and g_ref.abs().max() > 0
    assert _close(gg_fast, gg_ref, rel=1e-9) and gg_ref.abs().max() > 0  # double backward (gradient penalties)
    # A first-order backward (no create_graph) writes the sub-batches' input gradients straight into one
    # NCHW tensor, the layout callers' images mostly have, instead of concatenating them channels_last.
    model.conv1.input_grad = mode
    x = x0.clone().requires_grad_()
    stem = model.conv1(x)
    assert type(stem.grad_fn).__name__ == "LossStemBackward"
    g1, = torch.autograd.grad((stem * torch.linspace(-1, 1, stem.numel(), dtype=stem.dtype).view_as(stem)).sum(), x)
    plain = tf_same_max_pool(model.conv1.conv(x)).relu()
    g1_ref, = torch.autograd.grad((plain * torch.linspace(-1, 1, stem.numel(), dtype=stem.dtype).view_as(stem)).sum(), x)
    assert g1.is_contiguous() and _close(g1, g1_ref, rel=1e-9) and g1_ref.abs().max() > 0


def test_loss_stem_applies_only_where_it_is_exact_and_float32_agrees():
    model = fast_resnet6(torch.float32)
    x = torch.rand(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    model.conv1.input_grad = "polyphase"
    assert model.conv1(x).grad_fn is None  # no gradient wanted
    xg = x.clone().requires_grad_()
    assert type(model.conv1(xg).grad_fn).__name__ == "LossStemBackward"
    with torch.autocast("cpu", torch.bfloat16):  # the autocast dtype would change under it
        assert type(model.conv1(xg).grad_fn).__name__ != "LossStemBackward"
    grads = {}
    for mode in ("polyphase", "native", "autograd"):
        model.conv1.input_grad = mode
        xx = x.clone().requires_grad_()
        model.forward_stages(xx)[-1].sum().backward()
        grads[mode] = xx.grad
    # float32: the same sums in another order (~1e-6 relative); a pre-activation within rounding of a
    # ReLU kink may flip, so compare in norm rather than elementwise
    for mode in ("polyphase", "native"):
        assert (grads[mode] - grads["autograd"]).norm() <= 1e-4 * grads["autograd"].norm()
    with pytest.raises(ValueError, match="input_grad"):
        FastStem(model.conv1.conv, input_grad="bogus")
    with pytest.raises(ValueError, match="conv_mode"):
        FastStem(model.conv1.conv, conv_mode="bogus")
    with pytest.raises(ValueError, match="fused 7x7/2 stem conv"):
        FastStem(torch.nn.Conv2d(3, 8, 3))


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (33, 64), (8, 9)])
def test_width_im2col_stem_equals_the_direct_conv_at_inference(size):
    # No autograd: whole batch, sub-batches of 2 images, float64 and float32, against the 7x7 conv.
    for dtype, rel in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        model = fast_resnet6(dtype)
        x = torch.rand(5, 3, *size, dtype=dtype, generator=torch.Generator().manual_seed(3))
        x = x.contiguous(memory_format=torch.channels_last)
        out = {}
        for conv in ("direct", "width_im2col"):
            model.conv1.conv_mode = conv
            for pixels in (2 ** 16, 2 * size[0] * size[1]):
                model.conv1.chunk_pixels = pixels
                with torch.no_grad():
                    out[conv, pixels] = model.forward_stages(x)
        ref = out["direct", 2 ** 16]
        for key, feats in out.items():
            assert all(_close(a, b, rel=rel) for a, b in zip(feats, ref)), key
