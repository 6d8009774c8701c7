"""Agreement with human judgements: run a metric over a judgement set (BAPPS 2AFC/JND, 2AFC CSVs,
NIGHTS, MOS sets; optionally sharded under torchrun) and report its scores.

Used by ``lowps-score``; the numbers come from `lowps.scoring` applied to distances that the
chosen metric computes on [0, 1] images. (In lowps "scoring" is agreement with humans;
"evaluation", ``lowps eval``, is classification accuracy. This module was ``lowps.evaluate``.)
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import scoring
from ._dist import rank_world, require_group_if_launched
from .config import MetricConfig, create_metric
from .data.bapps import JNDSet, TwoAFCSet, find_root, list_categories

__all__ = ["Scorer", "build_scorer", "score_bapps", "score_judgements", "format_table", "format_comparison",
           "plot_report", "plot_comparison", "BASELINES"]

BASELINES = scoring.BASELINES


@dataclass
class Scorer:
    """A distance on [0, 1] image batches: ``fn(x0, x1) -> ((N,), {layer: (N,)})``."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    config: dict = field(default_factory=dict)


def _psnr_distance(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    mse = (x0 - x1).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(mse)  # = -PSNR for peak 1: smaller means more similar


def build_scorer(metric: str = "lowps", config: MetricConfig | None = None, *, device: str | torch.device = "cpu",
                 per_layer: bool = False, **options: Any) -> Scorer:
    """A `Scorer` for ``metric``: ``"lowps"`` (a `PerceptualDistance` from ``config`` and/or the
    `MetricConfig` fields in ``options``) or a baseline (``l2``, ``psnr``, ``ssim``, ``lpips-*``)."""
    device = torch.device(device)
    if metric == "lowps":
        m = create_metric(config, device=device, **options)
        cfg = m.config

        def fn(x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            if per_layer:
                total, per = m(x0, x1, per_layer=True)
                return total, per
            return m(x0, x1), {}
        record = {"metric": "lowps", "backbone": m.backbone.arch, "distance": cfg.distance, "layers": m.layer_names,
                  "weights": m.backbone.weights_name, "weights_sha256": m.backbone.weights_sha256,
                  "head_weights": cfg.head_weights, "precision": m.precision, "precision_requested": cfg.precision}
        if cfg.style_norm != "hw":
            record["style_norm"] = cfg.style_norm
        return Scorer(f"lowps:{m.backbone.arch}/{cfg.distance}", fn, record)
    given = (config.to_dict() if config else {}) | options
    ignored = sorted(k for k, v in given.items() if v != getattr(MetricConfig(), k))
    if ignored:
        raise ValueError(f"{', '.join(f'{k}=' for k in ignored)} appl{'ies' if len(ignored) == 1 else 'y'} to lowps "
                         f"metrics only; baselines run in float32 on RGB [0, 1] (drop it for --metric {metric})")
    if metric == "l2":
        return Scorer("l2", lambda a, b: ((a - b).pow(2).flatten(1).mean(1), {}),
                      {"metric": "l2", "space": "RGB [0,1]"})
    if metric == "psnr":
        return Scorer("psnr", lambda a, b: (_psnr_distance(a, b), {}), {"metric": "psnr", "distance": "-PSNR"})
    if metric == "ssim":
        try:
            from torchmetrics.functional.image import structural_similarity_index_measure as ssim
        except ImportError as e:
            raise ImportError("the ssim baseline uses torchmetrics: pip install torchmetrics") from e

        def ssim_fn(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            s = ssim(a, b, data_range=1.0, reduction="none")
            assert isinstance(s, torch.Tensor)  # (no return_full_image)
            return 1 - s, {}
        return Scorer("ssim", ssim_fn, {"metric": "ssim", "distance": "1-SSIM", "window": "gaussian 11, sigma 1.5"})
    if metric.startswith("lpips-"):
        from .lpips_compat import LPIPS
        from .weights.hub import sha256_file

        # "lpips-alex" (torchvision's download cache) or "lpips-alex:FILE" (a local trunk state dict)
        name, _, trunk_file = metric.partition(":")
        net = name.split("-", 1)[1]
        lp = LPIPS(net=net, verbose=False, pnet_path=trunk_file or None).to(device)

        def lp_fn(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return lp(a, b, normalize=True).flatten(), {}
        record = {"metric": name, "version": "0.1"}
        if trunk_file:
            record |= {"trunk_file": trunk_file, "trunk_sha256": sha256_file(trunk_file)}
        return Scorer(name, lp_fn, record)
    raise ValueError(f"unknown metric {metric!r}; choose lowps or one of {', '.join(BASELINES)}")


def _local_generator() -> torch.Generator:
    """A DataLoader draws its workers' base seed from a generator, by default the global one: with
    this local one, scoring leaves the caller's torch RNG untouched (nothing here is random)."""
    return torch.Generator().manual_seed(0)


def _my_batches(ds: Dataset, batch_size: int) -> tuple[int, int, list[list[int]]]:
    """(rank, world size, this rank's batches of indices): under torchrun each rank takes every world-th batch."""
    require_group_if_launched("lowps scoring")
    rank, world = rank_world()
    n = len(ds)  # type: ignore[arg-type]  # our datasets are Sized; torch's Dataset type is not
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return rank, world, batches[rank::world]


@torch.no_grad()
def _distances(ds: Dataset, scorer: Scorer, mode: str, batch_size: int, device: torch.device,
               num_workers: int, progress: bool, desc: str) -> dict[str, np.ndarray]:
    """Distances for every item of ``ds``; under torchrun each rank takes every world-th batch."""
    rank, world, mine = _my_batches(ds, batch_size)
    loader = DataLoader(ds, batch_sampler=mine, num_workers=num_workers, generator=_local_generator())
    parts: list[tuple[list[int], dict[str, np.ndarray]]] = []
    for idx, batch in zip(mine, tqdm(loader, desc=desc, disable=not progress or rank != 0, leave=False)):
        out: dict[str, np.ndarray] = {}
        if mode == "2afc":
            ref, p0, p1, judge = batch
            ref, p0, p1 = ref.to(device), p0.to(device), p1.to(device)
            d0, l0 = scorer.fn(ref, p0)
            d1, l1 = scorer.fn(ref, p1)
            out = {"d0": d0.double().cpu().numpy(), "d1": d1.double().cpu().numpy(), "judge": judge.numpy()}
            for k in l0:
                out[f"d0:{k}"], out[f"d1:{k}"] = l0[k].double().cpu().numpy(), l1[k].double().cpu().numpy()
        else:
            p0, p1, same = batch
            d, layers = scorer.fn(p0.to(device), p1.to(device))
            out = {"d": d.double().cpu().numpy(), "same": same.numpy()}
            for k in layers:
                out[f"d:{k}"] = layers[k].double().cpu().numpy()
        parts.append((idx, out))
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, parts)
        parts = [p for g in gathered for p in g]
    parts.sort(key=lambda p: p[0][0])
    keys = parts[0][1].keys()
    return {k: np.concatenate([p[1][k] for p in parts]) for k in keys}


def score_bapps(root: str | None, scorer: Scorer, mode: str = "2afc", split: str = "val",
                categories: list[str] | None = None, batch_size: int = 50, device: str | torch.device = "cpu",
                num_workers: int = 0, progress: bool = True, keep_distances: bool = False,
                bootstrap: int = 1000, seed: int = 0) -> dict:
    """Score ``scorer`` on BAPPS; returns the report (also what ``--json`` writes).

    Each category gets a 95% percentile-bootstrap interval of its score (``ci95``) over
    ``bootstrap`` resamples of its items (every BAPPS item has its own reference patch, so items are
    the independent unit); ``bootstrap=0`` gives none."""
    base = find_root(root)
    cats = categories or list_categories(base, mode, split)
    report: dict = {"dataset": "bapps", "mode": mode, "split": split, "root": str(base),
                    "config": scorer.config, "batch_size": batch_size, "versions": _versions(), "categories": {}}
    for cat in cats:
        ds = TwoAFCSet(base, cat, split) if mode == "2afc" else JNDSet(base, cat, split)
        d = _distances(ds, scorer, mode, batch_size, torch.device(device), num_workers, progress, f"{mode}/{cat}")
        if mode == "2afc":
            entry = {"n": len(ds), "score": scoring.score_2afc(d["d0"], d["d1"], d["judge"]),
                     "rank_correlation": scoring.rank_correlation(d["d0"], d["d1"], d["judge"]),
                     "margins": scoring.margins(d["d0"], d["d1"], d["judge"])}
            layer_names = [k[3:] for k in d if k.startswith("d0:")]
            if layer_names:
                entry["layers"] = scoring.layerwise_2afc({n: d[f"d0:{n}"] for n in layer_names},
                                                         {n: d[f"d1:{n}"] for n in layer_names}, d["judge"])
            def score(i: np.ndarray, d: dict = d) -> float:
                return scoring.score_2afc(d["d0"][i], d["d1"][i], d["judge"][i])
        else:
            entry = {"n": len(ds), "score": scoring.score_jnd(d["d"], d["same"])}
            layer_names = [k[2:] for k in d if k.startswith("d:")]
            if layer_names:
                entry["layers"] = {n: scoring.score_jnd(d[f"d:{n}"], d["same"]) for n in layer_names}
            def score(i: np.ndarray, d: dict = d) -> float:
                return scoring.score_jnd(d["d"][i], d["same"][i])
        entry["ci95"] = scoring.bootstrap(lambda i: {"score": score(i)}, np.arange(len(ds)), bootstrap,
                                          seed).get("score")
        if keep_distances:
            entry["distances"] = {k: v.tolist() for k, v in d.items()}
        report["categories"][cat] = entry
    report["summary"] = scoring.summarize({c: e["score"] for c, e in report["categories"].items()})
    return report


@torch.no_grad()
def _tuple_distances(ds: Dataset, scorer: Scorer, kind: str, batch_size: int, device: torch.device,
                     num_workers: int, progress: bool, desc: str) -> dict[str, np.ndarray]:
    """Distances for every record of an `ImageTuples` set.

    Records may differ in size from row to row (MOS sets at their native size): each loaded batch
    is split into groups of one size before it reaches the metric. Under torchrun each rank takes
    every world-th batch and rank 0 gathers.
    """
    rank, world, mine = _my_batches(ds, batch_size)
    loader = DataLoader(ds, batch_sampler=mine, num_workers=num_workers, collate_fn=list,
                        generator=_local_generator())
    idx_out, d0_out, d1_out = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not progress or rank != 0, leave=False):
        groups: dict[tuple, list] = {}
        for item in batch:
            groups.setdefault(tuple(item[0].shape), []).append(item)
        for items in groups.values():
            ref = torch.stack([it[0] for it in items]).to(device)
            idx_out += [it[-1] for it in items]
            d0_out.append(scorer.fn(ref, torch.stack([it[1] for it in items]).to(device))[0].double().cpu())
            if kind == "2afc":
                d1_out.append(scorer.fn(ref, torch.stack([it[2] for it in items]).to(device))[0].double().cpu())
    parts = {"idx": np.asarray(idx_out, dtype=np.int64), "d0": torch.cat(d0_out).numpy() if d0_out else np.zeros(0)}
    if kind == "2afc":
        parts["d1"] = torch.cat(d1_out).numpy() if d1_out else np.zeros(0)
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, parts)
        parts = {k: np.concatenate([g[k] for g in gathered]) for k in parts}
    order = np.argsort(parts["idx"], kind="stable")
    return {k: v[order] for k, v in parts.items()}


def _stats_2afc(d0: np.ndarray, d1: np.ndarray, h: np.ndarray) -> dict:
    return {"n": len(h), "score": scoring.score_2afc(d0, d1, h),
            "rank_correlation": scoring.finite_or_none(scoring.rank_correlation(d0, d1, h))}


def score_judgements(dataset: str, records: list, scorer: Scorer, *, higher_is_better: bool = True,
                     resize: int | None = None, resize_filter: str = "bilinear", bootstrap: int = 1000,
                     seed: int = 0, batch_size: int = 32,
                     device: str | torch.device = "cpu", num_workers: int = 0, progress: bool = True,
                     source: str = "", keep_distances: bool = False) -> dict:
    """Score ``scorer`` on a judgement set read by `lowps.data.judgements`; returns the report.

    2AFC sets (`Triplet` records): the BAPPS 2AFC score and the App. J
    rank correlation, per category and over all triplets (``"all"``). MOS sets
    (`Rated`): SRCC, KRCC, PLCC (5-parameter logistic) and RMSE, per
    distortion type and overall. Every statistic gets a 95% percentile-bootstrap interval over
    ``bootstrap`` resamples of reference images (``numpy.random.default_rng(seed)``).
    """
    from .data.judgements import ImageTuples, Triplet

    if not records:
        raise ValueError(f"{dataset}: no records to score")
    kind = "2afc" if isinstance(records[0], Triplet) else "mos"
    ds = ImageTuples(records, resize=resize, resize_filter=resize_filter)
    d = _tuple_distances(ds, scorer, kind, batch_size, torch.device(device), num_workers, progress,
                         f"{dataset}/{scorer.name}")
    groups = np.asarray([str(r.ref) for r in records])
    cats = np.asarray([r.category for r in records])
    if kind == "2afc":
        h = np.asarray([r.h for r in records], dtype=np.float64)

        def stat(idx: np.ndarray) -> dict:
            return _stats_2afc(d["d0"][idx], d["d1"][idx], h[idx])
    else:
        y = np.asarray([r.score for r in records], dtype=np.float64)

        def stat(idx: np.ndarray) -> dict:
            return scoring.mos_statistics(d["d0"][idx], y[idx], higher_is_better)

    def entry(idx: np.ndarray, seed_offset: int) -> dict:
        e = stat(idx)
        e["ci95"] = scoring.bootstrap(lambda sub: stat(idx[sub]), groups[idx], n=bootstrap, seed=seed + seed_offset,
                                      progress=progress and seed_offset == 0 and bootstrap * len(idx) > 2_000_000)
        return e

    report: dict = {"dataset": dataset, "kind": kind, "source": source, "config": scorer.config,
                    "resize": resize, "resize_filter": resize_filter if resize else None,
                    "bootstrap": {"n": bootstrap, "seed": seed, "level": 0.95,
                                                    "unit": "reference image"},
                    "batch_size": batch_size, "versions": _versions()}
    if kind == "mos":
        report["higher_is_better"] = higher_is_better
    report["all"] = entry(np.arange(len(records)), 0)
    report["categories"] = {}
    names = list(dict.fromkeys(cats.tolist()))
    if names != ["all"]:
        for k, c in enumerate(names):
            report["categories"][c] = entry(np.nonzero(cats == c)[0], k + 1)
    if keep_distances:
        report["distances"] = {k: v.tolist() for k, v in d.items() if k != "idx"}
    return report


def _versions() -> dict[str, str]:
    """What produced a report: lowps, torch and Python versions."""
    from . import __version__

    return {"lowps": __version__, "torch": torch.__version__, "python": platform.python_version()}


def format_table(report: dict) -> str:
    """The per-category table with group means, scores as percentages (the paper's PS)."""
    label = "2AFC" if report["mode"] == "2afc" else "JND mAP"
    options = {k: v for k, v in report["config"].items() if k != "metric"}
    lines = [f"{report['config'].get('metric')} {json.dumps(options)}",
             f"{'category':<16}{'n':>8}{label + ' %':>12}{'95% CI':>18}"]
    for cat, e in report["categories"].items():
        ci = e.get("ci95")
        ci_s = f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else ""
        lines.append(f"{cat:<16}{e['n']:>8}{100 * e['score']:>12.2f}{ci_s:>18}")
        for name, v in e.get("layers", {}).items():
            lines.append(f"  {name:<14}{'':>8}{100 * v:>12.2f}")
    names = {"distortions": "mean: distortions (traditional, cnn)",
             "real_algorithms": "mean: real algorithms (superres, deblur, color, frameinterp)",
             "all": "mean: all six"}
    for key, value in report["summary"].items():
        lines.append(f"{names[key]}: {100 * value:.2f}")
    return "\n".join(lines)


def _headline(report: dict) -> tuple[str, float | None, list | None]:
    """The statistic a comparison table leads with: 2AFC score (%) or SRCC."""
    if report.get("dataset") == "bapps":
        key = "all" if "all" in report["summary"] else next(iter(report["summary"]), None)
        if key is not None:
            return "2AFC %" if report["mode"] == "2afc" else "JND mAP %", 100 * report["summary"][key], None
        first = next(iter(report["categories"].values()))
        return "2AFC %" if report["mode"] == "2afc" else "JND mAP %", 100 * first["score"], None
    a = report["all"]
    if report["kind"] == "2afc":
        ci = a["ci95"].get("score")
        return "2AFC %", 100 * a["score"], [100 * v for v in ci] if ci else None
    return "SRCC", a["srcc"], a["ci95"].get("srcc")


def _no_ci(entry: dict, report: dict) -> str:
    """What stands where a CI would: none asked for, or undefined (one reference image: every
    resample is the same set)."""
    if not report["bootstrap"]["n"]:
        return "n/a"
    return "CI undefined*"


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def format_comparison(reports: list[dict]) -> str:
    """One row per metric: the headline statistic with its 95% CI, then the others (MOS sets)."""
    first = reports[0]
    if first.get("dataset") == "bapps":
        return "\n\n".join(format_table(r) for r in reports)
    lines = [f"{first['dataset']} ({first['kind']}, n={first['all']['n']}, resize={first['resize']}"
             + (f" {first['resize_filter']}" if first.get('resize_filter') not in (None, 'bilinear') else "") + f", "
             f"bootstrap {first['bootstrap']['n']} x reference images, seed {first['bootstrap']['seed']})"]
    lines += _rows_2afc(reports) if first["kind"] == "2afc" else _rows_mos(reports)
    if any(not r["all"]["ci95"].get("score" if first["kind"] == "2afc" else "srcc") and r["bootstrap"]["n"]
           for r in reports):
        lines.append("* CI undefined: the set has a single reference image, so resampling references cannot vary it")
    return "\n".join(lines)


def _rows_2afc(reports: list[dict]) -> list[str]:
    """`format_comparison`'s table for a 2AFC set: 2AFC score, CI, rank correlation; per category."""
    lines = [f"{'metric':<34}{'2AFC %':>8}{'95% CI':>18}{'rank corr':>11}"]
    for r in reports:
        a = r["all"]
        ci = a["ci95"].get("score")
        ci_s = f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else _no_ci(a, r)
        lines.append(f"{_name(r):<34}{100 * a['score']:>8.2f}{ci_s:>18}{_fmt(a['rank_correlation'], '.4f'):>11}")
    cats = list(reports[0]["categories"])
    if cats:
        lines.append("per category (2AFC %): " + ", ".join(cats))
        for r in reports:
            lines.append(f"  {_name(r):<32}" + "".join(f"{100 * r['categories'][c]['score']:>9.2f}" for c in cats))
    return lines


def _rows_mos(reports: list[dict]) -> list[str]:
    """`format_comparison`'s table for a MOS set: SRCC with CI, KRCC, PLCC, RMSE; per distortion type."""
    lines = [f"{'metric':<34}{'SRCC':>8}{'95% CI':>18}{'KRCC':>8}{'PLCC':>8}{'RMSE':>10}"]
    for r in reports:
        a = r["all"]
        ci = a["ci95"].get("srcc")
        ci_s = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else _no_ci(a, r)
        lines.append(f"{_name(r):<34}{_fmt(a['srcc'], '.4f'):>8}{ci_s:>18}{_fmt(a['krcc'], '.4f'):>8}"
                     f"{_fmt(a['plcc'], '.4f'):>8}{_fmt(a['rmse'], '.4g'):>10}")
    cats = list(reports[0]["categories"])
    if cats:
        lines.append("per distortion type (SRCC): " + ", ".join(cats))
        for r in reports:
            lines.append(f"  {_name(r):<32}" + "".join(f"{_fmt(r['categories'][c]['srcc'], '.3f'):>9}" for c in cats))
    return lines


def _name(report: dict) -> str:
    c = report["config"]
    if c.get("metric") == "lowps":
        return f"lowps:{c['backbone']}/{c['distance']}"
    return str(c.get("metric"))


def _figure(figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib Figure and its axes, made without pyplot: the caller's backend and pyplot's
    figure list stay as they were (a library must not switch a program's backend)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


def _save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Render to memory, then write atomically: a failed write (full disk, a directory, /dev/full)
    is an `OutputError` and leaves an existing file byte for byte as it was."""
    import io

    from ._io import OutputError, atomic_path

    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise OutputError(f"plot {p}: give a file name ending in .png, .svg or .pdf")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    with atomic_path(p) as tmp:
        tmp.write_bytes(buf.getvalue())


def plot_comparison(reports: list[dict], path: str | os.PathLike[str]) -> None:
    """A bar chart of each metric's headline statistic with its 95% bootstrap CI (needs matplotlib)."""
    if reports[0].get("dataset") == "bapps" and len(reports) == 1:
        return plot_report(reports[0], path)
    names = [_name(r) for r in reports]
    heads = [_headline(r) for r in reports]
    vals = [h[1] if h[1] is not None else 0.0 for h in heads]
    err = [[max(0.0, v - h[2][0]) if h[2] else 0.0 for v, h in zip(vals, heads)],
           [max(0.0, h[2][1] - v) if h[2] else 0.0 for v, h in zip(vals, heads)]]
    fig, ax = _figure((1.3 * len(names) + 2, 3.8))
    ax.bar(range(len(names)), vals, yerr=err, capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{heads[0][0]} (95% bootstrap CI)")
    ax.set_title(str(reports[0].get("dataset")))
    fig.tight_layout()
    _save_figure(fig, path)


def plot_report(report: dict, path: str | os.PathLike[str]) -> None:
    """A bar chart of per-category scores (needs matplotlib)."""
    cats = list(report["categories"])
    vals = [100 * report["categories"][c]["score"] for c in cats]
    fig, ax = _figure((1.2 * len(cats) + 2, 3.5))
    ax.bar(cats, vals, color="#4C72B0")
    for i, v in enumerate(vals):
        ax.text(i, v + 0.3, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_ylabel("2AFC score (%)" if report["mode"] == "2afc" else "JND mAP (%)")
    ax.set_ylim(min(vals) - 5 if vals else 0, max(vals) + 3 if vals else 100)
    ax.set_title(str(report["config"].get("metric")) + " " + str(report["config"].get("backbone", "")))
    fig.tight_layout()
    _save_figure(fig, path)
