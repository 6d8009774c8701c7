"""One metric object works in every autograd mode, in any order (inference_mode, no_grad, grad, forward-mode
AD, torch.func transforms and batched backwards, autocast, low precision, after .to()/deepcopy/pickle, from
several threads at once).

Whatever a metric precomputes for speed (ResNet-6's NCHW weight copies) must never be an inference
tensor that a later autograd call touches. Values are compared with rtol 1e-4: the calls run the same
kernels on the same batch, so they agree to float32 rounding (~1e-6 relative in a feature), which the
difference of two unit vectors in a distance of ~1e-1 per layer amplifies by at most ~10-100x.
"""
import copy
import pickle
import threading

import pytest
import torch

import lowps
from conftest import pair
from lowps.functional import clear_cache

HEADS = ["structure", "meanpool", "local", "style", "linear"]
# One of each kind of trunk: the paper's fused ResNet-6, a TPU ResNet with basic blocks, a timm CNN,
# and a ViT (CLS taps). Random weights where nothing is shipped.
KINDS = {"resnet6": (None, 64), "resnet10": ("random", 64), "timm:resnet18": ("random", 64),
         "vit_base_patch8_64": ("random", 32)}
RTOL, ATOL = 1e-4, 1e-9


def _metric(backbone, head, **kw):
    weights, _ = KINDS[backbone]
    extra = {"head_weights": "ones"} if head == "linear" else {}
    return lowps.PerceptualDistance(backbone=backbone, distance=head, weights=weights, **extra, **kw)


def _grad_call(fn, x, y):
    x = x.clone().requires_grad_(True)
    d = fn(x, y)
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    return d.detach(), x.grad


