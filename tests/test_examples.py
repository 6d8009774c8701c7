"""Every example runs (small inputs), as a user would run it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lowps
from bapps_fixture import make_bapps
from lowps.backbones import create_backbone

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"


def run(*args, cwd=None):
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_restoration_loss_improves():
    # validation passes under inference_mode run between training steps with the loss's metric object
    out = run(EX / "restoration_loss.py", "--steps", "30", "--val-every", "10")
    import re
    lp_before, lp_after = (float(v) for v in re.search(r"; lowps (\S+) -> (\S+)", out).groups())
    assert lp_after < lp_before


def test_score_folder_demo(tmp_path):
    out = run(EX / "score_folder.py", "--csv", tmp_path / "s.csv")
    assert "mean" in out and (tmp_path / "s.csv").read_text().startswith("file,distance")


def test_heatmap(tmp_path):
    out = run(EX / "heatmap.py", "--out", tmp_path / "h.png")
    from PIL import Image
    assert Image.open(tmp_path / "h.png").size == (3 * 128, 128) and "distance" in out


@pytest.mark.slow
def test_plot_training_curve_with_bapps(tmp_path):
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for step, top1 in [(0, 0.5), (100, 3.0), (500, 9.0)]:
        bb = create_backbone("resnet6", num_classes=5, seed=step)
        sha = lowps.weights.save_checkpoint(run_dir / f"step{step:07d}.safetensors", bb.model, arch="resnet6",
                                            num_classes=5)
        (run_dir / f"step{step:07d}.json").write_text(json.dumps(
            {"arch": "resnet6", "step": step, "top1": top1, "file": f"step{step:07d}.safetensors", "sha256": sha}))
    root = make_bapps(tmp_path / "dataset", n=4, categories=("traditional",))
    out = run(EX / "plot_training_curve.py", run_dir, "--out", tmp_path / "c.png", "--bapps-root", root)
    assert "3 checkpoints" in out and (tmp_path / "c.png").stat().st_size > 1000


def test_make_example_images_is_reproducible(tmp_path):
    pytest.importorskip("skimage", reason="regenerating the example images needs scikit-image")
    import hashlib
    import shutil
    copy = tmp_path / "examples"
    shutil.copytree(EX, copy)
    run(copy / "make_example_images.py")
    for f in (EX / "images").glob("*.png"):
        assert hashlib.sha256(f.read_bytes()).digest() == hashlib.sha256((copy / "images" / f.name).read_bytes()).digest()
