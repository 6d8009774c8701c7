"""Properties every head must have, on the real ResNet-6 trunk (random weights: fast, deterministic)."""
import warnings

import pytest
import torch

import lowps
from conftest import autograd_node_names, pair

HEADS = ["structure", "local", "meanpool", "style", "linear"]


def metric(head, **kw):
    extra = {"head_weights": "ones"} if head == "linear" else {}
    return lowps.PerceptualDistance(distance=head, weights="random", **extra, **kw)


@pytest.fixture(scope="module", params=HEADS)
def head_metric(request):
    return request.param, metric(request.param)


def test_identity_is_zero(head_metric):
    _, m = head_metric
    x, _ = pair(3)
    assert torch.equal(m(x, x), torch.zeros(3))


def test_symmetry_and_nonnegativity(head_metric):
    _, m = head_metric
    x, y = pair(3)
    d = m(x, y)
    assert d.shape == (3,) and (d > 0).all()
    assert torch.allclose(d, m(y, x), rtol=1e-5, atol=1e-8)


def test_sample_independent_of_batch(head_metric):
    _, m = head_metric
    x, y = pair(4)
    d = m(x, y)
    for i in range(4):
        assert torch.allclose(m(x[i:i + 1], y[i:i + 1]), d[i:i + 1], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kind", ["equal", "constant", "zeros", "random"])
def test_finite_gradients(head_metric, kind):
    _, m = head_metric
    x, y = pair(2)
    if kind == "equal":
        y = x.clone()
    elif kind == "constant":
        x, y = torch.full_like(x, 0.5), torch.full_like(y, 0.5)
    elif kind == "zeros":
        x, y = torch.zeros_like(x), torch.zeros_like(y)
    x.requires_grad_(True)
    y.requires_grad_(True)
    m(x, y).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_float64(head_metric):
    name, m32 = head_metric
    x, y = pair(2)
    m64 = metric(name).double()
    d64 = m64(x.double(), y.double())
    assert d64.dtype == torch.float64
    assert torch.allclose(d64.float(), m32(x, y), rtol=1e-4, atol=1e-7)


def test_bf16_autocast(head_metric):
    _, m = head_metric
    x, y = pair(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = m(x, y)
    assert d.dtype == torch.float32 and torch.isfinite(d).all()
    ref = m(x, y)
    assert torch.allclose(d, ref, rtol=0.1, atol=1e-4)  # bf16 trunk, fp32 head: ~1e-2 relative


def test_deterministic_repeat(head_metric):
    _, m = head_metric
    x, y = pair(2)
    assert torch.equal(m(x, y), m(x, y))


def test_per_layer_sums_to_total(head_metric):
    _, m = head_metric
    x, y = pair(2)
    total, per = m(x, y, per_layer=True)
    assert list(per) == ["stage1", "stage2", "stage3", "stage4"]
    assert torch.allclose(sum(per.values()), total)


def test_layer_selection_by_name_and_index():
    x, y = pair(2)
    full, per = metric("meanpool")(x, y, per_layer=True)
    only3 = metric("meanpool", layers=["stage3"])(x, y)
    assert torch.allclose(only3, per["stage3"])
    assert torch.allclose(metric("meanpool", layers=[2])(x, y), only3)
    with pytest.raises(ValueError, match="stage1, stage2, stage3, stage4"):
        metric("meanpool", layers=["conv5"])


def test_spatial_map_shape_and_mean():
    x, y = pair(2, size=64)
    m = metric("local")
    smap = m.spatial(x, y)
    assert smap.shape == (2, 1, 64, 64)
    assert torch.allclose(smap.mean((1, 2, 3)), m(x, y), rtol=0.05)
    total, per = m.spatial(x, y, per_layer=True)
    assert torch.allclose(sum(per.values()), total)
    assert metric("linear").spatial(x[:, :, :48], y[:, :, :48]).shape == (2, 1, 48, 64)
    with pytest.raises(ValueError, match="no spatial map"):
        metric("meanpool").spatial(x, y)


def test_gradients_make_a_usable_loss():
    x, y = pair(1)
    x.requires_grad_(True)
    m = metric("local")
    opt = torch.optim.Adam([x], lr=0.02)
    first = float(m(x, y).detach())
    for _ in range(20):
        opt.zero_grad()
        loss = m(x.clamp(0, 1), y).sum()
        loss.backward()
        opt.step()
    assert float(m(x.clamp(0, 1), y).detach()) < 0.7 * first


def test_input_range_minus_one_one_gives_same_distance():
    x, y = pair(2)
    a = metric("meanpool")(x, y)
    b = metric("meanpool", input_range=(-1, 1))(x * 2 - 1, y * 2 - 1)
    assert torch.allclose(a, b, rtol=1e-5)


def test_greyscale_is_repeated_to_rgb():
    x, y = pair(2)
    m = metric("meanpool")
    g0, g1 = x[:, :1], y[:, :1]
    assert torch.allclose(m(g0, g1), m(g0.repeat(1, 3, 1, 1), g1.repeat(1, 3, 1, 1)))


def test_unbatched_input():
    x, y = pair(1)
    m = metric("meanpool")
    assert torch.allclose(m(x[0], y[0]), m(x, y))


def test_module_is_frozen_and_stays_in_eval():
    m = metric("meanpool")
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    m.train()
    assert not m.backbone.training


def test_linear_needs_explicit_head_weights():
    with pytest.raises(ValueError, match="head_weights"):
        lowps.PerceptualDistance(distance="linear", weights="random")
    with pytest.raises(ValueError, match="only applies"):
        lowps.PerceptualDistance(distance="meanpool", weights="random", head_weights="ones")


def test_vit_backbone_any_size_multiple_of_patch():
    m = lowps.PerceptualDistance(backbone="vit_base_patch8_64", weights="random")
    x, y = pair(1, size=32)
    assert m(x, y).shape == (1,)
    with pytest.raises(lowps.InputError, match="multiples of 8"):
        m(x[:, :, :30, :30], y[:, :, :30, :30])


def test_dtype_mismatch_is_an_error():
    x, y = pair(1)
    with pytest.raises(ValueError, match="metric.to"):
        metric("meanpool")(x.double(), y.double())


def _close_to_scale(a, b, rel=1e-5):
    # float32 convs pick other kernels (other summation orders) for other batch sizes: results move by
    # ~1e-7..1e-6 of the tensor's magnitude (seen up to 4.8e-7 on AVX-512 and AVX2 machines); 1e-5 of the
    # largest value leaves 10x margin and still catches any real chunking error (a wrong slice is O(1)).
    return bool((a - b).abs().max() <= rel * b.abs().max() + 1e-12)


@pytest.mark.parametrize("head", HEADS)
def test_chunked_calls_equal_one_big_call(head):
    m = metric(head)
    x, y = pair(5)
    full, per = m(x, y, per_layer=True)
    m._chunk_pixels = 2 * 64 * 64 * 2  # two pairs per backbone call: chunks of 2, 2, 1
    assert len(m._chunks(x)) == 3
    chunked, per_c = m(x, y, per_layer=True)
    assert _close_to_scale(chunked, full)
    assert all(_close_to_scale(per_c[k], per[k]) for k in per)
    f = m.embed(x)
    m._chunk_pixels = 2 ** 30
    g = m.embed(x)
    assert f.shape == g.shape and _close_to_scale(f, g)
    m._chunk_pixels = 64 * 64  # below one pair: each image gets its own forward
    assert _close_to_scale(m(x, y), full)


def test_chunked_spatial_and_gradients_equal_one_call():
    m = metric("local")
    x, y = pair(3)
    x.requires_grad_(True)
    d = m(x, y)
    (gx,) = torch.autograd.grad(d.sum(), x)
    s = m.spatial(x.detach(), y)
    m._chunk_pixels = 64 * 64 * 2
    d2 = m(x, y)
    (gx2,) = torch.autograd.grad(d2.sum(), x)
    # chunk sizes change the batch each conv sees, hence its kernel: compare gradients to their scale
    assert torch.allclose(d2, d, rtol=1e-5) and _close_to_scale(gx2, gx)
    assert _close_to_scale(m.spatial(x.detach(), y), s)
    m._chunk_pixels = 64 * 64  # one image per forward
    d3 = m(x, y)
    (gx3,) = torch.autograd.grad(d3.sum(), x)
    # (batch 1 vs 3 may pick other conv kernels: compare against the gradient's scale)
    assert torch.allclose(d3, d, rtol=1e-5) and (gx3 - gx).abs().max() <= 1e-5 * gx.abs().max()


@pytest.mark.parametrize("tracked", ["one", "both"])
def test_chunked_loss_splits_the_batch_instead_of_slicing_it(tracked):
    # A slice's backward zero-fills a gradient the size of the whole batch for every chunk and adds
    # them up (~65 of ~880 ms of a 256x256/32 loss step); a split's backward is one concatenation.
    m = metric("meanpool")
    x, y = pair(5)
    x.requires_grad_(True)
    y.requires_grad_(tracked == "both")
    m._chunk_pixels = 2 * 64 * 64 * 2  # chunks of 2, 2, 1 pairs
    nodes = autograd_node_names(m(x, y).sum())
    assert "SliceBackward0" not in nodes and "SplitBackward0" in nodes


@pytest.mark.parametrize("head", ["meanpool", "local"])
def test_bf16_precision_close_to_fp32(head):
    ref = lowps.PerceptualDistance(distance=head)
    fast = lowps.PerceptualDistance(distance=head, precision="bf16", force_precision=True)
    assert next(fast.backbone.parameters()).dtype == torch.bfloat16 and "precision='bf16'" in repr(fast)
    x, y = pair(6)
    y = (0.7 * x + 0.3 * y)  # realistic, not-too-far pairs
    d, d16 = ref(x, y), fast(x, y)
    assert d16.dtype == torch.float32
    # Documented tolerance (docs/performance.md): 3% relative per pair.
    assert torch.allclose(d16, d, rtol=0.03, atol=0)
    assert torch.equal(fast(x, x), torch.zeros(6))


def test_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="precision 'fp8'.*fp32, bf16, fp16"):
        lowps.PerceptualDistance(weights="random", precision="fp8")


@pytest.mark.slow
def test_torch_compile_matches_eager():
    m = lowps.PerceptualDistance()
    x, y = pair(4)
    ref = m(x, y)
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = torch.compile(m)(x, y)
    # lowps's CPU checks are constants to dynamo (lowps.accel.probe), not cache wrappers it traces through
    assert not [w for w in caught if "lru_cache" in str(w.message)], [str(w.message) for w in caught]
    # Documented tolerance for torch.compile: 1e-5 relative (inductor may reorder float sums).
    assert torch.allclose(d, ref, rtol=1e-5, atol=1e-9)


def test_bf16_falls_back_to_fp32_without_native_bf16(monkeypatch):
    import warnings

    import lowps.metric as lm
    monkeypatch.setattr(lm, "native_low_precision", lambda precision, device="cpu": precision == "fp32")
    monkeypatch.setattr(lm, "_WARNED", set())
    x, y = pair(2)
    with pytest.warns(RuntimeWarning, match="no fast native bf16"):
        m = lowps.PerceptualDistance(weights="random", precision="bf16")
    assert m.precision == "fp32" and m.requested_precision == "bf16"
    assert next(m.backbone.parameters()).dtype == torch.float32
    assert torch.allclose(m(x, y), lowps.PerceptualDistance(weights="random")(x, y), rtol=1e-5, atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process, not per module
        lowps.PerceptualDistance(weights="random", precision="bf16")
    forced = lowps.PerceptualDistance(weights="random", precision="bf16", force_precision=True)
    assert forced.precision == "bf16" and next(forced.backbone.parameters()).dtype == torch.bfloat16


def test_bf16_kept_where_native(monkeypatch):
    import lowps.metric as lm
    monkeypatch.setattr(lm, "native_low_precision", lambda precision, device="cpu": True)
    m = lowps.PerceptualDistance(weights="random", precision="bf16")
    assert m.precision == "bf16" and next(m.backbone.parameters()).dtype == torch.bfloat16


def test_no_call_touches_the_allocator_and_the_old_opt_in_is_deprecated(monkeypatch):
    # Issue #36: a library call must not change process-global state: the allocator tuning is
    # lowps.accel.tune_allocator(), called explicitly; the 0.2 attribute warns and does that.
    from lowps.accel import allocator

    calls = []
    monkeypatch.setattr(allocator, "raise_malloc_thresholds", lambda: calls.append(1) or True)
    m = metric("meanpool")
    x, y = pair(2)
    with torch.inference_mode():
        m(x, y)
        m.embed(x)
    m(x.clone().requires_grad_(), y).sum().backward()
    assert calls == []
    with pytest.warns(DeprecationWarning, match="tune_allocator"):
        m.raise_malloc_thresholds = True
    assert calls == [1]
    with pytest.warns(DeprecationWarning, match="chunk_pixels"):
        assert m.chunk_pixels == m._chunk_pixels
