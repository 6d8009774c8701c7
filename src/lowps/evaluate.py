"""Score a metric on BAPPS: distances over a dataset (optionally sharded under torchrun) -> report.

Used by ``lowps-score``; the numbers come from :mod:`lowps.scoring` applied to distances that the
chosen metric computes on [0, 1] images.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import scoring
from .data.bapps import JNDSet, TwoAFCSet, find_root, list_categories

__all__ = ["Scorer", "build_scorer", "evaluate_bapps", "format_table", "plot_report", "BASELINES"]

BASELINES = ("l2", "psnr", "ssim", "lpips-alex", "lpips-vgg", "lpips-squeeze")


@dataclass
class Scorer:
    """A distance on [0, 1] image batches: ``fn(x0, x1) -> ((N,), {layer: (N,)})``."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    config: dict = field(default_factory=dict)


def _psnr_distance(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    mse = (x0 - x1).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(mse)  # = -PSNR for peak 1: smaller means more similar


def build_scorer(metric: str = "lowps", backbone: str = "resnet6", distance: str = "meanpool",
                 weights: str | None = None, head_weights: str | None = None, layers: list | None = None,
                 device: str | torch.device = "cpu", per_layer: bool = False, precision: str = "fp32",
                 force_precision: bool = False) -> Scorer:
    """A :class:`Scorer` for ``metric``: ``"lowps"`` (a :class:`PerceptualDistance`) or a baseline."""
    device = torch.device(device)
    if metric != "lowps" and precision != "fp32":
        raise ValueError(f"precision={precision!r} applies to lowps metrics only; baselines run in float32 "
                         f"(drop --precision for --metric {metric})")
    if metric == "lowps":
        from .metric import PerceptualDistance

        m = PerceptualDistance(backbone, distance, weights=weights, layers=layers,
                               head_weights=head_weights, precision=precision,
                               force_precision=force_precision).to(device)

        def fn(x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            if per_layer:
                return m(x0, x1, per_layer=True)  # type: ignore[return-value]
            return m(x0, x1), {}
        cfg = {"metric": "lowps", "backbone": m.backbone.arch, "distance": distance, "layers": m.layer_names,
               "weights": m.backbone.weights_name, "weights_sha256": m.backbone.weights_sha256,
               "head_weights": head_weights, "precision": m.precision, "precision_requested": precision}
        return Scorer(f"lowps:{m.backbone.arch}/{distance}", fn, cfg)
    if metric == "l2":
        return Scorer("l2", lambda a, b: ((a - b).pow(2).flatten(1).mean(1), {}), {"metric": "l2", "space": "RGB [0,1]"})
    if metric == "psnr":
        return Scorer("psnr", lambda a, b: (_psnr_distance(a, b), {}), {"metric": "psnr", "distance": "-PSNR"})
    if metric == "ssim":
        try:
            from torchmetrics.functional.image import structural_similarity_index_measure as ssim
        except ImportError as e:
            raise ImportError("the ssim baseline uses torchmetrics: pip install torchmetrics") from e

        def ssim_fn(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return 1 - ssim(a, b, data_range=1.0, reduction="none"), {}
        return Scorer("ssim", ssim_fn, {"metric": "ssim", "distance": "1-SSIM", "window": "gaussian 11, sigma 1.5"})
    if metric.startswith("lpips-"):
        from .lpips_compat import LPIPS

        net = metric.split("-", 1)[1]
        lp = LPIPS(net=net, verbose=False).to(device)

        def lp_fn(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return lp(a, b, normalize=True).flatten(), {}
        return Scorer(metric, lp_fn, {"metric": metric, "version": "0.1"})
    raise ValueError(f"unknown metric {metric!r}; choose lowps or one of {', '.join(BASELINES)}")


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def _distances(ds: Dataset, scorer: Scorer, mode: str, batch_size: int, device: torch.device,
               num_workers: int, progress: bool, desc: str) -> dict[str, np.ndarray]:
    """Distances for every item of ``ds``; under torchrun each rank takes every world-th batch."""
    rank, world = _dist_info()
    batches = [list(range(i, min(i + batch_size, len(ds)))) for i in range(0, len(ds), batch_size)]
    mine = batches[rank::world]
    loader = DataLoader(ds, batch_sampler=mine, num_workers=num_workers)
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


def evaluate_bapps(root: str | None, scorer: Scorer, mode: str = "2afc", split: str = "val",
                   categories: list[str] | None = None, batch_size: int = 50, device: str | torch.device = "cpu",
                   num_workers: int = 0, progress: bool = True, keep_distances: bool = False) -> dict:
    """Score ``scorer`` on BAPPS; returns the report (also what ``--json`` writes)."""
    base = find_root(root)
    cats = categories or list_categories(base, mode, split)
    report: dict = {"dataset": "bapps", "mode": mode, "split": split, "root": str(base),
                    "config": scorer.config, "batch_size": batch_size,
                    "versions": {"lowps": _version(), "torch": torch.__version__, "python": platform.python_version()},
                    "categories": {}}
    for cat in cats:
        ds = TwoAFCSet(base, cat, split) if mode == "2afc" else JNDSet(base, cat, split)
        d = _distances(ds, scorer, mode, batch_size, torch.device(device), num_workers, progress, f"{mode}/{cat}")
        if mode == "2afc":
            entry = {"n": len(ds), "score": scoring.score_2afc(d["d0"], d["d1"], d["judge"]),
                     "rank_correlation": scoring.rank_correlation(d["d0"], d["d1"], d["judge"]),
                     "margins": scoring.margins(d["d0"], d["d1"], d["judge"])}
            layer_names = [k[3:] for k in d if k.startswith("d0:")]
            if layer_names:
                entry["layers"] = {n: scoring.score_2afc(d[f"d0:{n}"], d[f"d1:{n}"], d["judge"]) for n in layer_names}
        else:
            entry = {"n": len(ds), "score": scoring.score_jnd(d["d"], d["same"])}
            layer_names = [k[2:] for k in d if k.startswith("d:")]
            if layer_names:
                entry["layers"] = {n: scoring.score_jnd(d[f"d:{n}"], d["same"]) for n in layer_names}
        if keep_distances:
            entry["distances"] = {k: v.tolist() for k, v in d.items()}
        report["categories"][cat] = entry
    report["summary"] = scoring.summarize({c: e["score"] for c, e in report["categories"].items()})
    return report


def _version() -> str:
    from . import __version__

    return __version__


def format_table(report: dict) -> str:
    """The per-category table with group means, scores as percentages (the paper's PS)."""
    label = "2AFC" if report["mode"] == "2afc" else "JND mAP"
    lines = [f"{report['config'].get('metric')} {json.dumps({k: v for k, v in report['config'].items() if k != 'metric'})}",
             f"{'category':<16}{'n':>8}{label + ' %':>12}"]
    for cat, e in report["categories"].items():
        lines.append(f"{cat:<16}{e['n']:>8}{100 * e['score']:>12.2f}")
        for name, v in e.get("layers", {}).items():
            lines.append(f"  {name:<14}{'':>8}{100 * v:>12.2f}")
    names = {"distortions": "mean: distortions (traditional, cnn)",
             "real_algorithms": "mean: real algorithms (superres, deblur, color, frameinterp)",
             "all": "mean: all six"}
    for key, value in report["summary"].items():
        lines.append(f"{names[key]}: {100 * value:.2f}")
    return "\n".join(lines)


def plot_report(report: dict, path: str | os.PathLike[str]) -> None:
    """A bar chart of per-category scores (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from e
    cats = list(report["categories"])
    vals = [100 * report["categories"][c]["score"] for c in cats]
    fig, ax = plt.subplots(figsize=(1.2 * len(cats) + 2, 3.5))
    ax.bar(cats, vals, color="#4C72B0")
    for i, v in enumerate(vals):
        ax.text(i, v + 0.3, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_ylabel("2AFC score (%)" if report["mode"] == "2afc" else "JND mAP (%)")
    ax.set_ylim(min(vals) - 5 if vals else 0, max(vals) + 3 if vals else 100)
    ax.set_title(str(report["config"].get("metric")) + " " + str(report["config"].get("backbone", "")))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
