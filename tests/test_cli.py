import argparse
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


def _two_dirs(tmp_path, bad=False):
    import shutil
    d0, d1 = tmp_path / "d0", tmp_path / "d1"
    for d in (d0, d1):
        d.mkdir()
        for name in ("ref.png", "blur.png"):
            shutil.copy(EXAMPLES / name, d / name)
    if bad:
        (d1 / "blur.png").write_bytes(b"not an image")
    return d0, d1


def test_dirs_json_has_numbers_and_bad_images_are_skipped_on_request(tmp_path, capsys):
    d0, d1 = _two_dirs(tmp_path, bad=True)
    assert main(["dirs", str(d0), str(d1), "--quiet"]) == 2
    assert "--skip-bad" in capsys.readouterr().err
    out = tmp_path / "r.json"
    assert main(["dirs", str(d0), str(d1), "--quiet", "--skip-bad", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["file"] for r in data] == ["ref.png"] and isinstance(data[0]["distance"], float)
    assert "skipped" in capsys.readouterr().err


def test_cli_output_and_argument_errors_exit_2_without_traceback(tmp_path, capsys):
    d0, d1 = _two_dirs(tmp_path)
    assert main(["dirs", str(d0), str(d1), "--quiet", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["allpairs", str(d0), "--quiet", "--out", str(tmp_path / "missing" / "m.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    for bad in ("0", "-1"):
        with pytest.raises(SystemExit) as e:
            main(["allpairs", str(d0), "--batch-size", bad])
        assert e.value.code == 2
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 8)
    assert main(["distance", str(EXAMPLES / "ref.png"), str(EXAMPLES / "blur.png"), "--weights",
                 str(tmp_path / "corrupt.safetensors")]) == 2
    assert "not a valid safetensors file" in capsys.readouterr().err


def test_cli_errors_name_flags_and_suggest_backbones(capsys):
    assert main(["distance", str(EXAMPLES / "ref.png"), str(EXAMPLES / "blur.png"), "--distance", "linear"]) == 2
    err = capsys.readouterr().err
    assert "--head-weights" in err and "head_weights=" not in err
    assert main(["distance", str(EXAMPLES / "ref.png"), str(EXAMPLES / "blur.png"), "--backbone", "resnt6"]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'resnt6'" in err and "did you mean resnet6" in err


def test_numbers_print_with_significant_digits():
    from lowps.cli import _num
    assert _num(1.9e-7) == "1.9e-07" and _num(0.123456789) == "0.123457"


def test_weights_list_long_and_json(capsys):
    assert main(["weights", "list", "--long"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("name") and "sha256" in out.splitlines()[0]
    assert lowps.weights.default_for("resnet6").sha256 in out
    assert main(["weights", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any(e["default_for"] == "resnet6" and len(e["sha256"]) == 64 for e in data)


def test_every_option_has_help_text():
    from lowps.cli import build_parser, build_score_parser

    def walk(p):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)
            elif action.option_strings and action.dest != "help":
                yield p.prog, action
    import argparse
    missing = [f"{prog} {a.option_strings[0]}" for parser in (build_parser(), build_score_parser())
               for prog, a in walk(parser) if not a.help]
    assert not missing, missing


def test_cli_choice_lists_match_the_library():
    """Lists the parsers keep (so that --help imports no torch) equal the library's registries."""
    from lowps.backbones import _TPU_ARCHS
    from lowps.cli.score import DATASETS
    from lowps.cli.weights import CONVERTIBLE
    from lowps.data.judgements import READERS
    from lowps.export import FORMATS
    from lowps.train.backbone import RECIPES
    from lowps.weights.convert_tf import _ARCH_ALIASES

    def choices(*path):
        p = build_parser()
        for name in path[:-1]:
            p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        return next(a for a in p._actions if a.dest == path[-1]).choices

    assert set(CONVERTIBLE) == set(_TPU_ARCHS) | set(_ARCH_ALIASES)
    assert set(DATASETS) == {"bapps"} | set(READERS)
    assert list(choices("export", "format")) == list(FORMATS)
    assert list(choices("train", "backbone", "recipe")) == list(RECIPES)
    assert list(choices("weights", "convert", "arch")) == list(CONVERTIBLE)
