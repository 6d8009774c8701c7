import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import lowps
from lowps.inputs import InputError, parse_input_range, to_tensor, validate_pair

R01 = (0.0, 1.0)


@pytest.fixture
def m():
    # a fresh metric per test: its first call is the strict one (lowps.inputs.RangeCheck)
    return lowps.PerceptualDistance(weights="random")


def test_wrong_ndim(m):
    with pytest.raises(InputError, match="4 dims|dims"):
        m(torch.rand(1, 1, 3, 64, 64), torch.rand(1, 1, 3, 64, 64))
    with pytest.raises(InputError, match="dims"):
        m(torch.rand(64, 64), torch.rand(64, 64))


def test_wrong_channels(m):
    with pytest.raises(InputError, match="4 channels.*expected 3"):
        m(torch.rand(1, 4, 64, 64), torch.rand(1, 4, 64, 64))
    with pytest.raises(InputError, match="permute"):
        m(torch.rand(1, 64, 64, 3), torch.rand(1, 64, 64, 3))


def test_shape_mismatch(m):
    with pytest.raises(InputError, match="same shape"):
        m(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 32, 64))


def test_out_of_range_names_the_option(m):
    with pytest.raises(InputError, match=r"input_range.*\(-1, 1\)"):
        m(torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64))
    with pytest.raises(InputError, match="255"):
        m(torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64))


def test_nan_and_inf(m):
    x = torch.rand(1, 3, 64, 64)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        m(x, torch.rand(1, 3, 64, 64))
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="inf"):
        m(torch.rand(1, 3, 64, 64), x)


def test_too_small_for_the_backbone(m):
    with pytest.raises(InputError, match="at least 16 px"):
        m(torch.rand(1, 3, 15, 64), torch.rand(1, 3, 15, 64))
    shallow = lowps.PerceptualDistance(weights="random", layers=["stage1", "stage2"])
    assert shallow(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)).shape == (1,)


