"""``lowps sanity``: Spearman(severity, distance) for five distortions on natural patches."""
from __future__ import annotations

import argparse

from ._common import add_metric_options, metric_config, positive_int


def _cmd_sanity(a: argparse.Namespace) -> int:
    import torch

    from ..config import create_metric
    from ..data.imagenet import load_split
    from ..sanity import format_sanity, sanity_table

    val = load_split(a.data, "val")
    pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(a.seed))[:a.n]
    cfg = metric_config(a, weights=None)  # --weights lists several
    metrics = {w: create_metric(cfg.replace(weights=None if w == "default" else w)) for w in a.weights}
    table = sanity_table(metrics, val.images[pick], seed=a.seed)
    print(format_sanity(table))
    if a.json:
        from .._io import write_json

        write_json(a.json, {"data": a.data, "n": len(pick), "seed": a.seed, "backbone": cfg.backbone,
                            "distance": cfg.distance, "config": cfg.to_dict() | {"weights": a.weights},
                            "table": table})
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sn = sub.add_parser("sanity", help="Spearman(severity, distance) for five distortions on natural patches")
    sn.add_argument("--data", required=True, help="a data spec with a val split, e.g. tiny-imagenet:DIR")
    add_metric_options(sn, exclude=("weights",))
    sn.add_argument("--weights", nargs="+", default=["default", "random"],
                    help="weights to compare ('default' = the backbone's default; default: default random)")
    sn.add_argument("--n", type=positive_int, default=500, help="natural patches to distort (default: 500)")
    sn.add_argument("--seed", type=int, default=0, help="seed for the patch pick and the noise")
    sn.add_argument("--json", default=None, help="also write the table as JSON")
    sn.set_defaults(func=_cmd_sanity)
