"""lowps-score --report: one self-contained HTML page (issue #38)."""
import re
import shutil
import subprocess

import numpy as np
import pytest

from judgement_fixtures import make_2afc_csv, make_mos_csv
from lowps.cli import score_main
from lowps.report import disagreements_2afc, metric_splits_2afc, worst_ranked_mos


def test_selection_rules():
    # metric picks p1 where d1 < d0; people's majority is p1 where h > 0.5
    d0 = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    d1 = np.array([0.1, 0.5, 2.0, 0.2, 1.0, 0.1])
    h = np.array([0.0, 0.2, 0.0, 0.5, 0.0, 1.0])
    # wrong: 0 (gap .82, votes 1), 1 (gap .33, votes .6); 2 right; 3 no majority; 4 metric tie; 5 right
    assert disagreements_2afc(d0, d1, h, 5) == [0, 1]
    assert disagreements_2afc(d0, d1, h, 1) == [0]
    other = (np.ones(6), np.array([2.0, 0.9, 0.5, 5.0, 0.5, 0.1]))  # picks p0, p1, p1, p0, p1, p1
    # split where the picks differ (4 is a tie for the first): 3 min(.67, .67), then 0 and 2 (both .33) in order
    assert metric_splits_2afc((d0, d1), other, 6) == [3, 0, 2]
    d = np.array([0.1, 0.2, 0.3, 0.4])
    mos = np.array([4.0, 3.0, 2.0, 1.0])  # perfectly ranked: every gap 0; flip two ends
    assert worst_ranked_mos(d, np.array([1.0, 3.0, 2.0, 4.0]), 2) == [0, 3]
    assert worst_ranked_mos(d, mos, 1, higher_is_better=True) == [0]


def _report(tmp_path, kind="2afc", k=3, extra=()):
    if kind == "2afc":
        data = make_2afc_csv(tmp_path / "set", n=10, size=32)
        args = ["--dataset", "2afc", "--csv", str(data), "--distance", "local", "meanpool", "--baselines", "l2"]
    else:
        data = make_mos_csv(tmp_path / "set", refs=3, levels=3, size=32)
        args = ["--dataset", "mos", "--csv", str(data), "--baselines", "l2"]
    out = tmp_path / "r.html"
    rc = score_main([*args, "--weights", "random", "--bootstrap", "100", "--report", str(out), "--report-k", str(k),
                     "--json", str(tmp_path / "r.json"), "--quiet", *extra])
    assert rc == 0
    return out


def test_2afc_report_is_self_contained_and_shows_the_rule_s_cases(tmp_path):
    import json

    out = _report(tmp_path, k=3)
    page = out.read_text()
    # nothing from elsewhere: no URL in any src/href/url(), no script, no @import
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    imgs = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)
    assert imgs[0] == "comparison chart"
    report = json.loads((tmp_path / "r.json").read_text())["reports"]
    d = report[0]["distances"]
    from lowps.data.judgements import read_2afc_csv
    h = [t.h for t in read_2afc_csv(tmp_path / "set" / "judgements.csv")]
    want = disagreements_2afc(d["d0"], d["d1"], h, 3)
    split = metric_splits_2afc((d["d0"], d["d1"]), (report[1]["distances"]["d0"], report[1]["distances"]["d1"]), 3)
    shown = [int(m) for m in re.findall(r'alt="reference of triplet (\d+)"', page)]
    assert shown == want + split and len(imgs) == 1 + 3 * len(shown)
    for i in want:  # each case carries the vote share and every metric's choice
        block = page[page.index(f'alt="reference of triplet {i}"'):]
        block = block[:block.index("</div></div>") if "</div></div>" in block else len(block)]
        assert "of people chose p0" in block and block.count("picks") == 3
    assert "Provenance" in page and "lowps-score --dataset 2afc" in page and "&quot;lowps&quot;:" in page


def test_mos_report_has_the_scatter_and_worst_pairs(tmp_path):
    out = _report(tmp_path, kind="mos", k=2)
    page = out.read_text()
    assert 'alt="metric against MOS"' in page
    assert len(re.findall(r'alt="reference of pair \d+"', page)) == 2


