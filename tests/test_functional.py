import numpy as np
import torch
from PIL import Image

import lowps
from lowps.functional import _CACHE, clear_cache, get_metric
from conftest import pair


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
