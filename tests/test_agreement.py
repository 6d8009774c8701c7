"""lowps-score end to end on generated BAPPS-layout fixtures."""
import json
import os
import subprocess
import sys

import pytest
import torch

import lowps
from bapps_fixture import make_bapps
from conftest import free_port
from lowps.cli import score_main
from lowps.data.bapps import TwoAFCSet
from lowps.scoring import score_2afc


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_bapps(tmp_path_factory.mktemp("bapps") / "dataset", n=12, categories=("traditional", "cnn"), jnd=True)


def test_cli_json_equals_direct_scoring(root, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert score_main(["--dataset", "bapps", "--root", str(root), "--weights", "random", "--json", str(out),
                       "--batch-size", "5", "--quiet", "--per-layer"]) == 0
    table = capsys.readouterr().out
    assert "traditional" in table and "cnn" in table and "mean: distortions" in table
    report = json.loads(out.read_text())
    m = lowps.PerceptualDistance(weights="random")
    for cat in ("traditional", "cnn"):
        ds = TwoAFCSet(root, cat)
        ref, p0, p1, judge = (torch.stack(x) for x in zip(*[ds[i] for i in range(len(ds))]))
        want = score_2afc(m(ref, p0), m(ref, p1), judge)
        assert report["categories"][cat]["score"] == pytest.approx(want, abs=1e-12)
        assert set(report["categories"][cat]["layers"]) == {"stage1", "stage2", "stage3", "stage4"}
    assert report["config"]["weights"] == "random" and report["summary"]["distortions"] == pytest.approx(
        (report["categories"]["traditional"]["score"] + report["categories"]["cnn"]["score"]) / 2)


@pytest.mark.parametrize("metric", ["l2", "psnr", "ssim", "lpips-alex"])
def test_baselines(root, tmp_path, metric, monkeypatch, capsys):
    if metric == "lpips-alex":  # trunk weights are not downloadable here: a random trunk via registry is not
        pytest.importorskip("torchvision")
        monkeypatch.setenv("LOWPS_OFFLINE", "1")
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        assert score_main(["--root", str(root), "--metric", metric, "--quiet"]) == 2
        assert "alexnet" in capsys.readouterr().err
        return
    out = tmp_path / "b.json"
    assert score_main(["--root", str(root), "--metric", metric, "--json", str(out), "--quiet",
                       "--categories", "traditional"]) == 0
    score = json.loads(out.read_text())["categories"]["traditional"]["score"]
    assert 0.0 <= score <= 1.0


def test_jnd_mode_and_plot(root, tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "j.json", tmp_path / "j.png"
    assert score_main(["--root", str(root), "--mode", "jnd", "--weights", "random", "--json", str(out),
                       "--plot", str(png), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert set(report["categories"]) == {"traditional", "cnn"} and png.stat().st_size > 1000


def test_bad_root_is_a_clear_error(tmp_path, capsys):
    assert score_main(["--root", str(tmp_path / "nope"), "--weights", "random", "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_match_one(root, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            "-m", "lowps.cli.score"]
    args = ["--root", str(root), "--weights", "random", "--batch-size", "4", "--quiet"]
    two = tmp_path / "two.json"
    r = subprocess.run(base + args + ["--json", str(two)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    one = tmp_path / "one.json"
    r1 = subprocess.run([sys.executable, "-m", "lowps.cli.score"] + args + ["--json", str(one)], env=env,
                        capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr[-2000:]
    assert json.loads(two.read_text())["categories"] == json.loads(one.read_text())["categories"]


def test_precision_is_recorded_and_refused_for_baselines(root, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert score_main(["--root", str(root), "--precision", "bf16", "--force-precision", "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["precision"] == "bf16"
    ref = lowps.PerceptualDistance(precision="bf16", force_precision=True)
    ds = TwoAFCSet(root, "cnn")
    r, p0, p1, judge = (torch.stack(x) for x in zip(*[ds[i] for i in range(len(ds))]))
    assert report["categories"]["cnn"]["score"] == pytest.approx(score_2afc(ref(r, p0), ref(r, p1), judge), abs=1e-12)
    assert score_main(["--root", str(root), "--metric", "l2", "--precision", "bf16", "--quiet"]) == 2
    assert "applies to lowps metrics only" in capsys.readouterr().err


def test_worker_errors_show_the_original_message(root, capsys):
    bad = sorted((root / "2afc" / "val" / "cnn" / "p0").iterdir())[0]
    saved = bad.read_bytes()
    bad.write_bytes(b"not a png")
    try:
        assert score_main(["--root", str(root), "--weights", "random", "--workers", "1", "--quiet",
                           "--categories", "cnn"]) == 2
    finally:
        bad.write_bytes(saved)
    err = capsys.readouterr().err
    assert "cannot read image" in err and "Original Traceback" not in err and err.count("\n") <= 2


def test_an_unbuildable_baseline_is_skipped_and_the_rest_written(tmp_path, monkeypatch, capsys):
    """Issue #34: lpips-alex cannot be built offline; l2 and lowps are still scored, and the table,
    JSON (with the skipped entry and its reason) and plot are written; the exit status is 3 (partial)."""
    from judgement_fixtures import make_2afc_csv
    from lowps.cli.score import EXIT_PARTIAL

    pytest.importorskip("matplotlib")
    csv = make_2afc_csv(tmp_path / "set", n=8, size=32)
    monkeypatch.setenv("LOWPS_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached AlexNet
    out, plot = tmp_path / "r.json", tmp_path / "r.png"
    with pytest.warns(RuntimeWarning, match="skipping lpips-alex"):
        rc = score_main(["--dataset", "2afc", "--csv", str(csv), "--weights", "random", "--baselines", "l2,lpips-alex",
                         "--bootstrap", "0", "--json", str(out), "--plot", str(plot), "--quiet"])
    assert rc == EXIT_PARTIAL == 3
    table = capsys.readouterr().out
    assert "l2" in table and "lowps" in table and "skipped lpips-alex" in table
    report = json.loads(out.read_text())
    assert [r["config"]["metric"] for r in report["reports"]] == ["lowps", "l2"]
    assert report["skipped"][0]["metric"] == "lpips-alex" and "LOWPS_OFFLINE" in report["skipped"][0]["reason"]
    assert len(report["reports"]) == 2
    assert plot.stat().st_size > 1000


def test_lpips_baseline_from_a_local_trunk_file(tmp_path, capsys):
    """--baselines lpips-alex:FILE loads the trunk from a local state dict (no download): equal to
    lowps.LPIPS with that trunk, and the JSON records the file's sha256."""
    from judgement_fixtures import make_2afc_csv
    from lowps.weights.hub import sha256_file

    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    trunk = tmp_path / "alex.pth"
    torch.save(tv.models.alexnet(weights=None).state_dict(), trunk)  # the whole torchvision file
    csv = make_2afc_csv(tmp_path / "set", n=6, size=64)
    out = tmp_path / "r.json"
    assert score_main(["--dataset", "2afc", "--csv", str(csv), "--metric", "lpips-alex:" + str(trunk),
                       "--bootstrap", "0", "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["trunk_sha256"] == sha256_file(trunk)
    lp = lowps.LPIPS(net="alex", verbose=False, pnet_path=trunk)
    from lowps.data.judgements import ImageTuples, read_2afc_csv
    recs = read_2afc_csv(csv)
    ds = ImageTuples(recs)
    ref, p0, p1 = (torch.stack([ds[i][k] for i in range(len(ds))]) for k in range(3))
    with torch.no_grad():
        d0, d1 = lp(ref, p0, normalize=True).flatten(), lp(ref, p1, normalize=True).flatten()
    assert report["all"]["score"] == pytest.approx(score_2afc(d0, d1, [r.h for r in recs]), abs=1e-12)
