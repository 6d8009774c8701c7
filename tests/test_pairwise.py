import numpy as np
import pytest
import torch
from PIL import Image

import lowps
from conftest import pair

HEADS = ["meanpool", "local", "style"]


def _count_images(metric):
    seen = []
    handle = metric.backbone.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    return seen, handle


@pytest.mark.parametrize("head", HEADS)
def test_pairwise_equals_double_loop_with_n_forwards(head):
    m = lowps.PerceptualDistance(distance=head, weights="random")
    a, _ = pair(5, size=32, seed=1)
    b, _ = pair(3, size=32, seed=2)
    seen, h = _count_images(m)
    mat = lowps.pairwise(a, b, metric=m, batch_size=2, chunk=4)
    h.remove()
    assert sum(seen) == 5 + 3  # every image through the backbone once
    assert mat.shape == (5, 3)
    naive = torch.stack([torch.cat([m(a[i:i + 1], b[j:j + 1]) for j in range(3)]) for i in range(5)])
    assert torch.allclose(mat, naive, atol=1e-5, rtol=1e-5)


def test_allpairs_is_symmetric_with_zero_diagonal():
    m = lowps.PerceptualDistance(weights="random")
    a, _ = pair(4, size=32)
    seen, h = _count_images(m)
    mat = lowps.pairwise(a, metric=m)
    h.remove()
    assert sum(seen) == 4
    assert torch.allclose(mat, mat.T, atol=1e-6) and torch.all(mat.diagonal() == 0)


def test_pairwise_from_files_and_options(tmp_path):
    paths = []
    for i in range(3):
        arr = (np.random.default_rng(i).random((32, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    mat = lowps.pairwise(paths, weights="random")
    assert mat.shape == (3, 3)
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(lowps.InputError, match="differ in size"):
        lowps.pairwise(paths + [tmp_path / "small.png"], weights="random")


def test_reference_reuse_equals_forward():
    m = lowps.PerceptualDistance(distance="local", weights="random")
    ref, _ = pair(1)
    x, _ = pair(4, seed=5)
    f_ref = m.embed(ref)
    d = m.distance_features(f_ref, m.embed(x))
    assert torch.allclose(d, m(ref.expand(4, -1, -1, -1), x), atol=1e-6)


def test_fused_fast_path_matches_unfused_backbone():
    from lowps.weights import build_backbone
    m = lowps.PerceptualDistance(weights="random")
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())  # BN folded
    ref_bb = build_backbone("resnet6", "random")  # unfused, contiguous
    x, _ = pair(2)
    mean = torch.tensor(ref_bb.mean).view(1, 3, 1, 1)
    std = torch.tensor(ref_bb.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = ref_bb((x - mean) / std)
        got = m.features(x)
    for a, b in zip(got, want):
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))
