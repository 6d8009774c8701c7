"""``lowps-score``: agreement of metrics with human judgements (BAPPS, 2AFC CSVs, NIGHTS, MOS sets)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ._common import add_metric_options, metric_config, non_negative_int, positive_int, run

DATASETS = ("bapps", "2afc", "nights", "tid2013", "kadid10k", "pipal", "mos")


def _baselines() -> tuple[str, ...]:
    from ..scoring import BASELINES

    return BASELINES


def bootstrap_count(text: str) -> int:
    """``--bootstrap``: 0, or enough resamples for a 95% interval and few enough to finish."""
    from ..scoring import MAX_BOOTSTRAP, MIN_BOOTSTRAP

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bootstrap {text!r}: give a whole number of resamples") from None
    if n != 0 and not MIN_BOOTSTRAP <= n <= MAX_BOOTSTRAP:
        raise argparse.ArgumentTypeError(f"--bootstrap {n}: give 0 (no confidence intervals) or "
                                         f"{MIN_BOOTSTRAP}..{MAX_BOOTSTRAP} resamples (a 95% interval from fewer is "
                                         "a handful of draws; more takes hours for the same digits)")
    return n


def build_score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowps-score", description="Score perceptual metrics against human "
                                "judgements: BAPPS 2AFC/JND, any 2AFC CSV, NIGHTS, TID2013, KADID-10k, PIPAL or "
                                "any MOS CSV (docs/benchmarks.md).")
    p.add_argument("--dataset", default="bapps", choices=DATASETS, help="which judgement set (default: bapps)")
    p.add_argument("--root", default=None, help="the dataset's folder (BAPPS: its 'dataset' directory, default "
                   "the downloaded copy)")
    p.add_argument("--csv", default=None, help="with --dataset 2afc (ref,p0,p1,h[,category]) or mos "
                   "(ref,dist,mos[,category]): the CSV; paths are relative to its folder")
    direction = p.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher_is_better", action="store_true", default=None,
                           help="--dataset mos: the score rises with quality (MOS; the default)")
    direction.add_argument("--lower-is-better", dest="higher_is_better", action="store_false",
                           help="--dataset mos: the score falls with quality (DMOS)")
    p.add_argument("--nights-split", default="test", choices=["train", "val", "test"], help="NIGHTS split")
    p.add_argument("--min-votes", type=int, default=6, help="NIGHTS: keep triplets with at least this many "
                   "votes (6: DreamSim's unanimous set)")
    p.add_argument("--resize", type=positive_int, default=None, metavar="N",
                   help="scale images so the shorter side is N px (default: native size; BAPPS is always 64)")
    p.add_argument("--resize-filter", default="bilinear", choices=["bilinear", "lanczos"],
                   help="with --resize: bilinear (antialiased, default) or lanczos (Pillow: Lanczos down, bicubic up, "
                   "the protocol of the material-similarity set's reference scores)")
    p.add_argument("--bootstrap", type=bootstrap_count, default=1000, metavar="N",
                   help="resamples of reference images for 95%% CIs: 0 (none) or 100..100000 (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--download", action="store_true", help="download and extract BAPPS into the cache, then exit")
    p.add_argument("--subset", default="val", choices=["val", "train", "jnd", "all"], help="with --download")
    p.add_argument("--split", default="val", choices=["val", "train"], help="BAPPS split")
    p.add_argument("--categories", nargs="+", default=None, help="BAPPS: default every category present")
    p.add_argument("--mode", default="2afc", choices=["2afc", "jnd"], help="BAPPS: 2AFC or JND")
    p.add_argument("--metric", default="lowps", help="lowps (default) or a baseline: " + ", ".join(_baselines()))
    p.add_argument("--baselines", default="", metavar="LIST",
                   help="comma-separated baselines scored in the same run, e.g. l2,psnr,ssim,lpips-alex; "
                   "lpips-NET:FILE loads LPIPS's ImageNet trunk from a local torchvision state dict (offline)")
    add_metric_options(p, several=("distance",))
    p.add_argument("--per-layer", action="store_true", help="BAPPS: also score each layer alone (layer-wise PS)")
    p.add_argument("--batch-size", type=positive_int, default=50, help="images per metric call")
    p.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--json", default=None, metavar="FILE", help="write the full report as strict JSON (atomically)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="bar chart (with 95%% CIs where computed)")
    p.add_argument("--report", default=None, metavar="FILE.html",
                   help="a self-contained HTML page (opens offline): the table, the chart and the cases where the "
                   "metrics and people disagree most, as thumbnails (every dataset)")
    p.add_argument("--report-k", type=positive_int, default=24, metavar="K",
                   help="cases per section of --report (default 24)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _read_records(a: argparse.Namespace) -> tuple[list, str]:
    from ..data import judgements as J

    if a.dataset in ("2afc", "mos"):
        if not a.csv:
            raise ValueError(f"--dataset {a.dataset} needs --csv FILE (see docs/benchmarks.md for the columns)")
        return J.READERS[a.dataset][1](a.csv), str(a.csv)
    if a.csv:
        raise ValueError(f"--csv applies to --dataset 2afc or mos, not {a.dataset}; use --root DIR")
    if not a.root:
        raise ValueError(f"--dataset {a.dataset} needs --root DIR, the dataset's folder (see docs/benchmarks.md)")
    if a.dataset == "nights":
        return J.read_nights(a.root, split=a.nights_split, min_votes=a.min_votes), str(a.root)
    return J.READERS[a.dataset][1](a.root), str(a.root)


#: Exit status of ``lowps-score`` when some metrics could not be built and were skipped (the rest
#: were scored and written): a partial result (docs/benchmarks.md).
EXIT_PARTIAL = 3


def _scorers(a: argparse.Namespace) -> tuple[list, list[dict]]:
    """The scorers to run, and the ones that could not be built: ``[{"metric", "reason"}]``.

    One metric that cannot be built (``lpips-alex`` offline, a missing head file) must not cost the
    others: it is skipped with a warning, and the run's table, JSON and plot cover the rest."""
    import warnings

    from ..agreement import build_scorer

    names = [a.metric] + [b.strip() for b in a.baselines.split(",") if b.strip()]
    for n in names:
        if n != "lowps" and n.partition(":")[0] not in _baselines():
            raise ValueError(f"unknown metric {n!r}; choose lowps or one of {', '.join(_baselines())}")
    if a.style_norm != "hw" and "style" not in a.distance:
        raise ValueError(f"--style-norm {a.style_norm} applies only to --distance style, not {' '.join(a.distance)}")
    if a.metric != "lowps" and a.precision != "fp32":
        raise ValueError(f"precision={a.precision!r} applies to lowps metrics only; baselines run in "
                         f"float32 (drop --precision for --metric {a.metric})")
    scorers, skipped = [], []
    for n in dict.fromkeys(names):
        builds = []
        if n == "lowps":
            for head in dict.fromkeys(a.distance):
                cfg = metric_config(a, distance=head, style_norm=a.style_norm if head == "style" else "hw")
                builds.append((f"lowps:{head}", lambda cfg=cfg: build_scorer("lowps", cfg, device=a.device,
                                                                               per_layer=a.per_layer)))
        else:
            builds.append((n, lambda n=n: build_scorer(n, device=a.device)))
        for label, build in builds:
            try:
                scorers.append(build())
            except (ImportError, OSError, RuntimeError, ValueError) as e:  # offline trunks, bad files, options
                reason = f"{type(e).__name__}: {e}"
                skipped.append({"metric": label, "reason": reason})
                warnings.warn(f"lowps-score: skipping {label}, which could not be built ({reason})", RuntimeWarning,
                              stacklevel=2)
    if not scorers:
        raise ValueError("no metric could be built: " + "; ".join(f"{s['metric']}: {s['reason']}" for s in skipped))
    return scorers, skipped


