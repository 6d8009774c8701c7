"""Export a metric for deployment: ONNX, TorchScript or a torch.export program (``.pt2``).

For a quality gate in an image pipeline, a C++ service or a runtime without Python lowps::

    lowps export --format onnx --out lowps.onnx            # default metric, any batch, 64x64
    lowps-side:  onnxruntime.InferenceSession("lowps.onnx").run(None, {"img0": a, "img1": b})

The exported graph is the metric's inference form (BatchNorm folded, shortcuts merged) with inputs
(N, 3, H, W) in ``input_range`` and output (N,). It carries **no input checks**: what the validator
does in Python (range, NaN, shapes) is the caller's job in the exported world. ``batch=None`` exports
a dynamic batch dimension (ONNX, pt2; TorchScript traces are batch-agnostic by construction); the
image size is fixed to ``size``.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_path
from .metric import PerceptualDistance

__all__ = ["export_metric", "FORMATS"]

FORMATS = ("onnx", "torchscript", "pt2")


def export_metric(metric: PerceptualDistance, path: str | os.PathLike[str], format: str = "onnx",  # noqa: A002
                  size: tuple[int, int] = (64, 64), batch: int | None = None) -> Path:
    """Write ``metric`` to ``path`` as ``format`` (``"onnx"``, ``"torchscript"`` or ``"pt2"``); returns the path."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file name")
    n = batch or 2
    lo, hi = metric.input_range
    g = torch.Generator().manual_seed(0)
    example = tuple(torch.rand(n, 3, *size, generator=g) * (hi - lo) + lo for _ in range(2))
    device, dtype = metric.device, metric.dtype
    example = tuple(x.to(device=device, dtype=dtype) for x in example)
    metric.eval()
    dyn = None
    if batch is None and format != "torchscript":
        b = torch.export.Dim("batch", min=1, max=1 << 16)
        dyn = ({0: b}, {0: b})
    # The graph is built in memory (value checks skip themselves while tracing), then written through
    # the one atomic writer: a failed write (full disk, /dev/full) is an OutputError, never a C++ abort
    # or a truncated file where the user's previous one was.
    with torch.no_grad():
        if format == "torchscript":
            buf = io.BytesIO()
            with warnings.catch_warnings():
                # torch.jit reads every attribute of the module, the deprecated 0.2 knobs included:
                # their warnings are about user code, not about this export
                warnings.filterwarnings("ignore", message=r"PerceptualDistance\.\w+ is deprecated",
                                        category=DeprecationWarning)
                torch.jit.save(torch.jit.trace(metric, example, check_trace=False), buf)
            _write_bytes(path, buf.getvalue())
        elif format == "pt2":
            buf = io.BytesIO()
            torch.export.save(torch.export.export(metric, example, dynamic_shapes=dyn), buf)
            _write_bytes(path, buf.getvalue())
        else:
            try:
                import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
            except ImportError as e:
                raise ImportError("ONNX export needs onnx and onnxscript: pip install onnx onnxscript "
                                  "(and onnxruntime to run the file)") from e
            _export_onnx(metric, example, path, dyn)
    return path


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _export_onnx(metric: PerceptualDistance, example: tuple[torch.Tensor, ...], path: Path, dyn: Any) -> None:
    """ONNX into a scratch folder beside ``path`` under the final name, then renamed into place: one
    self-contained file while the weights fit protobuf's 2 GiB limit, else ``NAME.data`` beside it
    (the model refers to it by name, so both are made under their final names)."""
    size_bytes = sum(p.numel() * p.element_size() for p in metric.parameters())
    with atomic_path(path) as tmp:  # checks the destination and reserves the rename
        scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=tmp.parent))
        try:
            torch.onnx.export(metric, example, str(scratch / path.name), dynamo=True, dynamic_shapes=dyn,
                              input_names=["img0", "img1"], output_names=["distance"], verbose=False,
                              external_data=size_bytes > 1_500_000_000)
            for extra in scratch.iterdir():
                if extra.name != path.name:
                    os.replace(extra, path.parent / extra.name)
            os.replace(scratch / path.name, tmp)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
