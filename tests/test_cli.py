import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lowps
from lowps.cli import build_parser, main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def _imgs(d, names, seed=0, size=32):
    d.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(names):
        arr = (np.random.default_rng(seed + k).random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(d / n)


def test_distance_command_prints_the_library_value(capsys):
    assert main(["distance", str(EXAMPLES / "ref.png"), str(EXAMPLES / "blur.png"), "--weights", "random"]) == 0
    printed = float(capsys.readouterr().out.strip())
    want = float(lowps.distance(EXAMPLES / "ref.png", EXAMPLES / "blur.png", weights="random")[0])
    assert printed == pytest.approx(want, abs=1e-6)


def test_distance_per_layer(capsys):
    assert main(["distance", str(EXAMPLES / "ref.png"), str(EXAMPLES / "noise.png"), "--weights", "random",
                 "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert "stage1:" in out and "stage4:" in out


def test_errors_go_to_stderr_with_exit_2(capsys, tmp_path):
    assert main(["distance", str(tmp_path / "none.png"), str(EXAMPLES / "ref.png"), "--weights", "random"]) == 2
    assert "not found" in capsys.readouterr().err


def test_dirs_csv_and_json(tmp_path, capsys):
    _imgs(tmp_path / "a", ["x.png", "y.png", "only_a.png"])
    _imgs(tmp_path / "b", ["x.png", "y.png"], seed=10)
    assert main(["dirs", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "random", "--quiet"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(captured.out)))
    assert rows[0] == ["file", "distance"] and [r[0] for r in rows[1:]] == ["x.png", "y.png"]
    assert "only_a.png" in captured.err
    want = float(lowps.distance(tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", weights="random")[0])
    assert float(rows[1][1]) == pytest.approx(want, abs=1e-5)
    out = tmp_path / "d.json"
    assert main(["dirs", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "random", "--quiet",
                 "--out", str(out)]) == 0
    assert [r["file"] for r in json.loads(out.read_text())] == ["x.png", "y.png"]


def test_allpairs(tmp_path):
    _imgs(tmp_path / "a", ["1.png", "2.png", "3.png"])
    out = tmp_path / "m.json"
    assert main(["allpairs", str(tmp_path / "a"), "--weights", "random", "--quiet", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    mat = torch.tensor(data["distances"])
    assert mat.shape == (3, 3) and torch.all(mat.diagonal() == 0) and data["rows"] == ["1.png", "2.png", "3.png"]


def test_console_scripts_are_installed():
    bindir = Path(sys.executable).parent  # the environment lowps is installed in
    out = subprocess.run([str(bindir / "lowps"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "distance" in out.stdout
    out = subprocess.run([str(bindir / "lowps-score"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--dataset" in out.stdout


def test_parser_lists_every_command():
    text = build_parser().format_help()
    for cmd in ("distance", "dirs", "allpairs", "weights", "train", "eval"):
        assert cmd in text


def test_precision_option_reaches_the_metric(capsys):
    assert main(["distance", str(EXAMPLES / "ref.png"), str(EXAMPLES / "blur.png"), "--precision", "bf16", "--force-precision"]) == 0
    printed = float(capsys.readouterr().out.strip())
    want = float(lowps.distance(EXAMPLES / "ref.png", EXAMPLES / "blur.png", precision="bf16", force_precision=True)[0])
    fp32 = float(lowps.distance(EXAMPLES / "ref.png", EXAMPLES / "blur.png")[0])
    assert printed == pytest.approx(want, abs=1e-6) and printed != fp32
    assert printed == pytest.approx(fp32, rel=0.03)
