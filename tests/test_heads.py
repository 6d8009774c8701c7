import pytest
import torch

from conftest import autograd_node_names
from lowps.heads import HEADS, LinearHead, StructureHead, StyleHead, create_head, spatial_mean, unit_normalize

CH = [4, 6]


def feats(seed, n=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 4, 8, 8, generator=g), torch.rand(n, 6, 4, 4, generator=g)]


def test_unit_normalize_matches_lpips_formula_and_has_finite_gradient_at_zero():
    f = torch.randn(2, 5, 3, 3)
    lpips_style = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    assert torch.allclose(unit_normalize(f), lpips_style, atol=1e-7)
    z = torch.zeros(1, 5, 2, 2, requires_grad=True)
    unit_normalize(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_local_head_is_lpips_eq1():
    a, b = feats(0), feats(1)
    head = create_head("local", CH)
    want = sum(((unit_normalize(x) - unit_normalize(y)) ** 2).sum(1).mean((1, 2)) for x, y in zip(a, b))
    assert torch.allclose(head(a, b, [0, 1]).sum(1), want)


def test_meanpool_head_formula():
    a, b = feats(0), feats(1)
    head = create_head("meanpool", CH)
    want = sum(((unit_normalize(x.mean((2, 3))) - unit_normalize(y.mean((2, 3)))) ** 2).sum(1) / x.shape[1]
               for x, y in zip(a, b))
    assert torch.allclose(head(a, b, [0, 1]).sum(1), want)


def pearson(a, b):
    """Per-channel Pearson correlation over positions, written out: (N, C)."""
    za, zb = a.flatten(2) - a.flatten(2).mean(2, keepdim=True), b.flatten(2) - b.flatten(2).mean(2, keepdim=True)
    return (za * zb).sum(2) / (za.pow(2).sum(2).sqrt() * zb.pow(2).sum(2).sqrt())


def test_structure_head_is_one_minus_correlation_plus_meanpool():
    a, b = feats(0), feats(1)
    a, b = [x.double() for x in a], [x.double() for x in b]
    meanpool = create_head("meanpool", CH)(a, b, [0, 1])
    want = torch.stack([(1 - pearson(x, y)).mean(1) for x, y in zip(a, b)], 1)
    # eps = 1e-2 against features of standard deviation ~0.29: rho moves by ~(eps / sd)^2 ~ 1e-3
    head = StructureHead(CH, eps=1e-6)
    assert torch.allclose(head(a, b, [0, 1]), want + meanpool, atol=1e-9)
    assert torch.allclose(StructureHead(CH, texture_weight=0.0, eps=1e-6)(a, b, [0, 1]), want, atol=1e-9)
    assert torch.allclose(StructureHead(CH, texture_weight=3.0, eps=1e-6)(a, b, [0, 1]), want + 3 * meanpool,
                          atol=1e-9)
    default = create_head("structure", CH)(a, b, [0, 1])
    assert torch.allclose(default, want + meanpool, atol=2e-3) and not torch.allclose(default, want + meanpool,
                                                                                       atol=1e-6)


def test_structure_head_sees_colour_that_correlation_alone_misses():
    # two flat feature maps of different levels: every correlation is undefined -> the structure term is 0;
    # the texture (meanpool) term keeps them apart
    a = [torch.ones(1, 4, 8, 8) * torch.tensor([1.0, 2, 3, 4])[:, None, None]]
    b = [torch.ones(1, 4, 8, 8) * torch.tensor([4.0, 3, 2, 1])[:, None, None]]
    assert float(StructureHead([4], texture_weight=0.0)(a, b, [0])) == 0.0
    assert float(StructureHead([4])(a, b, [0])) > 0.1
    assert float(StructureHead([4])(a, a, [0])) == 0.0


def test_structure_head_gradient_is_finite_on_constant_maps():
    a = torch.zeros(2, 4, 2, 2, requires_grad=True)  # dead ReLUs, or a flat image's deep map
    b = torch.rand(2, 4, 2, 2)
    StructureHead([4])([a], [b], [0]).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_structure_head_map_averages_to_the_distance():
    a, b = feats(0), feats(1)
    head = create_head("structure", CH)
    for i in range(2):
        assert torch.allclose(head.layer_map(i, a[i], b[i]).mean((1, 2, 3)), head.layer(i, a[i], b[i]), rtol=1e-5)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1"])
def test_structure_head_rejects_bad_texture_weight(bad):
    with pytest.raises(ValueError, match="texture_weight"):
        StructureHead(CH, texture_weight=bad)


def test_style_gram_is_normalised_by_positions():
    # documented choice: G = U U^T / (H W) with unit-normalised U, so entries lie in [-1, 1]
    f = torch.rand(2, 4, 8, 8) * 100
    g = StyleHead([4]).gram(f)
    assert g.shape == (2, 4, 4) and float(g.abs().max()) <= 1 + 1e-6
    # size independence: tiling the same pattern does not change the Gram matrix
    assert torch.allclose(StyleHead([4]).gram(f.repeat(1, 1, 2, 2)), g, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 8, 6, 6), (5, 64, 2, 3), (5, 32, 4, 4)])  # n >= C, n < C, n < C