def _score(a: argparse.Namespace) -> int:
    from .._dist import process_group_from_env
    from .._io import write_json
    from ..agreement import format_comparison, plot_comparison

    if a.dataset == "bapps" and a.resize is not None:
        raise ValueError("--resize does not apply to BAPPS (its patches are 64x64, as the paper scores them)")
    if a.resize_filter != "bilinear" and a.resize is None:
        raise ValueError(f"--resize-filter {a.resize_filter} applies with --resize N")
    records, source = (None, "") if a.dataset == "bapps" else _read_records(a)
    scorers, skipped = _scorers(a)
    with process_group_from_env(a.device) as (rank, _):
        reports = [_score_one(a, scorer, records, source) for scorer in scorers]
    if rank != 0:
        return 0
    if a.dataset == "bapps" and a.report:
        _flatten_bapps_distances(reports)
    print(format_comparison(reports))
    for s in skipped:
        print(f"skipped {s['metric']}: {s['reason']}")
    if a.json:
        payload = reports[0] if len(reports) == 1 else {"dataset": a.dataset, "reports": reports}
        write_json(a.json, {**payload, "skipped": skipped} if skipped else payload)
    if a.plot:
        plot_comparison(reports, a.plot)
    if a.report:
        _html_report(a, reports, records)
    return EXIT_PARTIAL if skipped else 0


