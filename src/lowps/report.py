"""A self-contained HTML report of where metrics and people disagree (``lowps-score --report``).

One file, readable offline from ``file://``: the comparison table, the bar chart, and the cases
worth looking at, as the images were scored (after ``--resize``), upscaled with nearest-neighbour
so distortions stay visible. Images, the chart and the CSS are inline (data URIs); the page loads
nothing from elsewhere and runs no script. Only the shown images are embedded, so the page stays
small for any set size.

What it shows (the selection rules are `disagreements_2afc`, `metric_splits_2afc`, `worst_ranked_mos`):

* 2AFC sets (2AFC CSVs, NIGHTS, BAPPS 2AFC): the K triplets where the first metric disagrees most
  confidently with the human majority, and the K where the first two metrics disagree most with
  each other;
* MOS sets, and BAPPS JND (its "fraction who judged the pair the same" taken as the score): each
  metric against the scores with its fitted logistic, and the K pairs the first metric ranks
  furthest from the people.
"""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["disagreements_2afc", "metric_splits_2afc", "worst_ranked_mos", "write_report"]

THUMB = 128  # displayed side of a thumbnail, px


def _gap(d0: ArrayLike, d1: ArrayLike) -> np.ndarray:
    """Normalised distance gap (d0 - d1) / (d0 + d1) in [-1, 1]: > 0 means the metric picks p1."""
    d0, d1 = np.asarray(d0, np.float64), np.asarray(d1, np.float64)
    den = np.abs(d0) + np.abs(d1)
    return np.divide(d0 - d1, den, out=np.zeros_like(den), where=den > 0)


def disagreements_2afc(d0: ArrayLike, d1: ArrayLike, h: ArrayLike, k: int) -> list[int]:
    """Indices of the ``k`` triplets where the metric disagrees most confidently with the human
    majority: the metric's pick is the other image than most people's, ranked by
    ``|normalised gap| x |2h - 1|`` (a confident metric against a clear majority first). Triplets
    without a majority (h = 0.5) or a metric tie never count. Ties keep the set's order."""
    g, hh = _gap(np.asarray(d0), np.asarray(d1)), np.asarray(h, np.float64)
    wrong = (g != 0) & (hh != 0.5) & ((g > 0) != (hh > 0.5))
    score = np.where(wrong, np.abs(g) * np.abs(2 * hh - 1), -1.0)
    order = np.argsort(-score, kind="stable")
    return [int(i) for i in order[:k] if score[i] > 0]


def metric_splits_2afc(a: tuple[ArrayLike, ArrayLike], b: tuple[ArrayLike, ArrayLike], k: int) -> list[int]:
    """Indices of the ``k`` triplets where metrics ``a`` and ``b`` (each ``(d0, d1)``) pick different
    images most confidently, ranked by the smaller of their two normalised gaps (both sure)."""
    ga, gb = _gap(*map(np.asarray, a)), _gap(*map(np.asarray, b))
    split = (ga != 0) & (gb != 0) & ((ga > 0) != (gb > 0))
    score = np.where(split, np.minimum(np.abs(ga), np.abs(gb)), -1.0)
    order = np.argsort(-score, kind="stable")
    return [int(i) for i in order[:k] if score[i] > 0]


def worst_ranked_mos(d: ArrayLike, mos: ArrayLike, k: int, higher_is_better: bool = True) -> list[int]:
    """Indices of the ``k`` pairs the metric ranks furthest from the people: the largest
    ``|rank(metric's quality) - rank(people's quality)|`` (quality = -distance; MOS, or -DMOS)."""
    from scipy.stats import rankdata

    q_metric = rankdata(-np.asarray(d, np.float64))
    q_people = rankdata(np.asarray(mos, np.float64) if higher_is_better else -np.asarray(mos, np.float64))
    gap = np.abs(q_metric - q_people)
    return [int(i) for i in np.argsort(-gap, kind="stable")[:k]]