def test_report_errors(tmp_path, capsys):
    data = make_2afc_csv(tmp_path / "set", n=4, size=32)
    base = ["--dataset", "2afc", "--csv", str(data), "--metric", "l2", "--bootstrap", "0", "--quiet"]
    assert score_main([*base, "--report", str(tmp_path / "r.txt")]) == 2
    assert ".html" in capsys.readouterr().err
    assert score_main([*base, "--report", str(tmp_path)]) == 2  # a directory


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_report_renders_in_headless_chromium_from_file(tmp_path):
    """A real browser opens the page from file:// with no network: the screenshot is not blank, and
    (checked by a probe script added to a copy of the page, the page itself has none) every image
    decodes: complete, with a natural size."""
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium); .ci/run installs it")
    from PIL import Image

    out = _report(tmp_path, k=4)
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--user-data-dir=" + str(tmp_path / "profile")]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1200,1600", f"--screenshot={shot}", out.as_uri()], capture_output=True,
                   timeout=120, check=True)
    im = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert im.std() > 20, "the screenshot is blank"
    probe = tmp_path / "probe.html"
    page = out.read_text()
    probe.write_text(page.replace("</body>", "<script>document.body.setAttribute('data-images', [...document."
                                             "images].map(i => i.complete && i.naturalWidth > 0 ? 1 : 0).join(''))"
                                             "</script></body>"))
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    flags_seen = re.search(r'data-images="([01]*)"', dom)
    assert flags_seen, dom[:500]
    n_imgs = len(re.findall(r"<img ", page))
    assert flags_seen.group(1) == "1" * n_imgs and n_imgs >= 4  # the chart and at least one triplet


@pytest.mark.parametrize("mode", ["2afc", "jnd"])
def test_bapps_report(tmp_path, mode):
    """--dataset bapps --report: the cases come from all scored categories, in their order, with the
    images as the BAPPS loader gives them; JND pairs are ranked against the share judged the same."""
    import json

    from bapps_fixture import make_bapps
    from lowps.data.bapps import bapps_records

    root = make_bapps(tmp_path / "bapps", n=6, categories=("traditional", "cnn"), jnd=True)
    out = tmp_path / "r.html"
    rc = score_main(["--dataset", "bapps", "--root", str(root), "--mode", mode, "--weights", "random",
                     "--distance", "local", "meanpool", "--baselines", "l2", "--bootstrap", "100",
                     "--report", str(out), "--report-k", "3", "--json", str(tmp_path / "r.json"), "--quiet"])
    assert rc == 0
    page = out.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page) and "<script" not in page.lower()
    reports = json.loads((tmp_path / "r.json").read_text())["reports"]
    records, images = bapps_records(root, mode, "val", ["traditional", "cnn"])
    assert len(records) == len(images) == 12 == len(reports[0]["distances"]["d0"])
    for r in reports:  # per-category CIs in the table, no per-category distances left in the JSON
        for c in r["categories"].values():
            assert "distances" not in c and len(c["ci95"]) == 2 and c["ci95"][0] <= c["score"] <= c["ci95"][1]
    assert "95% CI" in page and f"bapps {mode} val" in page
    d = reports[0]["distances"]
    if mode == "2afc":
        want = disagreements_2afc(d["d0"], d["d1"], [t.h for t in records], 3)
        shown = [int(m) for m in re.findall(r'alt="reference of triplet (\d+)"', page)]
        assert shown[:len(want)] == want
        assert all(f"2afc/val/{records[i].category}/" in page for i in want)
    else:
        want = worst_ranked_mos(d["d0"], [r.score for r in records], 3)
        shown = [int(m) for m in re.findall(r'alt="p0 of pair (\d+)"', page)]
        assert shown == want and "judged them the same" in page
    # the thumbnails are the scored images: the first shown case's reference, as the BAPPS set loads it
    from lowps.report import _png_uri

    assert _png_uri(images[want[0]][0]) in page
