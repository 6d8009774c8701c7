"""lowps.accel.pool: the stem's max-pool as separable elementwise maxima (exact)."""
import pytest
import torch
import torch.nn.functional as F

from lowps.accel.pool import separable_max_pool, stem_max_pool


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [(32, 32), (8, 10), (9, 12), (33, 33), (1, 2), (2, 1)])
def test_stem_max_pool_low_precision_path_is_exact(dtype, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, *size, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    ref = F.max_pool2d(x.float(), 3, 2, padding=(size[0] % 2, size[1] % 2), ceil_mode=True).to(dtype)
    with torch.inference_mode():
        y = stem_max_pool(x)
    assert torch.equal(y, ref)
    assert y.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():  # unbatched (C, H, W), as max_pool2d takes it
        assert torch.equal(stem_max_pool(x[1].contiguous()), ref[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("size", [(32, 32), (33, 33), (8, 11), (11, 8), (1, 1), (2, 2), (3, 4)])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_separable_max_pool_equals_tf_same_max_pool(dtype, size, layout):
    # The stem's inference pool: exact (a max), in the input's layout, also into given out/scratch buffers
    # (the sub-batch loop writes each sub-batch's rows of one output); negative maps check that TF's
    # padding never wins.
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 4, *size, generator=g) - 1).to(dtype)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    ref = F.max_pool2d(x.double(), 3, 2, padding=(size[0] % 2, size[1] % 2), ceil_mode=True).to(dtype)
    y = separable_max_pool(x)
    assert torch.equal(y, ref) and y.is_contiguous(memory_format=fmt)
    out = torch.full((5, *ref.shape[1:]), 7.0, dtype=dtype).contiguous(memory_format=fmt)
    separable_max_pool(x, out[1:4], torch.empty(3, 4, ref.shape[2], size[1], dtype=dtype))
    assert torch.equal(out[1:4], ref) and (out[0] == 7).all() and (out[4] == 7).all()