def test_style_head_equals_direct_gram_formula(shape):
    # Reference: the formula as written, on C x C Gram matrices in float64 (of the same float32
    # unit-normalised features the head sees: that normalisation is float32 in both).
    g = torch.Generator().manual_seed(0)
    a = torch.randn(shape, generator=g)
    b = a + 1e-3 * torch.randn(shape, generator=g)  # close pairs: where cancellation would show
    b[0] = torch.randn(shape[1:], generator=g)  # and one far pair
    c, n = shape[1], shape[2] * shape[3]
    ua, ub = unit_normalize(a).double().flatten(2), unit_normalize(b).double().flatten(2)
    ga, gb = ua @ ua.transpose(1, 2) / n, ub @ ub.transpose(1, 2) / n
    want = (ga - gb).pow(2).sum((1, 2)) / (c * c)
    for norm, scale in (("hw", 1.0), ("none", float(n * n))):  # without / (H W): G grows by HW, d by (HW)^2
        head = StyleHead([c], style_norm=norm)
        head.chunk_elements = 2 * c * c  # several chunks on the C x C path
        got = head([a], [b], [0])[:, 0]
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), want * scale, rtol=1e-5, atol=0)
        assert torch.equal(head([a], [a], [0]), torch.zeros(5, 1))


def test_linear_head_with_ones_equals_local():
    a, b = feats(0), feats(1)
    assert torch.allclose(create_head("linear", CH)(a, b, [0, 1]), create_head("local", CH)(a, b, [0, 1]))


def test_linear_head_weighting_and_check():
    head = LinearHead(CH)
    with torch.no_grad():
        head.lin0.weight.zero_()
    a, b = feats(0), feats(1)
    assert torch.allclose(head(a, b, [0]), torch.zeros(3, 1))
    with torch.no_grad():
        head.lin1.weight[0, 0] = -1.0
    with pytest.raises(ValueError, match=">= 0"):
        head.check()
    head.clamp_()
    head.check()


def test_maps_only_for_local_linear_and_structure():
    a, b = feats(0), feats(1)
    assert create_head("local", CH).maps(a, b, [0, 1], (16, 16)).shape == (3, 2, 16, 16)
    assert create_head("structure", CH).maps(a, b, [0, 1], (16, 16)).shape == (3, 2, 16, 16)
    with pytest.raises(NotImplementedError, match="spatial"):
        create_head("meanpool", CH).maps(a, b, [0], (16, 16))


def test_unknown_head_lists_choices():
    with pytest.raises(ValueError, match="meanpool"):
        create_head("cosine", CH)


def test_heads_registry():
    assert set(HEADS) == {"structure", "local", "meanpool", "style", "linear"}


