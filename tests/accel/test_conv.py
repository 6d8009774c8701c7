"""lowps.accel.conv: merged single-conv blocks on prepacked weights, small maps NCHW and small-map input
gradients as one matrix product equal the plain convs (values, gradients, double backward)."""
import pytest
import torch
import torch.nn.functional as F

from accel_helpers import _close, fast_resnet6
from lowps.accel import conv as conv_mod
from lowps.accel import probe
from lowps.accel import stem as stem_mod
from lowps.accel.conv import FastConvReLU
from lowps.accel.grad import gemm_input_grad


def test_small_map_nchw_path_matches_channels_last_and_tracks_weight_changes():
    model = fast_resnet6(torch.float32)
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    last = model.stages[-1][0]
    for stage in model.stages:
        stage[0].small_map_nchw = True  # on any CPU (the default takes it on AVX-512 CPUs only)
    with torch.no_grad():
        fast = model.forward_stages(x)
        assert hasattr(last, "_nchw_weight")  # the 4x4 -> 2x2 conv took the NCHW path
        for stage in model.stages:
            stage[0].small_map_pixels = 0
        ref = model.forward_stages(x)
        for a, b in zip(fast, ref):
            assert _close(a, b)
        for stage in model.stages:
            stage[0].small_map_pixels = 64
        last.conv.weight.mul_(2)  # an in-place edit must not be served from the stale copy
        edited = model.forward_stages(x)[-1]
        for stage in model.stages:
            stage[0].small_map_pixels = 0
        assert _close(edited, model.forward_stages(x)[-1])
        assert not _close(edited, fast[-1])


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (33, 64), (16, 16), (17, 23)])
def test_loss_gemm_input_grad_equals_autograd(size):
    # Merged blocks on small maps (_LossConvReLU: one matrix product + strided adds for the input
    # gradient) against oneDNN/autograd, in float64, with double backward; which blocks take it depends
    # on the map sizes (64x64: stage 4 only; 37x50: stage 4's 3x4 input; 16x16, the smallest input:
    # stages 2-4, down to a 1x1 map).
    model = fast_resnet6()
    x0 = torch.rand(3, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x0 = x0.contiguous(memory_format=torch.channels_last)
    out = {}
    for mode in ("gemm", "autograd"):
        for stage in model.stages:
            stage[0].loss_input_grad = mode
        x = x0.clone().requires_grad_()
        feats = model.forward_stages(x)
        if mode == "gemm":
            assert type(feats[-1].grad_fn).__name__ == "LossConvReLUBackward"
        loss = sum((f / (f.norm(dim=1, keepdim=True) + 1e-3)).square().mean() for f in feats)
        g, = torch.autograd.grad(loss, x, create_graph=True)
        gg, = torch.autograd.grad((g * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g)).sum(), x)
        out[mode] = ([f.detach() for f in feats], g.detach(), gg)
    (f_fast, g_fast, gg_fast), (f_ref, g_ref, gg_ref) = out["gemm"], out["autograd"]
    assert all(_close(a, b, rel=1e-12) for a, b in zip(f_fast, f_ref))
    assert _close(g_fast, g_ref, rel=1e-9) and g_ref.abs().max() > 0
    assert _close(gg_fast, gg_ref, rel=1e-9) and gg_ref.abs().max() > 0


@pytest.mark.parametrize("k, stride, padding, size", [(3, 2, 1, (4, 4)), (3, 2, 1, (5, 7)), (3, 1, 1, (3, 3)),
                                                      (3, 2, 1, (1, 1)), (1, 2, 0, (6, 5)), (5, 3, 2, (7, 4))])
def test_gemm_input_grad_equals_the_conv_gradient(k, stride, padding, size):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, *size, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(6, 4, k, k, dtype=torch.float64, generator=gen)
    y = F.conv2d(x, w, None, stride, padding)
    g = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    ref, = torch.autograd.grad(y, x, g)
    got = gemm_input_grad(g, w, size, stride, padding)
    assert got.shape == ref.shape and _close(got, ref, rel=1e-12) and ref.abs().max() > 0


