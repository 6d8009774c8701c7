"""``lowps export``: the metric as ONNX, TorchScript or a torch.export program."""
from __future__ import annotations

import argparse

from ._common import add_metric_options, metric_config, positive_int


def _cmd_export(a: argparse.Namespace) -> int:
    from ..config import create_metric
    from ..export import export_metric

    m = create_metric(metric_config(a))
    print(export_metric(m, a.out, a.format, size=a.size, batch=a.batch))
    return 0


def image_size(text: str) -> tuple[int, int]:
    """``--size``: ``N`` or ``HxW``, positive integers."""
    parts = text.lower().split("x")
    try:
        if len(parts) not in (1, 2):
            raise ValueError
        h, w = (int(parts[0]), int(parts[-1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: give N or HxW in pixels, e.g. 64 or 64x96") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"--size {text!r}: sides must be positive")
    return h, w


def register(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="write the metric as ONNX, TorchScript or a torch.export program")
    ex.add_argument("--format", required=True, choices=["onnx", "torchscript", "pt2"], help="file format")
    ex.add_argument("--out", required=True, help="output file")
    ex.add_argument("--size", type=image_size, default=(64, 64),
                    help="input size, N or HxW (fixed in the graph; default: 64)")
    ex.add_argument("--batch", type=positive_int, default=None,
                    help="fixed batch size (default: dynamic for onnx/pt2; torchscript traces any batch)")
    add_metric_options(ex, exclude=("precision", "force_precision"))  # the exported graph is fp32
    ex.set_defaults(func=_cmd_export)
