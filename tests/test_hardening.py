"""The second adversarial pass (issue #37, ../shared/notes/adversarial-cases.md): each class of case
re-run with the inputs from the list, each ending correct or in a clear error."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lowps
from judgement_fixtures import make_2afc_csv, make_mos_csv, make_tid2013
from lowps.cli import main, score_main
from lowps.inputs import InputError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
from test_imagenet import make_tiny  # noqa: E402

# -- data loss: a failing write leaves the previous file byte for byte ---------------------------------

def _write_with_file_size_limit(code: str, limit: int) -> subprocess.CompletedProcess:
    """Run ``code`` with writes past ``limit`` bytes failing (RLIMIT_FSIZE: EFBIG, as a full disk gives
    ENOSPC), the way a full disk stops a write half way."""
    prelude = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE/SIGXFSZ as on Linux")
@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_export_that_cannot_be_written_keeps_the_old_file(tmp_path, fmt):
    # ex-disk-full-ts/-pt2: the old file was overwritten by a partial one; /dev/full aborted in C++
    old = tmp_path / f"m.{fmt}"
    old.write_bytes(b"the user's previous export" * 100)
    before = old.read_bytes()
    r = _write_with_file_size_limit(f"""
        from lowps.cli import main
        raise SystemExit(main(["export", "--format", {fmt!r}, "--out", {str(old)!r}]))
    """, limit=1_000_000)  # the graph is ~7 MB
    assert r.returncode == 2, r.stderr[-2000:]
    assert "cannot write" in r.stderr
    assert old.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name]  # no temporary left behind
    assert main(["export", "--format", fmt, "--out", "/dev/full"]) == 2  # a clear error, not SIGABRT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE/SIGXFSZ as on Linux")
def test_plot_that_cannot_be_written_keeps_the_old_file(tmp_path):
    pytest.importorskip("matplotlib")
    csv = make_2afc_csv(tmp_path / "set", n=6, size=32)
    old = tmp_path / "p.png"
    old.write_bytes(b"\x89PNG old plot" * 10)
    before = old.read_bytes()
    r = _write_with_file_size_limit(f"""
        from lowps.cli import score_main
        raise SystemExit(score_main(["--dataset", "2afc", "--csv", {str(csv)!r}, "--metric", "l2", "--bootstrap", "0",
                                     "--plot", {str(old)!r}, "--quiet"]))
    """, limit=1000)  # a plot is ~20 kB
    assert r.returncode == 2, r.stderr[-2000:]
    assert old.read_bytes() == before
    for bad in ("/dev/full", str(tmp_path)):  # score-plot-devfull, score-plot-dir: errors, not rc 0
        assert score_main(["--dataset", "2afc", "--csv", str(csv), "--metric", "l2", "--bootstrap", "0",
                           "--plot", bad, "--quiet"]) == 2


# -- silently wrong --------------------------------------------------------------------------------

def test_silently_wrong_cases_are_errors_or_right(tmp_path, capsys):
    for kw in ({"force_precision": "no"}, {"check_inputs": "false"}):  # cfg-*-str: stored as True before
        with pytest.raises(TypeError, match="True or False"):
            lowps.MetricConfig(**kw)
    cfg = lowps.MetricConfig(distance="local")
    with pytest.raises(ValueError, match="not both"):  # cfg-get-metric-config-default-kw
        lowps.get_metric(config=cfg, distance="meanpool")
    a = torch.rand(5, 3, 32, 32)
    with pytest.raises(InputError, match="exclude_self"):  # nn-exclude-self-diff
        lowps.nearest(a[:3], a[2:], exclude_self=True)
    with pytest.raises(InputError, match="differ in size"):  # pw-mixed-sizes-ab
        lowps.pairwise(torch.rand(3, 3, 32, 32), torch.rand(3, 3, 40, 40), distance="meanpool")
    mixed = [torch.rand(3, 32, 32), torch.rand(3, 32, 32), torch.rand(3, 40, 40)]
    for bs in (2, 64):  # pw-mixed-sizes-batches: one rule whatever the batching
        with pytest.raises(InputError, match="differ in size"):
            lowps.pairwise(mixed, batch_size=bs, distance="meanpool")
    # t-nan-pixel-unchecked / t-inf-unchecked: NaN in, NaN out (oneDNN's conv + ReLU would hide it)
    m = lowps.PerceptualDistance(check_inputs=False)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    xn = x.clone()
    xn[0, 0, 5, 5] = float("nan")
    d = m(xn, y)
    assert torch.isnan(d[0]) and torch.equal(d[1], m(x, y)[1])
    assert torch.isnan(m(torch.full_like(x, float("inf")), y)).all()
    assert torch.isnan(m.embed(xn)[0]).all() and torch.isfinite(m.embed(xn)[1]).all()
    # 2afc-1row, boot-1row, mos-4rows: a single reference image gives "CI undefined", not [x, x]
    one = make_2afc_csv(tmp_path / "one", n=1, size=32)
    assert score_main(["--dataset", "2afc", "--csv", str(one), "--metric", "l2", "--bootstrap", "100",
                       "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "CI undefined" in out and "[" not in out.split("\n")[2]
    assert json.loads((tmp_path / "r.json").read_text())["all"]["ci95"]["score"] is None
    with pytest.raises(SystemExit):  # boot-1: a zero-width "interval" from one resample
        score_main(["--dataset", "2afc", "--csv", str(one), "--metric", "l2", "--bootstrap", "1"])
    assert "--bootstrap 1" in capsys.readouterr().err


@pytest.mark.slow
def test_training_flags_that_would_train_nothing_are_refused(tmp_path, capsys):
    data = make_tiny(tmp_path / "tiny", classes=2, per_class=8, val_per_class=2)

    def train(*extra):
        return main(["train", "backbone", "--data", f"tiny-imagenet:{data}", "--out", str(tmp_path / "run"),
                     "--batch-size", "8", "--quiet", "--threads", "1", *extra])
    for flags, flag in ((["--epochs", "0"], "--epochs"), (["--epochs", "-1"], "--epochs"),
                        (["--weight-decay", "-1"], "--weight-decay"), (["--lr", "nan"], "--lr"),
                        (["--lr", "1e30"], "--lr"), (["--batch-size", "64"], "--batch-size")):
        assert train(*flags) == 2, flags  # tr-epochs-0/-neg, tr-wd-neg, tr-lr-nan/-huge, tr-batch-gt-data
        assert flag in capsys.readouterr().err, flags
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    for content in (os.urandom(256), b""):  # tr-resume-corrupt, tr-resume-empty
        (run / "resume.pt").write_bytes(content)
        assert train("--epochs", "1", "--resume") == 2
        err = capsys.readouterr().err
        assert "cannot resume" in err and "Traceback" not in err
    assert not list(run.glob("step*.safetensors"))


def test_train_linear_flags_are_checked(tmp_path):
    from lowps.train.linear import train_linear

    for kw, flag in (({"decay_epochs": -1}, "--decay-epochs"), ({"epochs": 0}, "--epochs"),
                     ({"lr": float("nan")}, "--lr")):
        with pytest.raises(ValueError, match=flag):
            train_linear("resnet6", str(tmp_path), str(tmp_path / "h.safetensors"), **kw)
    with pytest.raises(ValueError, match=r"\.safetensors"):  # tl-out-nosuffix
        train_linear("resnet6", str(tmp_path), str(tmp_path / "linear_out"))


# -- raw tracebacks become clear errors ------------------------------------------------------------

def test_former_tracebacks_are_clear_errors():
    for make in (lambda: lowps.MetricConfig(layers=[["stage1"]]), lambda: lowps.MetricConfig(layers=1.5),
                 lambda: lowps.MetricConfig.from_dict({"layers": [[1], 2]}), lambda: lowps.MetricConfig.from_dict(None),
                 lambda: lowps.create_metric("local")):
        with pytest.raises(TypeError, match="layers|mapping|MetricConfig"):
            make()
    a = torch.rand(4, 3, 32, 32)
    for k in (None, 1.0):  # nn-k-none, nn-k-float
        with pytest.raises(InputError, match="k must be"):
            lowps.nearest(a, a, k=k)
    with pytest.raises(InputError, match="at least"):  # emb-dim-0
        lowps.PerceptualDistance().embedding_dim((0, 0))
    assert lowps.im2tensor(np.zeros((8, 8), np.uint8)).shape == (1, 3, 8, 8)  # im2tensor-2d: greyscale
    with pytest.raises(InputError, match="N x C x H x W"):  # tensor2im-3d
        lowps.tensor2im(torch.rand(3, 8, 8))
    with pytest.raises(InputError, match="5 dims"):  # pairwise of a 5-D tensor names its own shape
        lowps.pairwise(torch.rand(5, 1, 3, 64, 64))


# -- hangs -----------------------------------------------------------------------------------------

def test_huge_bootstrap_is_refused_at_once(tmp_path, capsys):
    mos = make_mos_csv(tmp_path / "mos", refs=3, levels=2, size=32)
    t0 = time.monotonic()
    with pytest.raises(SystemExit):  # boot-huge: ran silently for ever
        score_main(["--dataset", "mos", "--csv", str(mos), "--metric", "l2", "--bootstrap", "1000000000"])
    assert time.monotonic() - t0 < 10
    assert "100000" in capsys.readouterr().err


# -- weakly worded ---------------------------------------------------------------------------------

def test_export_size_and_tid2013_bom(tmp_path, capsys):
    for bad in ("abc", "64x", "-5"):
        with pytest.raises(SystemExit):
            main(["export", "--format", "pt2", "--out", str(tmp_path / "m.pt2"), "--size", bad])
        assert "--size" in capsys.readouterr().err
    from lowps.data.judgements import read_tid2013

    root = make_tid2013(tmp_path / "tid", refs=2, levels=2, size=32)
    want = [(r.dist.name, r.score) for r in read_tid2013(root)]
    mos = Path(root) / "mos_with_names.txt"
    mos.write_bytes(b"\xef\xbb\xbf" + mos.read_bytes())  # a byte-order mark, as the CSV readers accept
    assert [(r.dist.name, r.score) for r in read_tid2013(root)] == want and want
