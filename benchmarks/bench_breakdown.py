"""Where one inference call of the default metric spends its time, piece by piece, on this machine.

    python benchmarks/bench_breakdown.py [--size 64] [--batch 32] [--rounds 15]

Times, in interleaved rounds (medians, ms per call, `torch.inference_mode`), the pieces of
``PerceptualDistance()(x, y)`` for ``--batch`` pairs (2 x batch images through ResNet-6):

* ``stem conv``: the stem's 7x7/2 convolutions alone, in the sub-batches the stem uses;
* ``stem``: the whole stem (those convs, the TF-SAME max-pool and the ReLU);
* ``stages``: the four stages from a precomputed stem output;
* ``backbone``: stem and stages, as the metric calls them;
* ``call``: the whole metric call (input checks, normalisation, backbone, head).

With the multiply-adds of each conv piece (counted by ``torch.utils.flop_counter``) it prints the
achieved GMAC/s; ``call - backbone`` is what runs outside the network and ``stem - stem conv`` the
pool and ReLU. The profiler's per-op table distorts small ops (its per-op overhead), which this does not.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_distance import cpu_name  # noqa: E402

import lowps  # noqa: E402
from lowps._cpu import raise_malloc_thresholds  # noqa: E402
from lowps.backbones.resnet_tpu import TPUResNet  # noqa: E402


def macs(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    raise_malloc_thresholds()  # what the metric's first call does anyway; before any piece is timed
    metric = lowps.PerceptualDistance()
    trunk = next(m for m in metric.backbone.modules() if isinstance(m, TPUResNet))
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(a.batch, 3, a.size, a.size, generator=g) for _ in range(2))
    with torch.inference_mode():
        xn = metric._normalize([x, y])
        n = xn.shape[0]
        step = max(1, min(n, trunk.stem_chunk_pixels // (a.size * a.size)))
        stem_out = trunk._stem(xn)
        w, b = trunk.conv1.weight, trunk.conv1.bias

        def stem_conv() -> None:
            for i in range(0, n, step):
                F.conv2d(xn[i:i + step], w, b, 2, 3)

        def stages() -> torch.Tensor:
            h = stem_out
            for stage in trunk.stages:
                h = stage(h)
            return h

        pieces: dict[str, Callable[[], object]] = {
            "stem conv": stem_conv, "stem": lambda: trunk._stem(xn), "stages": stages,
            "backbone": lambda: metric.backbone(xn), "call": lambda: metric(x, y)}
        work = {k: macs(pieces[k]) for k in ("stem conv", "stages", "backbone")}
        times: dict[str, list[float]] = {k: [] for k in pieces}
        for f in pieces.values():  # warm-up
            f()
        t = time.perf_counter()
        pieces["call"]()
        calls = max(1, round(0.2 / (time.perf_counter() - t)))  # ~0.2 s of whole calls per piece and round
        for _ in range(a.rounds):
            for k, f in pieces.items():
                t = time.perf_counter()
                for _ in range(calls):
                    f()
                times[k].append((time.perf_counter() - t) / calls)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {a.size}x{a.size}, "
          f"batch {a.batch} pairs ({n} images), {a.rounds} interleaved rounds of {calls} calls")
    for k, v in ms.items():
        rate = f"{work[k] / (v / 1e3) / 1e9:>8.1f} GMAC/s{work[k] / 1e6:>11.3f} M MACs" if k in work else ""
        print(f"{k:<12}{v:>9.2f} ms{rate}")
    print(f"{'pool+ReLU':<12}{ms['stem'] - ms['stem conv']:>9.2f} ms   (stem - stem conv)")
    print(f"{'outside':<12}{ms['call'] - ms['backbone']:>9.2f} ms   (call - backbone: checks, normalisation, head)")


if __name__ == "__main__":
    main()