def test_style_norm_is_switchable_and_checked():
    import lowps
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    hw = lowps.PerceptualDistance(distance="style", weights="random")
    none = lowps.PerceptualDistance(distance="style", weights="random", style_norm="none")
    _, per_hw = hw(x, y, per_layer=True)
    _, per_none = none(x, y, per_layer=True)
    sizes = {"stage1": 16 * 16, "stage2": 8 * 8, "stage3": 4 * 4, "stage4": 2 * 2}
    for k, n in sizes.items():  # per layer the two differ by exactly (H W)^2
        assert torch.allclose(per_none[k], per_hw[k] * n * n, rtol=1e-4)
    with pytest.raises(ValueError, match="style_norm"):
        lowps.PerceptualDistance(distance="style", weights="random", style_norm="gatys")
    with pytest.raises(ValueError, match="applies only to distance='style'"):
        lowps.PerceptualDistance(distance="local", weights="random", style_norm="none")


def test_linear_head_dropout_in_train_mode_only():
    a, b = feats(0), feats(1)
    head = LinearHead(CH)
    head.dropout = 0.5
    ref = head.eval()(a, b, [0, 1])
    assert torch.equal(head(a, b, [0, 1]), ref)  # eval: no dropout, deterministic
    head.train()
    torch.manual_seed(0)
    d1 = head(a, b, [0, 1])
    torch.manual_seed(1)
    d2 = head(a, b, [0, 1])
    assert not torch.equal(d1, d2) and not torch.equal(d1, ref)


def test_linear_head_lr_schedule_is_lpips_train_script():
    from lowps.train.linear import lr_factor
    # lpips train.py, nepoch=5, nepoch_decay=5: update_learning_rate after each 1-based epoch > 5
    lr, rates = 1.0, []
    for epoch in range(1, 11):
        rates.append(lr)
        if epoch > 5:
            lr -= 1.0 / 5
    assert [lr_factor(e, 5, 5) for e in range(10)] == pytest.approx(rates)


