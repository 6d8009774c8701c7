import numpy as np
import pytest
import torch
from PIL import Image

import lowps
from conftest import pair

HEADS = ["structure", "meanpool", "local", "style"]


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


ALL_HEADS = ["structure", "meanpool", "local", "style", "linear"]


def _metric(head, **kw):
    extra = {"head_weights": "ones"} if head == "linear" else {}
    return lowps.PerceptualDistance(distance=head, **extra, **kw)


@pytest.mark.parametrize("head", ALL_HEADS)
def test_embedding_distance_is_the_head_distance(head):
    m = _metric(head)
    x, y = pair(4, seed=3)
    y = 0.8 * x + 0.2 * y  # close pairs too: where float32 cancellation would show
    with torch.no_grad():
        want = m(x, y)
        got = m.distance_features(m.embed(x), m.embed(y))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("head", ALL_HEADS)
def test_pairwise_matrix_product_equals_per_pair_module(head):
    m = _metric(head)
    a, _ = pair(6, size=48, seed=1)
    b = torch.cat([a[:2] * 0.9 + 0.05, pair(3, size=48, seed=2)[0]])  # near-duplicates and unrelated images
    mat = lowps.pairwise(a, b, metric=m)
    with torch.no_grad():
        naive = torch.stack([m(a[i:i + 1].expand(len(b), -1, -1, -1), b) for i in range(len(a))])
    assert torch.allclose(mat, naive, rtol=1e-5, atol=1e-10)


def test_nearest_finds_near_duplicates_and_excludes_self():
    m = lowps.PerceptualDistance(weights="random")
    gallery, _ = pair(8, size=32, seed=4)
    query = gallery[[5, 2]] + 0.01 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    d, i = lowps.nearest(query.clamp(0, 1), gallery, k=3, metric=m)
    assert i[:, 0].tolist() == [5, 2] and d.shape == (2, 3) and bool((d[:, :-1] <= d[:, 1:]).all())
    full = lowps.pairwise(query.clamp(0, 1), gallery, metric=m)
    assert torch.allclose(d, full.sort(dim=1).values[:, :3])
    d2, i2 = lowps.nearest(gallery, gallery, k=1, metric=m, exclude_self=True)
    assert (i2[:, 0] != torch.arange(8)).all()
    with pytest.raises(lowps.InputError, match="k must be"):
        lowps.nearest(query, gallery, k=9, metric=m)


def test_distance_features_mismatches_are_clear_errors():
    m = lowps.PerceptualDistance(distance="local", weights="random")
    x, _ = pair(3)
    with pytest.raises(lowps.InputError, match="batches of 2 and 3"):
        m.distance_features(m.embed(x[:2]), m.embed(x))
    other = lowps.PerceptualDistance(distance="meanpool", weights="random")
    with pytest.raises(lowps.InputError, match="do not match"):
        m.distance_features(m.embed(x), other.embed(x))


