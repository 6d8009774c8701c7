"""Parity of lowps.LPIPS with the real `lpips` package on identical weights."""
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lowps

lpips = pytest.importorskip("lpips", reason="parity tests need the lpips package (pip install -e '.[test]')")
IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"
SIZES = [(64, 64), (256, 256), (64, 96)]


def natural_pair(h, w):
    def load(name):
        im = Image.open(IMAGES / f"{name}.png").convert("RGB").resize((w, h), Image.BICUBIC)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
    return torch.stack([load("ref"), load("noise")]), torch.stack([load("blur"), load("jpeg")])


def random_pair(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, h, w, generator=g), torch.rand(2, 3, h, w, generator=g)


def make_pair(net, version, use_lpips, spatial):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = lpips.LPIPS(pretrained=True, net=net, version=version, lpips=use_lpips, spatial=spatial,
                             pnet_rand=True, verbose=False)
    ours = lowps.LPIPS(pretrained=True, net=net, version=version, lpips=use_lpips, spatial=spatial,
                       pnet_rand=True, verbose=False)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # identical trunk (random) and lin weights
    return ours, theirs


def _grads(model, x0, x1, normalize):
    a, b = x0.clone().requires_grad_(True), x1.clone().requires_grad_(True)
    model(a, b, normalize=normalize).sum().backward()
    return a.grad, b.grad


def _close_rel(a, b, rtol):
    return float((a - b).abs().max()) <= rtol * max(float(b.abs().max()), 1e-12)


CASES = list(itertools.product(["alex", "vgg", "squeeze"], ["0.1", "0.0"], [True, False], [False, True]))


@pytest.mark.parametrize("full", [pytest.param(False, id="quick"), pytest.param(True, id="full", marks=pytest.mark.slow)])
@pytest.mark.parametrize("net,version,use_lpips,spatial", CASES,
                         ids=[f"{n}-v{v}-{'lin' if l else 'nolin'}-{'spatial' if s else 'avg'}" for n, v, l, s in CASES])
def test_parity_with_lpips(net, version, use_lpips, spatial, full):
    # quick (the fast loop): one natural 64x64 pair in [0, 1]; full (slow): every size x range x kind
    ours, theirs = make_pair(net, version, use_lpips, spatial)
    grid = itertools.product(SIZES, [False, True], ["random", "natural"]) if full else [((64, 64), True, "natural")]
    for (h, w), normalize, kind in grid:
        if net == "vgg" and h == 256 and kind == "random":
            continue  # vgg at 256 px costs seconds per call on CPU; natural patches cover that size
        x0, x1 = random_pair(h, w) if kind == "random" else natural_pair(h, w)
        if not normalize:
            x0, x1 = 2 * x0 - 1, 2 * x1 - 1
        with torch.no_grad():
            v_ours, per_ours = ours(x0, x1, retPerLayer=True, normalize=normalize)
            v_theirs, per_theirs = theirs(x0, x1, retPerLayer=True, normalize=normalize)
            plain = ours(x0, x1, normalize=normalize)
        want_shape = (2, 1, h, w) if spatial else (2, 1, 1, 1)
        assert v_ours.shape == v_theirs.shape == want_shape
        assert float((v_ours - v_theirs).abs().max()) <= 1e-5
        assert torch.equal(plain, v_ours)
        assert len(per_ours) == len(per_theirs)
        for a, b in zip(per_ours, per_theirs):
            assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-5
        if h * w <= 64 * 96 or net != "vgg":
            ga, gb = _grads(ours, x0, x1, normalize)
            ta, tb = _grads(theirs, x0, x1, normalize)
            assert _close_rel(ga, ta, 1e-4) and _close_rel(gb, tb, 1e-4)


def test_vgg16_alias_and_embedded_lins_equal_lpips_files():
    ours = lowps.LPIPS(net="vgg16", pnet_rand=True, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)  # lpips ships no vgg16.pth
    for k in range(5):
        assert torch.equal(ours.lins[k].conv.weight, theirs.lins[k].model[1].weight)


def test_use_dropout_false_still_loads_lins_strictly():
    # lpips silently leaves random lin weights here (its keys say model.1, the module has model.0)
    ours = lowps.LPIPS(net="alex", use_dropout=False, pnet_rand=True, verbose=False)
    ref = lowps.LPIPS(net="alex", use_dropout=True, pnet_rand=True, verbose=False)
    for k in range(5):
        assert torch.equal(ours.lins[k].conv.weight, ref.lins[k].conv.weight)


def test_model_path_loading_is_strict(tmp_path):
    theirs_file = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    m = lowps.LPIPS(net="alex", pnet_rand=True, model_path=str(theirs_file), verbose=False)
    assert float(m.lins[0].conv.weight.detach().sum()) > 0
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing"):
        lowps.LPIPS(net="alex", pnet_rand=True, model_path=str(tmp_path / "partial.pth"), verbose=False)