@pytest.mark.parametrize("shape", [(4, 64, 16, 16), (3, 7, 5, 9), (2, 512, 2, 2)])
def test_spatial_mean_equals_mean_and_keeps_the_gradient_in_the_maps_layout(shape):
    # The same reduction over the same memory: bit-identical values, also accumulating bf16 in float32.
    f = torch.randn(shape, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    assert torch.equal(spatial_mean(f), f.mean((2, 3), keepdim=True))
    assert torch.equal(spatial_mean(f.bfloat16(), torch.float32),
                       f.bfloat16().mean((2, 3), keepdim=True, dtype=torch.float32))
    # mean's own backward materialises NCHW; a channels_last map gets a channels_last gradient
    fg = f.clone().requires_grad_(True)
    g, = torch.autograd.grad(spatial_mean(fg * 1).square().sum(), fg)
    assert g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous()
    nchw = f.contiguous().requires_grad_(True)
    g2, = torch.autograd.grad(spatial_mean(nchw * 1).square().sum(), nchw)
    # (an NCHW map is reduced in another order: its mean may differ in the last bit)
    assert g2.is_contiguous() and (g2 - g).abs().max() <= 1e-6 * g.abs().max()


@pytest.mark.parametrize("name", ["structure", "meanpool", "local", "style"])
def test_head_gradients_arrive_in_the_features_layout(name):
    # The backbone's stage outputs are channels_last; a gradient in another layout costs a mixed-layout
    # add (with the next stage's gradient) and a conversion before every conv's backward.
    a = [t.contiguous(memory_format=torch.channels_last) * 1 for t in feats(0)]
    b = [t.contiguous(memory_format=torch.channels_last) for t in feats(1)]
    a = [t.requires_grad_(True) for t in a]
    grads = torch.autograd.grad(create_head(name, CH)(a, b, [0, 1]).sum(), a)
    assert all(g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous() for g in grads)


def _local_heads():
    local, linear = create_head("local", CH).double(), create_head("linear", CH).double()
    with torch.no_grad():
        for i in range(len(CH)):
            getattr(linear, f"lin{i}").weight.copy_(torch.rand(1, CH[i], 1, 1, generator=torch.Generator().manual_seed(i)))
    return {"local": local.requires_grad_(False), "linear": linear.requires_grad_(False)}


def _feature_pair(tracked):
    a = [t.double().contiguous(memory_format=torch.channels_last) for t in feats(0)]
    b = [t.double().contiguous(memory_format=torch.channels_last) for t in feats(1)]
    return [t.requires_grad_("a" in tracked) for t in a], [t.requires_grad_("b" in tracked) for t in b]


def _fused_then_plain(monkeypatch, plain_switch, run):
    """``run()`` through the heads' fused layers, then again with ``plain_switch`` (a name in lowps.heads
    and its replacement) patched in, so that the heads take their plain ops: (fused, plain)."""
    import lowps.heads as heads
    fused = run()
    monkeypatch.setattr(heads, *plain_switch)
    return fused, run()


_LOCAL_PLAIN = ("_fused_local_applies", lambda *args: False)
_STRUCTURE_PLAIN = ("plain_ops_only", lambda: True)


def _derivatives(head, a, b):
    """Distances, gradients (create_graph), a gradient penalty's gradients (backward through the
    gradient) and the graph's autograd nodes, for the inputs that require grad."""
    d = head(a, b, [0, 1])
    inputs = [t for t in a + b if t.requires_grad]
    weights = torch.linspace(-1, 2, d.numel(), dtype=d.dtype).view_as(d)
    g = torch.autograd.grad((d * weights).sum(), inputs, create_graph=True)
    gg = torch.autograd.grad(sum((x * x).sum() for x in g), inputs)
    return d.detach(), [x.detach() for x in g], gg, autograd_node_names(d)


def _batched_jacobian(head, a, b):
    """The Jacobian of the distances in ``a`` by a vmapped backward (``is_grads_batched``)."""
    d = head(a, b, [0, 1])
    eye = torch.eye(d.numel(), dtype=d.dtype).view(-1, *d.shape)
    return torch.autograd.grad(d, a, eye, is_grads_batched=True)


@pytest.mark.parametrize("name", ["local", "linear"])
@pytest.mark.parametrize("tracked", ["a", "b", "ab"])
def test_fused_local_layer_equals_autograd_through_the_plain_ops(name, tracked, monkeypatch):
    # _LocalLayer (closed-form backward) against autograd through the plain ops, in float64: the same
    # values bit for bit, gradients (first order and, under create_graph, second order) to rounding.
    head = _local_heads()[name]
    (d1, g1, gg1, names1), (d0, g0, gg0, names0) = _fused_then_plain(
        monkeypatch, _LOCAL_PLAIN, lambda: _derivatives(head, *_feature_pair(tracked)))
    assert "_LocalLayerBackward" in names1 and "_LocalLayerBackward" not in names0
    assert torch.equal(d1, d0)
    for x, y in zip(g1 + list(gg1), g0 + list(gg0)):
        assert (x - y).abs().max() <= 1e-12 * y.abs().max() and y.abs().max() > 0
        assert x.stride() == y.stride()  # channels_last, as the features


@pytest.mark.parametrize("name", ["local", "linear"])
def test_fused_local_layer_under_batched_gradients(name, monkeypatch):
    # is_grads_batched (a vmapped backward, as vectorised Jacobians use) through _LocalLayer's backward
    head = _local_heads()[name]
    fused, plain = _fused_then_plain(monkeypatch, _LOCAL_PLAIN, lambda: _batched_jacobian(head, *_feature_pair("a")))
    for x, y in zip(fused, plain):
        assert (x - y).abs().max() <= 1e-12 * y.abs().max() and y.abs().max() > 0


def test_fused_local_layer_only_for_frozen_weights_with_feature_gradients():
    head = _local_heads()["linear"]
    a, b = _feature_pair("")
    assert head(a, b, [0, 1]).grad_fn is None  # inference: the plain ops, no graph
    a, b = _feature_pair("a")
    assert "_LocalLayerBackward" in autograd_node_names(head(a, b, [0, 1]))
    head.requires_grad_(True)  # training the linear weights: autograd through the plain ops
    names = autograd_node_names(head(a, b, [0, 1]))
    assert "_LocalLayerBackward" not in names and "ConvolutionBackward0" in names


def _structure_pair(tracked, seed=0):
    # float64 channels_last maps, one with a near-copy of the other (the small-distance regime a loss
    # converges to) and one unrelated, plus a constant channel (dead ReLU) where eps matters
    a, b = _feature_pair(tracked)
    with torch.no_grad():
        b[0][1].copy_(a[0][1] + 1e-3 * torch.randn(a[0][1].shape, generator=torch.Generator().manual_seed(seed),
                                                  dtype=a[0].dtype))
        a[1][:, 2] = 0.5
    return a, b


@pytest.mark.parametrize("texture_weight", [1.0, 0.0])
@pytest.mark.parametrize("tracked", ["a", "b", "ab"])
def test_fused_structure_layer_equals_autograd_through_the_standardised_maps(tracked, texture_weight, monkeypatch):
    # _StructureLayer (statistics + closed-form backward) against autograd through the plain ops (the
    # standardised maps), in float64: values, gradients and, under create_graph, second-order gradients
    # to rounding; gradients keep the features' channels_last layout
    head = StructureHead(CH, texture_weight=texture_weight).double()
    (d1, g1, gg1, names1), (d0, g0, gg0, names0) = _fused_then_plain(
        monkeypatch, _STRUCTURE_PLAIN, lambda: _derivatives(head, *_structure_pair(tracked)))
    assert "_StructureLayerBackward" in names1 and "_StructureLayerBackward" not in names0
    assert (d1 - d0).abs().max() <= 1e-12 * d0.abs().max()
    assert d1[1, 0] < 1e-3 * d1[0, 0]  # the near-copy is near 0, and still exact to rounding above
    for x, y in zip(g1 + list(gg1), g0 + list(gg0)):
        assert (x - y).abs().max() <= 1e-10 * y.abs().max() and y.abs().max() > 0
        assert x.stride() == y.stride()


def test_fused_structure_layer_under_batched_gradients(monkeypatch):
    head = StructureHead(CH).double()
    fused, plain = _fused_then_plain(monkeypatch, _STRUCTURE_PLAIN,
                                     lambda: _batched_jacobian(head, *_structure_pair("a")))
    for x, y in zip(fused, plain):
        assert (x - y).abs().max() <= 1e-10 * y.abs().max() and y.abs().max() > 0


def test_fused_structure_layer_in_float32_is_as_close_to_float64_as_the_plain_ops(monkeypatch):
    # the statistics form must not lose precision against the standardised maps: both within float32
    # rounding of the float64 distance, on near-copies (small distances) and unrelated maps
    a, b = _structure_pair("")
    want = StructureHead(CH).double()(a, b, [0, 1])
    a32, b32 = [t.float() for t in a], [t.float() for t in b]
    for got in _fused_then_plain(monkeypatch, _STRUCTURE_PLAIN, lambda: StructureHead(CH)(a32, b32, [0, 1]).double()):
        assert ((got - want).abs() <= 1e-5 * want.abs() + 1e-9).all()


def test_style_loss_on_channels_last_maps_equals_the_inference_formula():
    # Under autograd, channels_last maps go through the Gram products as (N, positions, C) views, for
    # channels_last gradients; both branches (a layer with fewer positions than channels, 2x2 with 32
    # channels, takes the float64 low-rank form): the distances of inference, gradients to rounding.
    g = torch.Generator().manual_seed(5)
    a = [torch.rand(3, 4, 8, 8, generator=g), torch.rand(3, 32, 2, 2, generator=g)]
    b = [t + 0.2 * torch.rand(t.shape, generator=g) for t in a]
    head = create_head("style", [4, 32])
    cl = [[t.contiguous(memory_format=torch.channels_last) for t in f] for f in (a, b)]
    with torch.no_grad():
        want = head(cl[0], cl[1], [0, 1])
    tracked = [t.clone().requires_grad_(True) for t in cl[0]]
    d = head(tracked, cl[1], [0, 1])
    grads = torch.autograd.grad(d.sum(), tracked)
    nchw = [t.contiguous().requires_grad_(True) for t in a]
    ref = torch.autograd.grad(head(nchw, [t.contiguous() for t in b], [0, 1]).sum(), nchw)
    assert torch.allclose(d, want, rtol=1e-6, atol=0)
    for x, y in zip(grads, ref):
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        assert (x - y).abs().max() <= 1e-5 * y.abs().max() and y.abs().max() > 0
