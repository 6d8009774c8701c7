"""``lowps export``: the metric as ONNX, TorchScript or a torch.export program."""
from __future__ import annotations

import argparse

from ._common import add_metric_options, metric_config, positive_int


def _cmd_export(a: argparse.Namespace) -> int:
    from ..config import create_metric
    from ..export import export_metric

    m = create_metric(metric_config(a))
    size = tuple(int(v) for v in a.size.split("x")) if "x" in a.size else (int(a.size), int(a.size))
    print(export_metric(m, a.out, a.format, size=size, batch=a.batch))  # type: ignore[arg-type]
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="write the metric as ONNX, TorchScript or a torch.export program")
    ex.add_argument("--format", required=True, choices=["onnx", "torchscript", "pt2"], help="file format")
    ex.add_argument("--out", required=True, help="output file")
    ex.add_argument("--size", default="64", help="input size, N or HxW (fixed in the graph; default: 64)")
    ex.add_argument("--batch", type=positive_int, default=None,
                    help="fixed batch size (default: dynamic for onnx/pt2; torchscript traces any batch)")
    add_metric_options(ex, exclude=("precision", "force_precision"))  # the exported graph is fp32
    ex.set_defaults(func=_cmd_export)
