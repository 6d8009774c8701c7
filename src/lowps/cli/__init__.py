"""Command-line interface: ``lowps`` (one module per command) and ``lowps-score``.

Every command calls the library; none reimplements it. The metric's flags are derived from
`lowps.MetricConfig` (`lowps.cli._common.add_metric_options`). Building the parsers imports no torch.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import distance, export, sanity, train, weights
from ._common import num as _num  # noqa: F401  (tests and tools format numbers like the CLI)
from ._common import run
from .score import build_score_parser, score_main

__all__ = ["main", "build_parser", "score_main", "build_score_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowps", description="Perceptual image distance from low-accuracy ImageNet "
                                "networks (Kumar et al. 2022).")
    sub = p.add_subparsers(dest="command", required=True)
    for command in (distance, export, weights, train, sanity):
        command.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run("lowps", args.func, args)
