"""What each `lowps.accel` technique buys, as a paired A/B in one process run.

    python benchmarks/bench_accel.py [--backward] [--size 64] [--batch 32] [--rounds 15] [--json FILE]

The default metric under: ``accelerate="none"`` (the reference network), ``"auto"`` (every technique
the probe picks for this CPU), and ``"auto"`` without one technique at a time (`lowps.accel.accelerate`'s
``skip``), timed in interleaved rounds (medians) with LPIPS-alex (random trunk) in the same rounds.
Without ``--backward``: one inference call on a batch of pairs (``torch.inference_mode``); with it:
what a training loss does, forward + backward to the first image (frozen weights). A technique's
gain is (time without it) / (time with everything): below 1.03 it does not pay on this path here.
Each variant's largest difference from "auto" is printed too (distances, or input gradients with
``--backward``): float rounding. The row "auto, head as plain ops" times the default head's reference
formula (the standardised maps through autograd, what torch.func and tracing run) instead of its fused
layer (`lowps.heads._StructureLayer`: statistics and a closed-form backward).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_distance import cpu_name  # noqa: E402

import lowps  # noqa: E402
import lowps.heads as heads  # noqa: E402
from lowps.accel import TECHNIQUES, accelerate  # noqa: E402


def _metric(skip: set[str] | None) -> lowps.PerceptualDistance:
    """The default metric: the reference (``skip=None``) or accelerated without ``skip``."""
    m = lowps.PerceptualDistance(accelerate="none")
    if skip is not None:
        accelerate(m.backbone.model, skip=skip)
        m.backbone.to(memory_format=torch.channels_last)
    return m


@contextlib.contextmanager
def _plain_head_ops():
    """The heads' plain-op formulas for the calls inside (their fused layers off)."""
    saved = heads.plain_ops_only
    heads.plain_ops_only = lambda: True
    try:
        yield
    finally:
        heads.plain_ops_only = saved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backward", action="store_true", help="forward + backward (a loss) instead of inference")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    a = p.parse_args()
    import lpips
    warnings.filterwarnings("ignore", category=UserWarning)
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.rand(a.batch, 3, a.size, a.size, generator=gen) for _ in range(2))
    alex = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval().requires_grad_(False)

    def call(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if not a.backward:
            with torch.inference_mode():
                return fn(x, y).flatten().clone()
        xx = x.clone().requires_grad_()
        fn(xx, y).sum().backward()
        assert xx.grad is not None
        return xx.grad

    metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "lpips-alex": lambda u, v: alex(u, v, normalize=True), "auto": _metric(set()), "none (reference)": _metric(None)}
    for t in TECHNIQUES:
        if t != "fuse":  # without fuse nothing else applies: that is the reference
            metrics[f"auto without {t}"] = _metric({t})
    auto = metrics["auto"]

    def plain_head(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with _plain_head_ops():
            return auto(u, v)
    metrics["auto, head as plain ops"] = plain_head
    results = {k: call(f) for k, f in metrics.items()}  # warm-up, and what to compare
    times: dict[str, list[float]] = {k: [] for k in metrics}
    for _ in range(a.rounds):
        for k, f in metrics.items():
            t0 = time.perf_counter()
            call(f)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    what = "forward + backward" if a.backward else "inference"
    head = (f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {a.size}x{a.size}, "
            f"batch {a.batch}, {what}, {a.rounds} interleaved rounds")
    print(head)
    print(f"{'variant':<32}{'ms':>9}{'x alex':>8}{'/ auto':>8}{'max diff':>10}")
    ref = results["auto"]
    rows = []
    for k in metrics:
        diff = None if k == "lpips-alex" else float((results[k] - ref).abs().max() / ref.abs().max())
        rows.append({"variant": k, "ms": 1e3 * med[k], "x_alex": med["lpips-alex"] / med[k],
                     "vs_auto": med[k] / med["auto"], "max_rel_diff": diff})
        print(f"{k:<32}{1e3 * med[k]:>9.1f}{med['lpips-alex'] / med[k]:>8.2f}{med[k] / med['auto']:>8.2f}"
              f"{'' if diff is None else f'{diff:.1e}':>10}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"header": head, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
