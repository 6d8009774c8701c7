"""Export: torch.export (fixed and dynamic batch), TorchScript trace, ONNX through onnxruntime, the CLI."""
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch

import lowps
from conftest import pair
from lowps.cli import main
from lowps.export import export_metric


@pytest.fixture(scope="module")
def metric():
    return lowps.PerceptualDistance(check_inputs=False).eval()


def test_torch_export_fixed_and_dynamic_batch(metric, tmp_path):
    x, y = pair(2)
    ep = torch.export.export(metric, (x, y))
    torch.testing.assert_close(ep.module()(x, y), metric(x, y), rtol=1e-5, atol=1e-9)
    path = export_metric(metric, tmp_path / "m.pt2", "pt2")
    prog = torch.export.load(str(path)).module()
    for n in (1, 3, 7):
        a, b = pair(n, seed=n)
        torch.testing.assert_close(prog(a, b), metric(a, b), rtol=1e-5, atol=1e-9)


def test_torchscript_trace_is_batch_agnostic(metric, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # torch.jit's attribute scan must not trip lowps's
        path = export_metric(metric, tmp_path / "m.ts", "torchscript")
    ts = torch.jit.load(str(path))
    for n in (2, 5):  # traced at 2: a larger batch must not be cut to the traced size
        a, b = pair(n, seed=n)
        torch.testing.assert_close(ts(a, b), metric(a, b), rtol=1e-5, atol=1e-9)


def test_onnx_matches_eager_in_onnxruntime(metric, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="ONNX tests need onnxruntime (pip install -e '.[test]')")
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_metric(metric, tmp_path / "m.onnx", "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # one self-contained file, no m.onnx.data
    sess = ort.InferenceSession(str(path))
    for n in (1, 4):
        a, b = pair(n, seed=10 + n)
        got = sess.run(None, {"img0": a.numpy(), "img1": b.numpy()})[0]
        np.testing.assert_allclose(got, metric(a, b).numpy(), rtol=1e-4, atol=1e-8)


def test_cli_export_and_checks_restored(tmp_path, capsys):
    assert main(["export", "--format", "pt2", "--out", str(tmp_path / "c.pt2"), "--batch", "2"]) == 0
    assert (tmp_path / "c.pt2").stat().st_size > 1e6
    m = lowps.PerceptualDistance()
    export_metric(m, tmp_path / "d.pt2", "pt2")
    assert m.check_inputs is True  # export switches the value checks off only while tracing
    with pytest.raises(SystemExit) as e:
        main(["export", "--format", "onnx2", "--out", str(tmp_path / "x")])
    assert e.value.code == 2


def test_pickle_size_does_not_grow_after_forward():
    m = lowps.PerceptualDistance()
    before = len(pickle.dumps(m))
    x, y = pair(2)
    m(x, y)
    assert len(pickle.dumps(m)) == before


@pytest.mark.parametrize("head", ["local", "meanpool"])
def test_torch_export_and_compile_on_the_module_itself(head):
    """Issue #34: the value checks skip themselves under tracing, so the module exports and compiles
    as it is (no export_metric needed, no graph breaks); the exported program equals eager."""
    m = lowps.PerceptualDistance(distance=head).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    want = m(x, y)
    got = torch.export.export(m, (x, y)).module()(x, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    compiled = torch.compile(m, backend="eager", fullgraph=True)  # fullgraph: a graph break is an error
    torch.testing.assert_close(compiled(x, y), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    with pytest.raises(lowps.InputError, match="NaN"):  # eager calls still check
        m(torch.full_like(x, float("nan")), y)


def _cxx_compiler() -> str | None:
    return next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


@pytest.mark.slow
@pytest.mark.skipif(_cxx_compiler() is None, reason="torch.compile's inductor backend needs a C++ compiler (none on PATH)")
def test_compiled_head_recipe_gives_the_eager_distances_and_gradients():
    """docs/performance.md's recipe for CPU speed with the structure head, ``metric.head =
    torch.compile(metric.head)``: inductor fuses the head's plain ops; the distances, a loss's input
    gradient and the other entry points (embed, spatial) stay those of the eager metric, to float32
    rounding (the two compute the structure term by different formulas: 1e-5 relative)."""
    eager = lowps.PerceptualDistance().eval()
    compiled = lowps.PerceptualDistance().eval()
    compiled.head = torch.compile(compiled.head)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 64, 64, generator=g), torch.rand(4, 3, 64, 64, generator=g)
    with torch.inference_mode():
        want = eager(x, y)
        torch.testing.assert_close(compiled(x, y), want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
        torch.testing.assert_close(compiled.embed(x), eager.embed(x))
        torch.testing.assert_close(compiled.spatial(x, y), eager.spatial(x, y))
    grads = []
    for m in (eager, compiled):
        xx = x.clone().requires_grad_()
        m(xx, y).sum().backward()
        grads.append(xx.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5 * float(grads[0].abs().max()))