def _png_uri(img: Any) -> str:
    """A (3, H, W) [0, 1] tensor as a PNG data URI, upscaled by nearest neighbour to about THUMB px."""
    from PIL import Image

    arr = (np.clip(img.detach().cpu().float().numpy(), 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    im = Image.fromarray(arr)
    scale = max(1, THUMB // max(im.size))
    if scale > 1:
        im = im.resize((im.size[0] * scale, im.size[1] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em auto;max-width:1200px;color:#222;
padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
.cases{display:flex;flex-wrap:wrap;gap:1em}.case{border:1px solid #ddd;padding:.5em;font-size:.8em;max-width:430px}
.case img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #999}
.trio{display:flex;gap:4px}.trio figure{margin:0;text-align:center}.ok{color:#1a7f37}.bad{color:#c62828}
"""


def _esc(x: object) -> str:
    return html.escape(str(x))


def _name(report: dict) -> str:
    from .agreement import _name as name

    return name(report)


def _table(reports: list[dict]) -> str:
    from .agreement import format_comparison

    return f"<pre>{_esc(format_comparison(reports))}</pre>"


def _case_2afc(i: int, rec: Any, imgs: tuple, reports: list[dict], dists: list[dict]) -> str:
    h = float(rec.h)
    figs = "".join(f'<figure><img alt="{lab} of triplet {i}" src="{_png_uri(im)}"><figcaption>{lab}</figcaption>'
                   "</figure>" for lab, im in zip(("reference", "p0", "p1"), imgs))
    majority = "p1" if h > 0.5 else "p0"
    rows = []
    for r, d in zip(reports, dists):
        d0, d1 = d["d0"][i], d["d1"][i]
        pick = "p1" if d1 < d0 else "p0" if d0 < d1 else "tie"
        cls = "ok" if pick == majority else "bad"
        rows.append(f'<li>{_esc(_name(r))}: picks <b class="{cls}">{pick}</b> (d0 {d0:.4g}, d1 {d1:.4g})</li>')
    where = _esc(getattr(rec, "where", "") or f"row {i}")
    return (f'<div class="case"><div class="trio">{figs}</div><p>#{i} ({where}, {_esc(rec.category)}): '
            f'{100 * (1 - h):.0f}% of people chose p0, {100 * h:.0f}% p1</p><ul>{"".join(rows)}</ul></div>')


def _case_mos(i: int, rec: Any, imgs: tuple, reports: list[dict], dists: list[dict], jnd: bool = False) -> str:
    labels = ("p0", "p1") if jnd else ("reference", "distorted")
    figs = "".join(f'<figure><img alt="{lab} of pair {i}" src="{_png_uri(im)}"><figcaption>{lab}</figcaption>'
                   "</figure>" for lab, im in zip(labels, imgs))
    rows = "".join(f"<li>{_esc(_name(r))}: distance {d['d0'][i]:.4g}</li>" for r, d in zip(reports, dists))
    where = _esc(getattr(rec, "where", "") or f"row {i}")
    said = f"{100 * rec.score:.0f}% of people judged them the same" if jnd else f"score {rec.score:.4g}"
    return (f'<div class="case"><div class="trio">{figs}</div><p>#{i} ({where}, {_esc(rec.category)}): '
            f"{said}</p><ul>{rows}</ul></div>")


def _mos_scatter(reports: list[dict], dists: list[dict], mos: np.ndarray, ylabel: str = "subjective score") -> str:
    from .agreement import _figure
    from .scoring import fit_logistic5

    n = len(reports)
    fig, _ = _figure((4.2 * n, 3.6))
    fig.clear()
    for k, (r, d) in enumerate(zip(reports, dists)):
        ax = fig.add_subplot(1, n, k + 1)
        x = np.asarray(d["d0"], np.float64)
        ax.scatter(x, mos, s=6, alpha=0.5, color="#4C72B0")
        fitted, _ = fit_logistic5(x, mos)  # the 5-parameter logistic PLCC is computed after
        order = np.argsort(x, kind="stable")
        ax.plot(x[order], fitted[order], color="#c62828")
        ax.set_xlabel(f"{_name(r)} distance", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    fig.tight_layout()
    return f'<img alt="metric against MOS" src="{_figure_uri(fig)}">'


def _chart(reports: list[dict]) -> str:
    """The comparison bar chart (`lowps.agreement.plot_comparison`) as an embedded PNG."""
    import tempfile

    from .agreement import plot_comparison

    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / "plot.png"
        try:
            plot_comparison(reports, plot)
        except ImportError:
            return "<p>(no chart: matplotlib is not installed)</p>"
        png = base64.b64encode(plot.read_bytes()).decode()
    return f'<img alt="comparison chart" src="data:image/png;base64,{png}">'


def _sections_2afc(reports: list[dict], dists: list[dict], records: list, dataset: Any, k: int) -> list[str]:
    """The first metric's most confident disagreements with people, and (two metrics or more) the
    triplets where the first two metrics disagree most."""
    h = np.asarray([r.h for r in records], np.float64)
    wrong = disagreements_2afc(dists[0]["d0"], dists[0]["d1"], h, k)
    parts = [f"<h2>Where {_esc(_name(reports[0]))} disagrees most with people ({len(wrong)})</h2>",
             "<p>The metric picks the other image than the majority, ranked by |normalised distance gap| "
             "x |2h - 1| (a confident metric against a clear majority first).</p>",
             '<div class="cases">' + "".join(
                 _case_2afc(i, records[i], dataset[i][:3], reports, dists) for i in wrong) + "</div>"]
    if len(reports) > 1:
        split = metric_splits_2afc((dists[0]["d0"], dists[0]["d1"]), (dists[1]["d0"], dists[1]["d1"]), k)
        parts.append(f"<h2>Where {_esc(_name(reports[0]))} and {_esc(_name(reports[1]))} disagree most "
                     f"({len(split)})</h2><p>They pick different images; ranked by the smaller of their two "
                     "normalised gaps.</p>")
        parts.append('<div class="cases">' + "".join(
            _case_2afc(i, records[i], dataset[i][:3], reports, dists) for i in split) + "</div>")
    return parts


def _sections_mos(reports: list[dict], dists: list[dict], records: list, dataset: Any, k: int,
                  higher_is_better: bool, jnd: bool) -> list[str]:
    """Each metric against the scores (scatter), and the pairs the first metric ranks furthest from people."""
    mos = np.asarray([r.score for r in records], np.float64)
    parts = ["<h2>Each metric against the " + ("share of people who judged each pair the same (BAPPS JND)"
                                               if jnd else "subjective scores") + "</h2>"]
    try:
        parts.append(_mos_scatter(reports, dists, mos, "judged the same" if jnd else "subjective score"))
    except ImportError:
        parts.append("<p>(no scatter: matplotlib is not installed)</p>")
    worst = worst_ranked_mos(dists[0]["d0"], mos, k, higher_is_better)
    parts.append(f"<h2>Pairs {_esc(_name(reports[0]))} ranks furthest from people ({len(worst)})</h2>")
    parts.append('<div class="cases">' + "".join(
        _case_mos(i, records[i], dataset[i][:2], reports, dists, jnd) for i in worst) + "</div>")
    return parts


def write_report(path: str | os.PathLike[str], reports: list[dict], records: list, dataset: Any, *,
                 k: int = 24, command: str = "", higher_is_better: bool = True) -> Path:
    """Write the report for ``reports`` (from `lowps.agreement.score_judgements` with
    ``keep_distances=True``, or BAPPS reports given ``distances`` flattened over their categories)
    of ``records`` (their `Triplet`/`Rated` list) whose images ``dataset`` (as scored:
    `lowps.data.judgements.ImageTuples`, or `lowps.data.bapps.bapps_records`' set) loads. Written
    atomically."""
    from ._io import OutputError, write_text_atomic
    from .data.judgements import Triplet

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"--report-k must be a positive int, got {k!r}")
    p = Path(path)
    if p.suffix.lower() not in (".html", ".htm"):
        raise OutputError(f"report {p}: give a file name ending in .html")
    dists = [r["distances"] for r in reports]
    first = reports[0]
    jnd = first.get("dataset") == "bapps" and first.get("mode") == "jnd"
    title = first["dataset"] + (f" {first['mode']} {first['split']}" if first["dataset"] == "bapps" else "")
    source = first.get("source") or first.get("root", "")
    parts = [f"<h1>lowps-score: {_esc(title)}</h1>",
             f"<p>{len(records)} records from {_esc(source)}; {len(reports)} metric(s). "
             "Images are shown as scored, upscaled by nearest neighbour.</p>",
             "<h2>Comparison</h2>", _table(reports)]
    parts.append(_chart(reports))
    if isinstance(records[0], Triplet):
        parts += _sections_2afc(reports, dists, records, dataset, k)
    else:
        parts += _sections_mos(reports, dists, records, dataset, k, higher_is_better, jnd)
    prov = {"versions": first.get("versions"), "command": command, "source": source,
            "metrics": [r["config"] for r in reports], "resize": first.get("resize"),
            "resize_filter": first.get("resize_filter"), "bootstrap": first.get("bootstrap")}
    import json

    parts.append("<h2>Provenance</h2><pre>" + _esc(json.dumps(prov, indent=1, default=str)) + "</pre>")
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>lowps-score report: "
            f"{_esc(title)}</title><style>{_CSS}</style></head><body>" + "\n".join(parts)
            + "</body></html>\n")
    write_text_atomic(p, lambda f: None if f.write(page) else None)
    return p
