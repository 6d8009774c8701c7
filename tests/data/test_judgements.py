"""Judgement sets beyond BAPPS: readers on fixtures in each published layout, bad input, and lowps-score."""
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lowps
from lowps import scoring
from lowps.cli import score_main
from lowps.data import judgements as J
from lowps.inputs import load_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from judgement_fixtures import make_2afc_csv, make_kadid10k, make_mos_csv, make_nights, make_pipal, make_tid2013  # noqa: E402


def _rewrite(path, mutate):
    rows = list(csv.reader(open(path)))
    rows = mutate(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture(scope="module")
def afc(tmp_path_factory):
    return make_2afc_csv(tmp_path_factory.mktemp("afc"), n=12)


@pytest.fixture(scope="module")
def mos(tmp_path_factory):
    return make_mos_csv(tmp_path_factory.mktemp("mos"), refs=4, levels=3)


# -- readers on each published layout --------------------------------------------------------------

def test_2afc_csv_reader(afc):
    items = J.read_2afc_csv(afc)
    assert len(items) == 12 and {t.category for t in items} == {"blur", "noise", "jpeg", "color"}
    assert all(0 <= t.h <= 1 and t.ref.is_file() for t in items)


def test_nights_reader(tmp_path):
    root = make_nights(tmp_path, n=20)
    test = J.read_nights(tmp_path, split="test")  # the parent of nights/ works too
    rows = list(csv.DictReader(open(root / "data.csv")))
    want = [r for r in rows if r["split"] == "test" and int(r["votes"]) >= 6]
    assert len(test) == len(want) > 0
    for t, r in zip(test, want):
        assert t.p0 == root / r["left_path"] and t.p1 == root / r["right_path"]
        assert t.h == pytest.approx(int(r["right_vote"]) / int(r["votes"]))
    assert len(J.read_nights(root, split="test", min_votes=0)) > len(test)  # votes < 6 were dropped
    with pytest.raises(J.JudgementLayoutError, match="splits present"):
        J.read_nights(root, split="holdout")


def test_mos_readers_in_published_layouts(tmp_path):
    tid = J.read_tid2013(make_tid2013(tmp_path / "tid", refs=2, levels=2))
    assert len(tid) == 2 * 4 * 2 and tid[0].ref.name == "I01.BMP" and tid[0].category == "type01"
    kadid = J.read_kadid10k(make_kadid10k(tmp_path, refs=2, levels=2))
    assert len(kadid) == 16 and all(1 <= r.score <= 5 for r in kadid)
    pipal = J.read_pipal(make_pipal(tmp_path / "pipal", refs=2, levels=2))
    assert len(pipal) == 16 and pipal[0].ref.name == "A0001.bmp" and pipal[0].category == "type00"


def test_tid2013_reference_names_case_insensitive(tmp_path):
    root = make_tid2013(tmp_path, refs=1, levels=1)
    (root / "reference_images" / "I01.BMP").rename(root / "reference_images" / "i01.bmp")
    assert J.read_tid2013(root)[0].ref.name == "i01.bmp"


# -- bad input: a clear error naming the file and row ---------------------------------------------

@pytest.mark.parametrize("case,match", [
    ("missing_column", r"missing column\(s\) \['h'\]"),
    ("h_range", r"judgements.csv:3: h = 1.5 is outside \[0, 1\]"),
    ("h_nan", r"judgements.csv:3: column 'h' is 'nan'; it must be finite"),
    ("unknown_path", r"judgements.csv:3: image .*nope.png does not exist"),
    ("duplicate", r"judgements.csv:14: duplicate of .*judgements.csv:2"),
    ("size", r"judgements.csv:2: the images of one row differ in size"),
    ("unreadable", r"judgements.csv:2: cannot read image"),
    ("fifo", r"not a regular file"),
])
def test_2afc_csv_bad_input(tmp_path, case, match):
    path = make_2afc_csv(tmp_path, n=12)
    if case == "missing_column":
        _rewrite(path, lambda rows: [r[:3] + r[4:] for r in rows])
    elif case == "h_range":
        _rewrite(path, lambda rows: rows[:2] + [rows[2][:3] + ["1.5"] + rows[2][4:]] + rows[3:])
    elif case == "h_nan":
        _rewrite(path, lambda rows: rows[:2] + [rows[2][:3] + ["nan"] + rows[2][4:]] + rows[3:])
    elif case == "unknown_path":
        _rewrite(path, lambda rows: rows[:2] + [["images/nope.png"] + rows[2][1:]] + rows[3:])
    elif case == "duplicate":
        _rewrite(path, lambda rows: rows + [rows[1]])
    elif case == "size":
        from PIL import Image
        Image.new("RGB", (32, 64)).save(tmp_path / "images" / "0000_p0.png")
    elif case == "unreadable":
        (tmp_path / "images" / "0000_p1.png").write_bytes(b"not a png")
    elif case == "fifo":
        os.remove(tmp_path / "images" / "0000_p1.png")
        os.mkfifo(tmp_path / "images" / "0000_p1.png")
    with pytest.raises(J.JudgementLayoutError, match=match):
        J.read_2afc_csv(path)


def test_mos_bad_input(tmp_path):
    path = make_mos_csv(tmp_path, refs=1, levels=1)
    _rewrite(path, lambda rows: rows[:2] + [rows[2][:2] + ["abc"] + rows[2][3:]] + rows[3:])
    with pytest.raises(J.JudgementLayoutError, match=r"scores.csv:3: column 'mos' is 'abc', not a number"):
        J.read_mos_csv(path)
    root = make_tid2013(tmp_path / "tid", refs=1, levels=1)
    (root / "mos_with_names.txt").write_text("12.0 i01_01_1.bmp\n")
    with pytest.raises(J.JudgementLayoutError, match=r"mos_with_names.txt:1: MOS 12.0 is outside"):
        J.read_tid2013(root)
    with pytest.raises(J.JudgementLayoutError, match="Train_Label is missing"):
        J.read_pipal(tmp_path)


def test_hidden_label_files_are_skipped(tmp_path):
    root = make_pipal(tmp_path, refs=1, levels=1)
    (root / "Train_Label" / ".A0001.txt").write_text("junk\n")
    assert len(J.read_pipal(root)) == 4


# -- lowps-score: equal to the formulas on direct distances ----------------------------------------

def _direct(records, metric, resize=None):
    ds = J.ImageTuples(records, resize=resize)
    out0, out1 = [], []
    for i in range(len(ds)):
        item = ds[i]
        with torch.no_grad():
            out0.append(float(metric(item[0][None], item[1][None])[0]))
            if isinstance(records[0], J.Triplet):
                out1.append(float(metric(item[0][None], item[2][None])[0]))
    return np.array(out0), np.array(out1)


def test_score_2afc_csv_equals_formula_on_direct_distances(afc, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert score_main(["--dataset", "2afc", "--csv", str(afc), "--json", str(out), "--bootstrap", "100",
                       "--quiet"]) == 0
    report = json.loads(out.read_text())
    records = J.read_2afc_csv(afc)
    d0, d1 = _direct(records, lowps.PerceptualDistance())
    h = np.array([t.h for t in records])
    assert report["all"]["score"] == pytest.approx(scoring.score_2afc(d0, d1, h), abs=1e-6)
    for cat in {t.category for t in records}:
        k = np.array([t.category == cat for t in records])
        assert report["categories"][cat]["score"] == pytest.approx(scoring.score_2afc(d0[k], d1[k], h[k]), abs=1e-6)
    assert report["all"]["rank_correlation"] == pytest.approx(scoring.rank_correlation(d0, d1, h), abs=1e-6)
    lo, hi = report["all"]["ci95"]["score"]
    assert lo <= report["all"]["score"] <= hi
    assert "2AFC %" in capsys.readouterr().out


def test_score_mos_csv_equals_scipy(mos, tmp_path):
    from scipy.stats import kendalltau, spearmanr
    out = tmp_path / "r.json"
    assert score_main(["--dataset", "mos", "--csv", str(mos), "--json", str(out), "--bootstrap", "100",
                       "--quiet"]) == 0
    report = json.loads(out.read_text())
    records = J.read_mos_csv(mos)
    d, _ = _direct(records, lowps.PerceptualDistance())
    y = np.array([r.score for r in records])
    assert report["higher_is_better"] is True
    assert report["all"]["srcc"] == pytest.approx(-spearmanr(d, y).statistic, abs=1e-6)
    assert report["all"]["krcc"] == pytest.approx(-kendalltau(d, y).statistic, abs=1e-6)
    assert report["all"]["srcc"] > 0  # the fixture's MOS falls with severity, as the distance rises
    assert set(report["categories"]) == {"blur", "noise", "jpeg", "color"}


def test_score_dmos_direction_flips_sign(tmp_path):
    path = make_mos_csv(tmp_path, refs=3, levels=3, dmos=True)
    out = tmp_path / "r.json"
    assert score_main(["--dataset", "mos", "--csv", str(path), "--lower-is-better", "--json", str(out),
                       "--bootstrap", "0", "--quiet"]) == 0
    assert json.loads(out.read_text())["all"]["srcc"] > 0


def test_bootstrap_is_deterministic_for_a_seed(afc, tmp_path):
    outs = []
    for seed in (7, 7, 8):
        out = tmp_path / f"r{len(outs)}.json"
        assert score_main(["--dataset", "2afc", "--csv", str(afc), "--json", str(out), "--bootstrap", "100",
                           "--seed", str(seed), "--quiet", "--metric", "l2"]) == 0
        outs.append(json.loads(out.read_text())["all"]["ci95"])
    assert outs[0] == outs[1] and outs[0] != outs[2]


@pytest.mark.slow
def test_several_metrics_in_one_run_with_plot(mos, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, plot = tmp_path / "r.json", tmp_path / "p.png"
    assert score_main(["--dataset", "mos", "--csv", str(mos), "--distance", "meanpool", "local",
                       "--baselines", "l2,psnr,ssim", "--bootstrap", "100", "--json", str(out), "--plot", str(plot),
                       "--resize", "48", "--quiet"]) == 0
    report = json.loads(out.read_text())
    names = [r["config"]["metric"] + (":" + r["config"]["distance"] if r["config"]["metric"] == "lowps" else "")
             for r in report["reports"]]
    assert names == ["lowps:meanpool", "lowps:local", "l2", "psnr", "ssim"]
    assert all(r["resize"] == 48 for r in report["reports"])
    table = capsys.readouterr().out
    assert "SRCC" in table and "lowps:resnet6/local" in table and "ssim" in table
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("maker,dataset", [(make_tid2013, "tid2013"), (make_kadid10k, "kadid10k"),
                                           (make_pipal, "pipal"), (make_nights, "nights")])
def test_named_datasets_score_from_their_root(tmp_path, maker, dataset):
    root = maker(tmp_path, **({"n": 16} if dataset == "nights" else {"refs": 2, "levels": 2}))
    out = tmp_path / "r.json"
    assert score_main(["--dataset", dataset, "--root", str(root), "--metric", "l2", "--bootstrap", "100",
                       "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["dataset"] == dataset and report["all"]["n"] > 0


def test_undefined_statistics_are_null_not_nan(tmp_path):
    path = make_mos_csv(tmp_path, refs=1, levels=1)
    _rewrite(path, lambda rows: [rows[0]] + [r[:2] + ["5.0"] + r[3:] for r in rows[1:]])  # constant MOS
    out = tmp_path / "r.json"
    assert score_main(["--dataset", "mos", "--csv", str(path), "--metric", "l2", "--bootstrap", "100",
                       "--json", str(out), "--quiet"]) == 0
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["all"]["srcc"] is None


@pytest.mark.parametrize("argv,match", [
    (["--dataset", "2afc"], "needs --csv"),
    (["--dataset", "tid2013"], "needs --root"),
    (["--dataset", "2afc", "--csv", "nope.csv"], "does not exist"),
])
def test_cli_errors(argv, match, capsys):
    assert score_main(argv + ["--quiet"]) == 2
    assert match in capsys.readouterr().err


def test_cli_argument_errors_exit_2(capsys):
    for argv in (["--batch-size", "0"], ["--batch-size", "-1"], ["--dataset", "tid2013", "--lower-is-better"]):
        with pytest.raises(SystemExit) as e:
            score_main(argv)
        assert e.value.code == 2


def test_resize_scales_the_shorter_side(afc):
    ds = J.ImageTuples(J.read_2afc_csv(afc), resize=32)
    ref = ds[0][0]
    assert ref.shape[-2:] == (32, 32) and torch.allclose(load_image(J.read_2afc_csv(afc)[0].ref).mean(), ref.mean(),
                                                          atol=0.02)