def test_integer_tensor(m):
    with pytest.raises(InputError, match="float"):
        m(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_unknown_names():
    with pytest.raises(ValueError, match="meanpool"):
        lowps.PerceptualDistance(distance="l3", weights="random")
    with pytest.raises(ValueError, match="resnet6"):
        lowps.PerceptualDistance(backbone="resnet7", weights="random")


def test_to_tensor_from_pil_numpy_path(tmp_path):
    arr = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    from_np = to_tensor(arr)
    from_pil = to_tensor(Image.fromarray(arr))
    from_path = to_tensor(tmp_path / "a.png")
    assert from_np.shape == (3, 20, 24)
    assert torch.equal(from_np, from_pil) and torch.equal(from_np, from_path)
    assert torch.allclose(to_tensor(arr, (-1.0, 1.0)), from_np * 2 - 1)
    assert to_tensor(arr[:, :, 0]).shape == (1, 20, 24)


def test_to_tensor_errors(tmp_path):
    with pytest.raises(InputError, match="uint8"):
        to_tensor(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(InputError, match="not found"):
        to_tensor(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read"):
        to_tensor(tmp_path / "bad.png")
    with pytest.raises(InputError, match="cannot use"):
        to_tensor(3.5)


def test_parse_input_range():
    assert parse_input_range("-1,1") == (-1.0, 1.0)
    with pytest.raises(InputError):
        parse_input_range((1, 0))
    with pytest.raises(InputError):
        parse_input_range("0;1")


def test_validate_pair_device_and_fixed_size():
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(InputError, match="only takes 224x224"):
        validate_pair(x, x, R01, fixed_size=(224, 224))


@pytest.mark.parametrize("lo_hi", [(-0.063, 1.075), (-0.1, 1.1), (-0.001, 1.0), (0.0, 1.001)])
def test_slight_overshoot_is_taken_unchanged(m, lo_hi):
    # Raw network outputs overshoot [0, 1] a little before any clamp: taken as they are (10% of the width).
    x = torch.rand(1, 3, 32, 32) * (lo_hi[1] - lo_hi[0]) + lo_hi[0]
    x[0, 0, 0, :2] = torch.tensor(lo_hi)
    y = x.clone()
    y[0, :, :4, :4] = 0.5
    d = m(x, y)
    assert torch.isfinite(d).all()
    assert torch.equal(to_tensor(x), x)  # not clamped
    with torch.no_grad():
        assert not torch.equal(m(x, y), m(x.clamp(0, 1), y))  # the overshoot reaches the trunk unchanged


@pytest.mark.parametrize("vals,hint", [((-1.0, 1.0), r"input_range=\(-1, 1\)"), ((0.0, 255.0), "divide by 255"),
                                       ((-0.6, 1.0), r"\(-1, 1\)")])
def test_other_conventions_fail_on_the_first_call(m, vals, hint):
    x = torch.full((1, 3, 32, 32), 0.5)
    x[0, 0, 0, :2] = torch.tensor(vals)
    with pytest.raises(InputError, match=hint):
        m(x, x)


@pytest.mark.parametrize("vals", [(0.0, 1.3), (-0.3, 0.9), (-0.3, 1.3), (-2.0, 3.0)])
def test_out_of_range_values_warn_once_and_are_taken(m, vals):
    # beyond the 10% overshoot but no other convention: taken as they are, one warning per metric object
    x = torch.full((1, 3, 32, 32), 0.5)
    x[0, 0, 0, :2] = torch.tensor(vals)
    with pytest.warns(lowps.InputRangeWarning, match=r"outside the declared input_range.*clamp.*input_range=.*"
                      r"check_inputs=False") as record:
        d = m(x, x.clamp(0, 1))
        m(x, x)
    assert len(record) == 1
    assert d > 0 and torch.isfinite(d).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x, x)  # no second warning from this object


def test_after_the_first_call_other_conventions_warn_instead_of_stopping(m):
    # a training run's outputs drift: after a good first call even [-1, 1]-looking values only warn
    m(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.warns(lowps.InputRangeWarning):
        m(torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32))
    x = torch.rand(1, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):  # NaN/inf always stop
        m(x, x)


def test_a_loss_on_drifting_outputs_runs_200_steps():
    """Issue #34: a conv net trained on raw outputs that drift to [-0.3, 1.3] finishes 200 steps with
    ``L1 + 10 * lowps.distance`` (one warning); data in [0, 255] still fails at step 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g)
    stretched = x * 1.6 - 0.3  # an L1 target beyond [0, 1] pulls the outputs out of range
    with torch.random.fork_rng(devices=[]):  # a seeded init, whatever ran before; the caller's RNG restored
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(8, 3, 3, padding=1))
    torch.nn.init.zeros_(net[2].weight)
    torch.nn.init.zeros_(net[2].bias)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    metric = lowps.PerceptualDistance()
    lo, hi = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(200):
            out = x + net(x)
            loss = (out - stretched).abs().mean() + 10 * metric(out, stretched.clamp(0, 1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            lo.append(float(out.min()))
            hi.append(float(out.max()))
    assert min(lo) < -0.2 and max(hi) > 1.2  # the outputs did drift that far
    assert sum(issubclass(w.category, lowps.InputRangeWarning) for w in caught) == 1
    with pytest.raises(InputError, match="divide by 255"):
        lowps.PerceptualDistance(weights="random")(x * 255, x)


def test_input_range_must_be_finite():
    for bad in [(0, float("inf")), (float("-inf"), 1), (0, float("nan"))]:
        with pytest.raises(InputError, match="finite"):
            parse_input_range(bad)


# -- the one image decoder: files with known pixel values -------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    from lowps.inputs import load_image
    arr = np.zeros((32, 64, 3), np.uint8)  # stored 32 high, 64 wide; left half bright
    arr[:, :32] = 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 8  # rotate 90 CW to display -> displays 64 high, 32 wide
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    x = load_image(tmp_path / "rot.jpg")
    assert x.shape == (3, 64, 32)
    assert x[:, 40:, :].mean() > 0.9 and x[:, :24, :].mean() < 0.1  # the bright half is now at the bottom


def test_16bit_and_float_images_keep_their_values(tmp_path):
    from lowps.inputs import load_image
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    x = load_image(tmp_path / "g16.png")
    assert x.shape == (3, 64, 64) and torch.allclose(x[0], torch.from_numpy(ramp / 65535.0).float(), atol=1e-6)
    f = np.linspace(0, 1, 64 * 64).reshape(64, 64).astype(np.float32)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    y = load_image(tmp_path / "f.tif")
    assert torch.allclose(y[1], torch.from_numpy(f), atol=1e-7)
    im16 = Image.open(tmp_path / "g16.png")
    assert torch.allclose(to_tensor(im16)[0], x[0])  # a PIL image in memory decodes the same


def test_rgba_is_composited_so_hidden_pixels_do_not_count(tmp_path):
    from lowps.inputs import ALPHA_BACKGROUND, load_image
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[..., 3] = 255
    rgba[:, :16, 3] = 0  # transparent strip
    hidden = rgba.copy()
    hidden[:, :16, :3] = 250  # differs only where alpha is 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(hidden, "RGBA").save(tmp_path / "b.png")
    a, b = load_image(tmp_path / "a.png"), load_image(tmp_path / "b.png")
    assert torch.equal(a, b) and a[:, :, :16].eq(ALPHA_BACKGROUND).all()
    assert lowps.distance(tmp_path / "a.png", tmp_path / "b.png").item() == 0


def test_non_regular_files_are_refused_not_read(tmp_path):
    import os

    from lowps.inputs import load_image
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(InputError, match="not a regular file"):
        load_image(tmp_path / "pipe.png")  # would block forever if opened
    with pytest.raises(InputError, match="not a regular file"):
        load_image(tmp_path)


# -- everything else that was a traceback: clear errors or empty results ----------------------------

@pytest.mark.parametrize("head", ["structure", "meanpool", "local", "style", "linear"])
def test_empty_batch_gives_empty_results(head):
    kw = {"head_weights": "ones"} if head == "linear" else {}
    m = lowps.PerceptualDistance(distance=head, weights="random", **kw)
    z = torch.rand(0, 3, 64, 64)
    d, per = m(z, z, per_layer=True)
    assert d.shape == (0,) and all(v.shape == (0,) for v in per.values())
    assert m.embed(z).shape[0] == 0
    if head in ("structure", "local", "linear"):
        assert m.spatial(z, z).shape == (0, 1, 64, 64)


def test_empty_batch_lpips_and_autograd():
    lp = lowps.LPIPS(net="alex", pnet_rand=True, verbose=False)
    assert lp(torch.rand(0, 3, 64, 64), torch.rand(0, 3, 64, 64)).shape == (0, 1, 1, 1)
    x = torch.rand(0, 3, 64, 64, requires_grad=True)
    lowps.distance(x, torch.rand(0, 3, 64, 64)).sum().backward()
    assert x.grad.shape == x.shape


def test_meta_tensors_and_empty_layer_list_are_clear_errors():
    with pytest.raises(InputError, match="meta device"):
        lowps.distance(torch.rand(1, 3, 64, 64, device="meta"), torch.rand(1, 3, 64, 64, device="meta"))
    with pytest.raises(ValueError, match=r"layers=\[\] selects nothing"):
        lowps.PerceptualDistance(weights="random", layers=[])


def test_timm_backbone_minimum_size_is_measured():
    m = lowps.PerceptualDistance(backbone="timm:convnext_atto", weights="random")
    assert m.min_size == 32  # stem 4x4/4 and three 2x2/2 downsamplings: 16 px would reach a 1x1 map
    for size in [(16, 16), (31, 33), (16, 200), (200, 16)]:
        with pytest.raises(InputError, match="at least 32 px"):
            m(torch.rand(1, 3, *size), torch.rand(1, 3, *size))
    assert m(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).shape == (1,)