def test_style_low_rank_layers_take_the_factor_path_with_equal_results():
    m = _metric("style", layers=["stage3", "stage4"])
    x, _ = pair(5, size=64, seed=7)
    dense, factors = m.embed_parts(x)
    # stage4 at 64x64: 2x2 positions, 512 channels -> factor (16 x 512 multiply-adds per pair instead
    # of 131,328); stage3: 4x4 positions, 256 channels -> packed Gram vector (32,896 values)
    assert dense.shape == (5, 256 * 257 // 2) and [tuple(f.shape) for f in factors] == [(5, 512, 4)]
    assert m.embed(x).shape == (5, 256 * 257 // 2 + 512 * 513 // 2)
    mat = lowps.pairwise(x, metric=m)
    assert torch.equal(mat, mat.T) and bool((mat.diagonal() == 0).all())
    with torch.no_grad():
        naive = torch.stack([m(x[i:i + 1].expand(5, -1, -1, -1), x) for i in range(5)])
    off = ~torch.eye(5, dtype=torch.bool)
    assert torch.allclose(mat[off], naive[off], rtol=1e-5, atol=1e-10)
    d, i = lowps.nearest(x, x, k=2, metric=m, exclude_self=True)
    assert torch.allclose(d, mat.masked_fill(~off, float("inf")).sort(dim=1).values[:, :2])


def test_sets_of_two_image_sizes_are_a_clear_error():
    # style's packed Gram vectors have the same length at any size; its stage-4 factors do not
    m = _metric("style")
    with pytest.raises(lowps.InputError, match="one image size"):
        lowps.pairwise(pair(2, size=64, seed=1)[0], pair(2, size=96, seed=2)[0], metric=m)
    with pytest.raises(lowps.InputError, match="one image size"):
        lowps.nearest(pair(2, size=64, seed=1)[0], pair(3, size=96, seed=2)[0], metric=m)


@pytest.mark.parametrize("matmul", ["numpy", "torch"])
@pytest.mark.parametrize("shape", [(600, None), (300, 530)])
def test_pairwise_embeddings_tiles_and_column_chunks_equal_the_direct_formula(shape, matmul):
    # Several square tiles (256..1024 rows each) and several float64 column chunks: every tile and
    # chunk boundary, the mirrored lower triangle and the N x M case, against ||a - b||^2 in float64.
    from lowps.allpairs import pairwise_embeddings
    n, m = shape
    g = torch.Generator().manual_seed(0)
    a = torch.rand(n, 700, generator=g)
    b = None if m is None else torch.rand(m, 700, generator=g)
    a[1] = a[0] + 1e-4 * torch.rand(700, generator=g)  # a near-duplicate: a small difference of large norms
    got = pairwise_embeddings(a, b, block=300 * (n + (m or 0)), matmul=matmul)  # 300 columns per chunk: 3 chunks
    bb = a if b is None else b
    want = (a.double()[:, None] - bb.double()[None]).square().sum(-1)
    assert got.shape == want.shape and got.dtype == torch.float64
    # ||a||^2 + ||b||^2 - 2 a.b in float64 is exact to a few hundred ulps of the squared norms (~470
    # here), whatever the BLAS's summation order (OpenBLAS's AVX-512 kernels sum differently from its
    # AVX2 ones: up to 2e-12 absolute on the near-duplicate); a wrong tile or chunk is off by O(1).
    scale = 2 * float(torch.maximum(a.double().square().sum(1).max(), bb.double().square().sum(1).max()))
    assert torch.allclose(got, want, rtol=1e-9, atol=100 * torch.finfo(torch.float64).eps * scale)
    if b is None:
        assert torch.equal(got, got.T) and bool((got.diagonal() == 0).all())
        # the near-duplicate (distance 1e-8 of the norms) keeps its digits: float64 loses ~1e-7 of it
        # (its eps times norms / distance), float32 products would lose all of them
        assert abs(got[0, 1] / want[0, 1] - 1) < 1e-6


def test_pairwise_embeddings_matmul_choices_agree_and_autograd_gets_torch():
    from lowps.allpairs import pairwise_embeddings
    g = torch.Generator().manual_seed(3)
    a = torch.rand(40, 50, generator=g, dtype=torch.float64)
    # NumPy's SYRK and PyTorch's addmm: the same float64 sums in another order
    assert torch.allclose(pairwise_embeddings(a, matmul="numpy"), pairwise_embeddings(a, matmul="torch"),
                          rtol=1e-12, atol=1e-12)
    t = a.clone().requires_grad_(True)
    d = pairwise_embeddings(t)  # auto: tracked input -> the differentiable PyTorch path
    d.sum().backward()
    # d/da_i of sum_jk ||a_j - a_k||^2 = 4 (N a_i - sum_j a_j) (every pair counted in both orders)
    want = 4 * (a.shape[0] * a - a.sum(0))
    assert t.grad is not None and torch.allclose(t.grad, want, rtol=1e-9, atol=1e-9)
    with pytest.raises(lowps.InputError, match="matmul='numpy' needs CPU tensors without autograd"):
        pairwise_embeddings(t, matmul="numpy")
    with pytest.raises(lowps.InputError, match="is not one of"):
        pairwise_embeddings(a, matmul="blas")
    # dtypes NumPy lacks (bfloat16) and half precision: the same as their float64 values
    for dt in (torch.bfloat16, torch.float16):
        low = a.to(dt)
        assert torch.allclose(pairwise_embeddings(low, matmul="numpy"), pairwise_embeddings(low.double(), matmul="torch"),
                              rtol=1e-12, atol=1e-12)


def test_pairwise_embeddings_limits_blas_to_torch_threads(monkeypatch):
    # a process that set torch.set_num_threads(1) (a data-loader worker) gets one BLAS thread
    from threadpoolctl import threadpool_info

    import lowps.allpairs as ap
    seen = []
    real = ap._blas_threads

    def spy():
        ctx = real()
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return ctx

    monkeypatch.setattr(ap, "_blas_threads", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ap.pairwise_embeddings(torch.rand(5, 7), matmul="numpy")
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
