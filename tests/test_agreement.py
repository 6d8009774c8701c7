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
            "-m", "lowps.cli_score"]
    args = ["--root", str(root), "--weights", "random", "--batch-size", "4", "--quiet"]
    two = tmp_path / "two.json"
    r = subprocess.run(base + args + ["--json", str(two)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    one = tmp_path / "one.json"
    r1 = subprocess.run([sys.executable, "-m", "lowps.cli_score"] + args + ["--json", str(one)], env=env,
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