def test_finite_gradient_where_lpips_gives_nan():
    # lpips's normalisation has an infinite slope at an all-zero feature vector: NaN gradients.
    z = torch.zeros(1, 8, 2, 2, requires_grad=True)
    (lpips.normalize_tensor(z) - 0.5).pow(2).sum().backward()
    assert torch.isnan(z.grad).any(), "lpips no longer gives NaN here; update docs/switching-from-lpips.md"
    z.grad = None
    (lowps.heads.unit_normalize(z) - 0.5).pow(2).sum().backward()
    assert torch.isfinite(z.grad).all()
    # the whole module with dead first-layer features: finite everywhere
    ours, _ = make_pair("alex", "0.1", True, False)
    with torch.no_grad():
        ours.net.slice1[0].bias.fill_(-1e3)
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    ours(x, torch.zeros(1, 3, 64, 64)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_no_prints_unless_verbose(capsys):
    lowps.LPIPS(net="alex", pnet_rand=True, verbose=False)
    assert capsys.readouterr() == ("", "")
    lowps.LPIPS(net="alex", pnet_rand=True, verbose=True)
    out = capsys.readouterr()
    assert out.out == "" and "alex" in out.err


def test_input_checks():
    m = lowps.LPIPS(net="alex", pnet_rand=True, verbose=False)
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(lowps.InputError, match=r"\[-1, 1\]"):
        m(x * 3, x)
    with pytest.raises(lowps.InputError, match="at least 31 px"):
        m(x[:, :, :16, :16], x[:, :, :16, :16])


def test_lowps_backbone_behind_lpips_signature():
    x0, x1 = random_pair(64, 64)
    x0, x1 = 2 * x0 - 1, 2 * x1 - 1
    m = lowps.LPIPS(net="resnet6", lpips=False, pnet_rand=True, verbose=False)
    d = m(x0, x1)
    assert d.shape == (2, 1, 1, 1)
    ref = lowps.PerceptualDistance("resnet6", "local", weights="random", input_range=(-1, 1))(x0, x1)
    assert torch.allclose(d.flatten(), ref, rtol=1e-5)
    with pytest.raises(ValueError, match="model_path"):
        lowps.LPIPS(net="resnet6", lpips=True, pnet_rand=True, verbose=False)
    with pytest.raises(ValueError, match="resnet7"):
        lowps.LPIPS(net="resnet7", verbose=False)


def test_offline_trunk_error_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWPS_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(lowps.weights.OfflineError, match="alexnet-owt"):
        lowps.LPIPS(net="alex", verbose=False)


def test_lpips_as_loss_decreases():
    m = lowps.LPIPS(net="alex", pnet_rand=True, verbose=False)
    target = random_pair(64, 64, seed=3)[0] * 2 - 1
    x = torch.zeros_like(target, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.05)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = m(torch.tanh(x), target).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


# -- lpips's exported helpers: `import lowps as lpips` ----------------------------------------------

def test_helpers_equal_lpips_on_test_arrays():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    b = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    t = torch.rand(2, 3, 8, 8) * 2 - 1
    feat = torch.randn(2, 5, 4, 4)
    assert torch.equal(lowps.im2tensor(a), lpips.im2tensor(a))
    assert np.array_equal(lowps.tensor2im(t), lpips.tensor2im(t))
    assert np.array_equal(lowps.tensor2np(t), lpips.tensor2np(t))
    assert torch.equal(lowps.np2tensor(a.astype(np.float64)), lpips.np2tensor(a.astype(np.float64)))
    assert torch.equal(lowps.normalize_tensor(feat), lpips.normalize_tensor(feat))
    assert lowps.l2(a, b) == pytest.approx(lpips.l2(a, b), rel=1e-12)
    assert lowps.psnr(a, b) == pytest.approx(lpips.psnr(a, b), rel=1e-12)
    assert np.array_equal(lowps.tensor2vec(feat[:, :, :1, :1]), lpips.tensor2vec(feat[:, :, :1, :1]))
    rec, prec = np.array([0.1, 0.4, 0.4, 0.9]), np.array([1.0, 0.7, 0.8, 0.5])
    for v07 in (False, True):
        assert lowps.voc_ap(rec, prec, v07) == pytest.approx(lpips.voc_ap(rec, prec, v07), rel=1e-12)
    pytest.importorskip("skimage")
    assert torch.allclose(lowps.tensor2tensorlab(t[:1]), lpips.tensor2tensorlab(t[:1]), atol=1e-6)
    assert lowps.rgb2lab(a / 255.0).shape == (16, 16, 3)
    from skimage.metrics import structural_similarity
    assert lowps.dssim(a, b) == pytest.approx((1 - structural_similarity(a, b, data_range=255, channel_axis=-1)) / 2)


def test_load_image_equals_a_plain_rgb_decode():
    arr = lowps.load_image(IMAGES / "ref.png")
    assert arr.dtype == np.uint8 and np.array_equal(arr, np.asarray(Image.open(IMAGES / "ref.png").convert("RGB")))


def test_lpips_readme_two_image_flow_runs_with_import_lowps_as_lpips(tmp_path):
    # lpips's README: load_image -> im2tensor -> LPIPS -> print (trunk random: no download here)
    import subprocess
    import sys
    script = tmp_path / "lpips_2imgs.py"
    script.write_text(
        "import lowps as lpips\n"
        "loss_fn = lpips.LPIPS(net='alex', version='0.1', pnet_rand=True, verbose=False)\n"
        f"img0 = lpips.im2tensor(lpips.load_image({str(IMAGES / 'ref.png')!r}))\n"
        f"img1 = lpips.im2tensor(lpips.load_image({str(IMAGES / 'blur.png')!r}))\n"
        "dist01 = loss_fn.forward(img0, img1)\n"
        "print('Distance: %.3f' % dist01)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "LOWPS_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("Distance: ")


def test_one_image_against_a_batch_broadcasts_like_lpips():
    ours, theirs = make_pair("alex", "0.1", True, False)
    x, y = random_pair(64, 64)
    one = x[:1]
    got = ours(one * 2 - 1, y * 2 - 1)
    assert got.shape == (2, 1, 1, 1)
    assert torch.allclose(got, theirs(one * 2 - 1, y * 2 - 1), atol=1e-5)
    assert torch.allclose(ours(y * 2 - 1, one * 2 - 1), got, atol=1e-6)


def test_half_module_runs_like_lpips():
    ours, theirs = make_pair("alex", "0.1", True, False)
    x, y = random_pair(64, 64)
    d32 = ours(x * 2 - 1, y * 2 - 1)
    d16 = ours.half()(x.half() * 2 - 1, y.half() * 2 - 1)
    assert d16.dtype == torch.float16 and torch.allclose(d16.float(), d32, rtol=2e-2, atol=1e-3)


def test_offline_error_says_what_to_place_not_pnet_rand(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWPS_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(Exception, match=r"233 MB.*place it at") as e:
        lowps.LPIPS(net="alex", verbose=False)
    assert "not LPIPS" in str(e.value)


def test_no_call_touches_the_allocator(monkeypatch):
    # As PerceptualDistance (issue #36): lowps.accel.tune_allocator() is the only way, called explicitly.
    from lowps.accel import allocator

    calls = []
    monkeypatch.setattr(allocator, "raise_malloc_thresholds", lambda: calls.append(1) or True)
    m = lowps.LPIPS(net="squeeze", pretrained=False, pnet_rand=True, verbose=False)
    x0, x1 = random_pair(32, 32)
    with torch.inference_mode():
        m(x0, x1, normalize=True)
    m(x0.clone().requires_grad_(), x1, normalize=True).sum().backward()
    assert calls == [] and not hasattr(m, "raise_malloc_thresholds")


def test_real_imagenet_trunk_from_a_local_file():
    """pnet_path loads LPIPS's real ImageNet AlexNet trunk offline (the features-only file in
    shared/weights): LPIPS-alex v0.1 on lpips's example triplet gives what the official code recorded
    (0.72185 / 0.13751; the trunk's README). Float32 convolutions in other kernels move the 5th digit."""
    from conftest import EXAMPLES, SHARED

    trunk = SHARED / "weights" / "alexnet_features.pth"
    if not trunk.is_file() or not (EXAMPLES / "ex_ref.png").is_file():
        pytest.skip(f"the ImageNet AlexNet trunk or lpips's example images are absent ({trunk}, {EXAMPLES})")
    lp = lowps.LPIPS(net="alex", verbose=False, pnet_path=trunk)
    ref, p0, p1 = (lowps.im2tensor(lowps.load_image(str(EXAMPLES / f"ex_{k}.png"))) for k in ("ref", "p0", "p1"))
    with torch.no_grad():
        assert float(lp(ref, p0)) == pytest.approx(0.72185, abs=2e-4)
        assert float(lp(ref, p1)) == pytest.approx(0.13751, abs=2e-4)


def test_pnet_path_errors(tmp_path):
    from lowps.weights import WeightsError

    with pytest.raises(FileNotFoundError, match="pnet_path"):
        lowps.LPIPS(net="alex", verbose=False, pnet_path=tmp_path / "none.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(WeightsError, match="does not fit torchvision's alexnet"):
        lowps.LPIPS(net="alex", verbose=False, pnet_path=bad)
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="not a readable"):
        lowps.LPIPS(net="alex", verbose=False, pnet_path=tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="pnet_path applies to the LPIPS nets"):
        lowps.LPIPS(net="resnet6", verbose=False, pnet_path=bad)