def test_loss_gemm_input_grad_gating_and_float32():
    model = fast_resnet6(torch.float32)
    last = model.stages[-1][0]
    x = torch.rand(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    feats_in = torch.rand(4, 256, 4, 4).contiguous(memory_format=torch.channels_last)
    last.loss_input_grad = "gemm"
    assert not last._gemm_grad_applies(feats_in)  # no gradient wanted
    assert last._gemm_grad_applies(feats_in.clone().requires_grad_())
    with torch.autocast("cpu", torch.bfloat16):
        assert not last._gemm_grad_applies(feats_in.clone().requires_grad_())
    assert not model.stages[0][0]._gemm_grad_applies(torch.rand(1, 64, 16, 16, requires_grad=True))  # large map
    grads = {}
    for mode in ("gemm", "autograd"):
        last.loss_input_grad = mode
        xx = x.clone().requires_grad_()
        model.forward_stages(xx)[-1].sum().backward()
        grads[mode] = xx.grad
    # float32: another summation order; a ReLU kink may flip, so compare in norm
    assert (grads["gemm"] - grads["autograd"]).norm() <= 1e-4 * grads["autograd"].norm()
    with pytest.raises(ValueError, match="loss_input_grad"):
        FastConvReLU(last.conv, loss_input_grad="bogus")


def test_loss_gradients_reach_the_relu_masks_in_the_activations_layout(monkeypatch):
    # A stage output's gradient is the head's plus the next stage's input gradient, which is NCHW where
    # that stage runs NCHW (small maps on AVX-512). It is converted back to the channels_last layout of
    # the saved activation before the ReLU mask and the conv's backward (mixed layouts take slow
    # strided loops); values are unchanged.
    model = fast_resnet6(torch.float32)
    for stage in model.stages:
        stage[0].small_map_nchw = True  # stages 3-4 at 64x64 run NCHW
    x0 = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    x0 = x0.contiguous(memory_format=torch.channels_last)

    def channels_last(t: torch.Tensor) -> bool:
        return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()

    def run() -> tuple[torch.Tensor, list[bool], list[bool]]:
        x = x0.clone().requires_grad_()
        feats = model.forward_stages(x)
        seen: dict[int, torch.Tensor] = {}
        for i, f in enumerate(feats[:2]):  # hooks after lowps's: they see what the ReLU mask gets
            f.register_hook(lambda g, i=i: seen.__setitem__(i, g))
        sum((f.mean((2, 3)) * torch.linspace(-1, 1, f.shape[1])).square().sum() for f in feats).backward()
        assert x.grad is not None
        return x.grad, [channels_last(f) for f in feats[:2]], [channels_last(seen[i]) for i in range(2)]

    grad, fwd, bwd = run()
    assert fwd == [True, True] and bwd == [True, True]
    monkeypatch.setattr(conv_mod, "grad_in_forward_layout", lambda t: t)
    monkeypatch.setattr(stem_mod, "grad_in_forward_layout", lambda t: t)
    grad_plain, _, bwd_plain = run()
    assert bwd_plain != [True, True]  # what the conversion fixes
    assert _close(grad, grad_plain, rel=1e-5) and grad.abs().max() > 0


def _packed_used(model) -> list[bool]:
    return ["conv" in b._packed for b in model.modules() if isinstance(b, FastConvReLU)]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("size", [(64, 64), (37, 50), (16, 16)])
def test_packed_weight_convs_equal_the_plain_convs(size):
    # Merged blocks on CPU in float32 run conv + ReLU on a weight prepacked in oneDNN's layout (and the
    # loss path's input gradient as the packed transposed conv): the same kernels as F.conv2d and its
    # backward, so values agree to float32 rounding (1e-5 of the largest; a kernel may differ per
    # machine), gradients in norm (a pre-activation at a ReLU kink may flip), double backward included.
    model = fast_resnet6(torch.float32)
    for stage in model.stages:  # every block on this path, whatever this CPU's automatic choices
        stage[0].small_map_nchw, stage[0].loss_input_grad = False, "autograd"
    gen = torch.Generator().manual_seed(8)
    x0 = torch.rand(3, 3, *size, generator=gen).contiguous(memory_format=torch.channels_last)
    out = {}
    for packed in (True, False):
        for stage in model.stages:
            stage[0].packed_weights, stage[0]._packed = packed, {}
        with torch.no_grad():
            feats = model.forward_stages(x0)
        x = x0.clone().requires_grad_()
        tracked = model.forward_stages(x)
        loss = sum((f / (f.norm(dim=1, keepdim=True) + 1e-3)).square().mean() for f in tracked)
        g, = torch.autograd.grad(loss, x, create_graph=True)
        gg, = torch.autograd.grad((g * torch.linspace(-1, 1, g.numel()).view_as(g)).sum(), x)
        x = x0.clone().requires_grad_()
        sum(f.sum() for f in model.forward_stages(x)).backward()
        out[packed] = (feats, [f.detach() for f in tracked], g.detach(), gg, x.grad)
        assert all(_packed_used(model)) if packed else not any(_packed_used(model))
        assert all("grad" in st[0]._packed for st in model.stages) is packed  # the loss path's gradient
    (f_p, t_p, g_p, gg_p, xg_p), (f_r, t_r, g_r, gg_r, xg_r) = out[True], out[False]
    assert all(_close(a, b) for a, b in zip(f_p + t_p, f_r + t_r))
    for a, b in ((g_p, g_r), (gg_p, gg_r), (xg_p, xg_r)):
        assert (a - b).norm() <= 1e-4 * b.norm() and b.abs().max() > 0


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
def test_packed_weights_follow_weight_edits_and_are_not_serialised():
    import copy
    import io
    model = fast_resnet6(torch.float32)
    for stage in model.stages:
        stage[0].small_map_nchw = False
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        before = model.forward_stages(x)[-1]
        assert all(_packed_used(model))
        last = model.stages[-1][0]
        last.conv.weight.mul_(2.0)  # in place: a new version, so the packed copy is remade
        last.conv.bias.mul_(2.0)
        after = model.forward_stages(x)[-1]
        for stage in model.stages:
            stage[0].packed_weights = False
        plain = model.forward_stages(x)[-1]
        for stage in model.stages:
            stage[0].packed_weights = True
    assert _close(after, plain) and not _close(after, before)
    # copies and pickles carry no opaque oneDNN tensor, and give the same values
    clone = copy.deepcopy(model)
    assert not any(_packed_used(clone))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert _close(clone.forward_stages(x)[-1], after) and _close(loaded.forward_stages(x)[-1], after)
    model.to(torch.float64)  # .to() drops the cache; float64 takes the plain convs
    assert not any(_packed_used(model))
    with torch.no_grad():
        assert _close(model.forward_stages(x.double())[-1], after.double(), rel=1e-5)
    assert not any(_packed_used(model))


def test_packed_weights_step_aside_where_the_ops_are_missing_or_counted(monkeypatch):
    # A PyTorch without working prepacked ops (checked once, `_packed_ops_work`) and calls under a
    # dispatch mode (FlopCounterMode counts aten convs) take the plain convs, with the same values.
    from torch.utils.flop_counter import FlopCounterMode

    model = fast_resnet6(torch.float32)
    for stage in model.stages:
        stage[0].small_map_nchw = False
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ref = model.forward_stages(x)[-1]
    assert not any(_packed_used(model))
    assert counter.get_total_flops() == 2 * 2 * 33_226_752  # every conv of ResNet-6, counted
    monkeypatch.setattr(probe, "packed_ops_work", lambda: False)
    with torch.no_grad():
        assert _close(model.forward_stages(x)[-1], ref)
    assert not any(_packed_used(model))