def _sequence(fn, x, y):
    """inference_mode -> grad -> no_grad -> inference_mode -> grad; all values and both gradients equal."""
    with torch.inference_mode():
        ref = fn(x, y).clone()
    d1, g1 = _grad_call(fn, x, y)
    with torch.no_grad():
        d2 = fn(x, y)
    with torch.inference_mode():
        d3 = fn(x, y).clone()
    d4, g4 = _grad_call(fn, x, y)
    for d in (d1, d2, d3, d4):
        torch.testing.assert_close(d, ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(g4, g1, rtol=RTOL, atol=1e-8)
    return ref


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("backbone", list(KINDS))
def test_module_any_order_of_modes(backbone, head):
    x, y = pair(2, size=KINDS[backbone][1])
    _sequence(_metric(backbone, head), x, y)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("tracked", [False, True])
def test_forward_mode_ad_agrees_with_backward(head, tracked):
    # torch.autograd.forward_ad (dual tensors), also on a tensor that requires grad (the loss path's
    # custom Functions have no forward derivative, so they must stand aside), and torch.func.jvp:
    # the directional derivative equals the gradient's dot product with the tangent. Two AD modes in
    # float32 sum in different orders, so they agree to ~1e-5 relative; 1e-3 catches a missing term.
    import torch.autograd.forward_ad as fwad
    metric = _metric("resnet6", head)
    x, y = pair(2, seed=3)
    t = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    _, g = _grad_call(metric, x, y)
    want = (g * t).flatten(1).sum(1)
    with fwad.dual_level():
        dual = fwad.make_dual(x.clone().requires_grad_(tracked), t)
        jvp = fwad.unpack_dual(metric(dual, y)).tangent
    torch.testing.assert_close(jvp.detach(), want, rtol=1e-3, atol=1e-9)
    _, jvp2 = torch.func.jvp(lambda a: metric(a, y), (x,), (t,))
    torch.testing.assert_close(jvp2, want, rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("head", HEADS)
def test_double_backward_and_checkpoint(head):
    # A gradient penalty (create_graph=True, then backward through the gradient) and
    # torch.utils.checkpoint through the metric: the checkpointed gradient equals the plain one (same
    # kernels recomputed); the penalty's gradient equals torch.func's grad-of-grad.
    from torch.utils.checkpoint import checkpoint
    metric = _metric("resnet6", head)
    x, y = pair(2, seed=6)
    d, g = _grad_call(metric, x, y)
    xc = x.clone().requires_grad_()
    checkpoint(lambda a: metric(a, y), xc, use_reentrant=False).sum().backward()
    torch.testing.assert_close(xc.grad, g, rtol=RTOL, atol=1e-8)
    xx = x.clone().requires_grad_()
    gx, = torch.autograd.grad(metric(xx, y).sum(), xx, create_graph=True)
    gx.square().sum().backward()
    want = torch.func.grad(lambda a: torch.func.grad(lambda b: metric(b, y).sum())(a).square().sum())(x)
    assert xx.grad.abs().max() > 0
    torch.testing.assert_close(xx.grad, want, rtol=0, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("head", ["meanpool", "local"])
def test_torch_func_and_batched_backward_transforms(head):
    # vmap over pairs, jacfwd/jacrev, a vectorized jacobian (legacy vmap over the backward) and
    # is_grads_batched all give what the plain calls give; at 32x32 the loss-path Functions (polyphase
    # stem, small-map products) sit in the graph whose backward is vmapped. Same float32 sums in other
    # kernels: agreement to ~1e-6 of the largest entry, 1e-4 catches a wrong or missing term.
    from lowps.inputs import InputError
    metric = _metric("resnet6", head)
    x, y = pair(2, size=32, seed=5)
    d = metric(x, y)
    torch.testing.assert_close(torch.func.vmap(lambda a, b: metric(a[None], b[None])[0])(x, y), d,
                               rtol=RTOL, atol=ATOL)
    jac_loop = torch.autograd.functional.jacobian(lambda a: metric(a, y), x)
    tol = {"rtol": 0, "atol": 1e-4 * float(jac_loop.abs().max())}
    assert jac_loop.abs().max() > 0
    for jac in (torch.func.jacrev(lambda a: metric(a, y))(x), torch.func.jacfwd(lambda a: metric(a, y))(x),
                torch.autograd.functional.jacobian(lambda a: metric(a, y), x, vectorize=True)):
        torch.testing.assert_close(jac, jac_loop, **tol)
    xx = x.clone().requires_grad_()
    g, = torch.autograd.grad(metric(xx, y), xx, torch.eye(2), is_grads_batched=True)
    torch.testing.assert_close(g, torch.stack([jac_loop[i] for i in range(2)]), **tol)
    fresh = _metric("resnet6", head)  # a metric's first call is the strict one
    with pytest.raises(InputError, match="outside the declared input_range"):  # values are checked under vmap too
        torch.func.vmap(lambda a, b: fresh(a[None], b[None])[0])(x * 255, y)


@pytest.mark.parametrize("head", HEADS)
def test_functional_distance_any_order_of_modes(head):
    clear_cache()
    x, y = pair(2)
    kw = {"head_weights": "ones"} if head == "linear" else {}
    ref = _sequence(lambda a, b: lowps.distance(a, b, distance=head, **kw), x, y)
    torch.testing.assert_close(ref, _metric("resnet6", head)(x, y), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backbone", ["timm:resnet18", "vit_base_patch8_64"])
def test_functional_distance_other_backbones(backbone):
    clear_cache()
    x, y = pair(2, size=KINDS[backbone][1])
    _sequence(lambda a, b: lowps.distance(a, b, backbone=backbone, weights="random"), x, y)


def test_deepcopy_and_pickle_after_inference_then_grad():
    m = _metric("resnet6", "meanpool")
    x, y = pair(2)
    size = len(pickle.dumps(m))
    with torch.inference_mode():
        ref = m(x, y).clone()
    _grad_call(m, x, y)
    assert len(pickle.dumps(m)) == size  # nothing cached by a forward pass travels with the module
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        _sequence(clone, x, y)
        with torch.inference_mode():
            torch.testing.assert_close(clone(x, y), ref, rtol=RTOL, atol=ATOL)


def test_state_dict_holds_no_speed_copies():
    m = _metric("resnet6", "meanpool")
    assert not any("_nchw" in k for k in m.state_dict())


def test_to_float64_and_back():
    m = _metric("resnet6", "local")
    x, y = pair(2)
    with torch.inference_mode():
        ref = m(x, y).clone()
    m64 = copy.deepcopy(m).to(torch.float64)
    _sequence(m64, x.double(), y.double())
    with torch.inference_mode():
        torch.testing.assert_close(m64(x.double(), y.double()).float(), ref, rtol=1e-4, atol=ATOL)
    m32 = m64.to(torch.float32)
    _sequence(m32, x, y)


@pytest.mark.parametrize("head", ["meanpool", "local"])
def test_bf16_autocast_and_precision_in_any_order(head):
    x, y = pair(2)
    m = _metric("resnet6", head)
    with torch.inference_mode():
        fp32 = m(x, y).clone()

    def autocast_fn(a, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(a, b)
    # autocast calls interleaved with plain fp32 calls on the same module
    with torch.inference_mode():
        ac_ref = autocast_fn(x, y).clone()
    d, g = _grad_call(autocast_fn, x, y)
    torch.testing.assert_close(d, ac_ref, rtol=1e-2, atol=1e-7)  # bf16 kernels: same batch, same rounding
    _sequence(m, x, y)
    with torch.no_grad():
        torch.testing.assert_close(m(x, y), fp32, rtol=RTOL, atol=ATOL)
    # a bf16 trunk (forced, so it runs bf16 also on CPUs without native bf16)
    mb = _metric("resnet6", head, precision="bf16", force_precision=True)
    with torch.inference_mode():
        b_ref = mb(x, y).clone()
    db, gb = _grad_call(mb, x, y)
    torch.testing.assert_close(db, b_ref, rtol=1e-2, atol=1e-7)
    assert ((b_ref - fp32).abs() / fp32).max() < 0.05


def test_threads_mixing_modes():
    m = _metric("resnet6", "meanpool")
    x, y = pair(2)
    with torch.inference_mode():
        ref = m(x, y).clone()
    results, errors = [], []

    def work(k):
        try:
            for i in range(3):
                mode = (k + i) % 3
                if mode == 0:
                    with torch.inference_mode():
                        results.append(m(x, y).clone())
                elif mode == 1:
                    with torch.no_grad():
                        results.append(m(x, y))
                else:
                    results.append(_grad_call(m, x, y)[0])
        except Exception as e:  # collected and re-raised in the main thread
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 12
    for r in results:
        torch.testing.assert_close(r, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("net", ["alex", "resnet6"])
def test_lpips_any_order_of_modes(net):
    lp = lowps.LPIPS(net=net, pnet_rand=net == "alex", lpips=net == "alex", pretrained=True, verbose=False)
    x, y = pair(2)
    _sequence(lambda a, b: lp(a, b, normalize=True).flatten(), x, y)
    for clone in (copy.deepcopy(lp), pickle.loads(pickle.dumps(lp))):
        _sequence(lambda a, b: clone(a, b, normalize=True).flatten(), x, y)