def _score_one(a: argparse.Namespace, scorer: Any, records: Any, source: str) -> dict:
    """One metric's report on the chosen set (BAPPS from its folders, any other set from ``records``)."""
    from ..agreement import score_bapps, score_judgements
    from ..data.judgements import MOS_DIRECTION

    if a.dataset == "bapps" or records is None:
        return score_bapps(a.root, scorer, a.mode, a.split, a.categories, a.batch_size, a.device, a.workers,
                           progress=not a.quiet, keep_distances=bool(a.report), bootstrap=a.bootstrap, seed=a.seed)
    direction = (a.higher_is_better if a.higher_is_better is not None else True) if a.dataset == "mos" \
        else MOS_DIRECTION.get(a.dataset, True)
    return score_judgements(a.dataset, records, scorer, higher_is_better=direction, resize=a.resize,
                            resize_filter=a.resize_filter, bootstrap=a.bootstrap, seed=a.seed,
                            batch_size=a.batch_size, device=a.device, num_workers=a.workers,
                            progress=not a.quiet, source=source, keep_distances=bool(a.report))


def _html_report(a: argparse.Namespace, reports: list[dict], records: Any) -> None:
    """``--report``: the HTML page of the scored tuples (BAPPS's loaded as scored), then the kept
    distances are dropped from the reports."""
    import shlex

    from ..data.judgements import ImageTuples
    from ..report import write_report

    if records is None:  # BAPPS: the records and images of the scored categories, loaded as scored
        from ..data.bapps import bapps_records

        records, images = bapps_records(reports[0]["root"], a.mode, a.split, list(reports[0]["categories"]))
    else:
        images = ImageTuples(records, a.resize, a.resize_filter)
    write_report(a.report, reports, records, images, k=a.report_k, command=shlex.join(["lowps-score", *a.argv]),
                 higher_is_better=reports[0].get("higher_is_better", True))
    for r in reports:
        r.pop("distances", None)


def _flatten_bapps_distances(reports: list[dict]) -> None:
    """BAPPS reports keep distances per category; the HTML report reads one list over the scored
    categories in order (``d0``/``d1`` for 2AFC; JND's ``d`` as ``d0``). Per-layer distances are
    dropped: the page shows totals, and --json stays the size it is without --report."""
    for r in reports:
        cats = list(r["categories"].values())
        keys = ("d0", "d1") if r["mode"] == "2afc" else ("d",)
        flat = {k: [v for c in cats for v in c["distances"][k]] for k in keys}
        r["distances"] = {"d0": flat["d0"], "d1": flat["d1"]} if r["mode"] == "2afc" else {"d0": flat["d"]}
        for c in cats:
            del c["distances"]


def score_main(argv: Sequence[str] | None = None) -> int:
    """``lowps-score``: runs unchanged under ``torchrun`` (rank 0 prints and writes)."""
    p = build_score_parser()
    a = p.parse_args(argv)
    a.argv = list(argv) if argv is not None else sys.argv[1:]  # for the report's provenance
    if a.higher_is_better is not None and a.dataset != "mos":
        p.error("--higher-is-better/--lower-is-better apply to --dataset mos (the named MOS sets know their direction)")
    return run("lowps-score", _download if a.download else _score, a)


def _download(a: argparse.Namespace) -> int:
    from ..data.bapps import download_bapps

    print(download_bapps(a.subset, progress=not a.quiet))
    return 0


if __name__ == "__main__":  # python -m lowps.cli.score == lowps-score (for torchrun -m)
    sys.exit(score_main())
