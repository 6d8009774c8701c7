import numpy as np
import pytest
import torch
from PIL import Image

import lowps
from conftest import pair
from lowps.functional import _CACHE, clear_cache, get_metric


def test_distance_matches_module_and_caches():
    clear_cache()
    x, y = pair(2)
    d = lowps.distance(x, y, weights="random")
    assert d.shape == (2,)
    assert torch.allclose(d, lowps.PerceptualDistance(weights="random")(x, y))
    lowps.distance(x, y, weights="random")
    assert len(_CACHE) == 1
    lowps.distance(x.double(), y.double(), weights="random")
    assert len(_CACHE) == 2  # one module per dtype
    assert get_metric(weights="random") is get_metric(weights="random")


def test_distance_accepts_files_pil_and_numpy(tmp_path):
    x, y = pair(1)
    a = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    b = (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    d_np = lowps.distance(a, b, weights="random")
    d_path = lowps.distance(tmp_path / "a.png", str(tmp_path / "b.png"), weights="random")
    d_pil = lowps.distance(Image.fromarray(a), Image.fromarray(b), weights="random")
    assert torch.equal(d_np, d_path) and torch.equal(d_np, d_pil)
    # mixed: a tensor in [-1,1] against a file, with input_range=(-1,1)
    t = torch.from_numpy(a).permute(2, 0, 1).float() / 255 * 2 - 1
    d_mixed = lowps.distance(t, tmp_path / "b.png", weights="random", input_range=(-1, 1))
    assert torch.allclose(d_mixed, d_np, rtol=1e-5)


def test_distance_gradients_flow():
    x, y = pair(1)
    x.requires_grad_(True)
    lowps.distance(x, y, weights="random").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_trains_on_raw_unclamped_network_outputs():
    # A tiny denoiser whose raw output overshoots [0, 1] (to -0.06 and 1.07) trains with lowps.distance.
    torch.manual_seed(0)
    clean = torch.rand(4, 3, 32, 32)
    noisy = (clean + 0.05 * torch.randn_like(clean)).clamp(0, 1)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[[0, 1, 2], [0, 1, 2], 1, 1] = 1.13  # identity, scaled up: outputs in [-0.06, 1.07]
        net.bias.fill_(-0.06)
    out = net(noisy)
    assert out.min() < -0.05 and out.max() > 1.06
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    losses = []
    for _ in range(8):
        loss = lowps.distance(net(noisy), clean).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:]))  # small steps: every step lowers the loss


def test_distance_check_inputs_switch():
    from lowps.functional import clear_cache

    clear_cache()  # a fresh cached metric: its first call is the strict one (lowps.inputs.RangeCheck)
    x = torch.rand(1, 3, 32, 32) * 255  # [0, 255] data declared as [0, 1]
    with pytest.raises(lowps.InputError, match="255"):
        lowps.distance(x, x)
    assert lowps.distance(x, x, check_inputs=False).item() == 0
