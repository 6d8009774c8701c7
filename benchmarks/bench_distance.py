"""Pairs/s and peak memory of lowps against LPIPS, measured in one process run.

    python benchmarks/bench_distance.py [--device cpu|cuda] [--sizes 64 256 512 96x160]
        [--batches 1 32 256] [--metrics lpips-alex lowps:meanpool lowps:meanpool:bf16 ...]
        [--memory] [--json FILE] [--quick]

LPIPS runs from the `lpips` package with random trunks (speed only: weights do not change the
work). lowps runs its default backbone with every head as users get it (``PerceptualDistance``:
BatchNorm and shortcuts folded into the convs, channels_last, both images in one forward,
pixel-bounded chunks) under ``torch.inference_mode``; ``lowps:HEAD:bf16`` is
``PerceptualDistance(precision="bf16")``. Per size and batch, the metrics are timed in interleaved
rounds on the same inputs and pairs/s = batch / median call time; ratios are against LPIPS-alex at
the same size and batch. Peak memory: on CUDA the
allocator's peak; on CPU the peak resident-set growth of a child process that runs only that one
configuration (so one measurement cannot hide inside another's peak).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def make(name: str, device: str):
    warnings.filterwarnings("ignore")
    if name.startswith("lpips-"):
        import lpips

        net = lpips.LPIPS(net=name.split("-")[1], pnet_rand=True, verbose=False).to(device).eval()
        return lambda a, b: net(a, b, normalize=True)
    import lowps

    _, head, *prec = name.split(":")
    extra = {"head_weights": "ones"} if head == "linear" else {}
    weights = os.environ.get("LOWPS_BENCH_WEIGHTS") or None
    return lowps.PerceptualDistance(distance=head, weights=weights, precision=prec[0] if prec else "fp32",
                                    **extra).to(device)


def parse_size(s: str) -> tuple[int, int]:
    h, _, w = s.partition("x")
    return int(h), int(w or h)


def time_interleaved(names: list[str], device: str, batch: int, size: tuple[int, int],
                     min_time: float) -> dict[str, float]:
    """Pairs/s of each metric on the same inputs: batch / median call time over interleaved rounds.

    Every round calls each metric once, in turn, so slow drift of a shared machine (clock, other
    tenants) hits all of them alike, and the median drops the odd stalled call; the ratios against
    LPIPS-alex are what this benchmark is for.
    """
    fns = {name: make(name, device) for name in names}
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, *size, generator=g).to(device)
    y = torch.rand(batch, 3, *size, generator=g).to(device)

    def call(fn) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            fn(x, y)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for fn in fns.values():  # warm-up: allocator, oneDNN/cuDNN kernel choice
        call(fn)
        call(fn)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    while True:
        for name, fn in fns.items():
            times[name].append(call(fn))
        if len(times[names[0]]) >= 3 and time.perf_counter() - start >= min_time * len(fns):
            return {name: batch / statistics.median(t) for name, t in times.items()}


def peak_memory(name: str, device: str, batch: int, size: tuple[int, int]) -> float:
    """Peak memory (MiB) of one forward: CUDA allocator peak, or a child process's RSS growth on CPU."""
    if device.startswith("cuda"):
        fn = make(name, device)
        x = torch.rand(batch, 3, *size, device=device)
        y = torch.rand(batch, 3, *size, device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.inference_mode():
            fn(x, y)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    code = (
        "import sys, torch; sys.path.insert(0, %r); import bench_distance as b;"
        "fn = b.make(%r, 'cpu'); x = torch.rand(%d, 3, %d, %d); y = torch.rand_like(x)\n"
        "with torch.inference_mode(): fn(x[:1], y[:1])\n"  # load kernels before the baseline
        "rss = lambda key: int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1])\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # reset the peak-RSS mark (Linux)
        "base = rss('VmRSS:')\n"
        "with torch.inference_mode(): fn(x, y)\n"
        "print(max(0, rss('VmHWM:') - base) / 1024)"
    ) % (HERE, name, batch, size[0], size[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", nargs="+", default=["64", "256", "512", "96x160"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32, 256])
    p.add_argument("--metrics", nargs="+", default=["lpips-alex", "lpips-vgg", "lpips-squeeze", "lowps:meanpool",
                                                     "lowps:local", "lowps:style", "lowps:linear",
                                                     "lowps:meanpool:bf16"],
                   help="lpips-NET, or lowps:HEAD[:PRECISION] (PRECISION fp32 (default), bf16 or fp16)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="seconds of timed calls per metric and configuration (at least 3 rounds)")
    p.add_argument("--max-pixels", type=float, default=256 * 256 * 256,
                   help="skip configurations whose batch x H x W exceeds this (vgg at 512 px is minutes on CPU)")
    p.add_argument("--memory", action="store_true", help="also measure peak memory")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true",
                   help="64 and 256 px, batch 32: lpips-alex, the default metric, and it in bf16")
    a = p.parse_args()
    if a.quick:
        a.sizes, a.batches, a.metrics = ["64", "256"], [32], ["lpips-alex", "lowps:meanpool", "lowps:meanpool:bf16"]
    threads = torch.get_num_threads()
    rows = []
    print(f"# {platform.processor() or platform.machine()}, {threads} threads, torch {torch.__version__}, "
          f"device {a.device}, {datetime.date.today()}")
    print(f"{'metric':<20}{'size':>9}{'batch':>7}{'pairs/s':>11}{'x alex':>8}" + (f"{'peak MiB':>10}" if a.memory else ""))
    for size_s in a.sizes:
        size = parse_size(size_s)
        for batch in a.batches:
            if batch * size[0] * size[1] > a.max_pixels:
                continue
            names = [n for n in a.metrics
                     if not (n == "lpips-vgg" and a.device == "cpu" and batch * size[0] * size[1] > 32 * 256 * 256)]
            rates = time_interleaved(names, a.device, batch, size, a.min_time)
            alex = rates.get("lpips-alex")
            for name in names:
                rate = rates[name]
                mem = peak_memory(name, a.device, batch, size) if a.memory else None
                row = {"metric": name, "size": f"{size[0]}x{size[1]}", "batch": batch, "pairs_per_s": rate,
                       "ratio_to_alex": rate / alex if alex else None, "peak_mib": mem}
                rows.append(row)
                ratio = f"{row['ratio_to_alex']:.2f}" if alex else "-"
                print(f"{name:<20}{row['size']:>9}{batch:>7}{rate:>11.1f}{ratio:>8}"
                      + (f"{mem:>10.1f}" if mem is not None else ""), flush=True)
    if a.json:
        meta = {"device": a.device, "threads": threads, "torch": torch.__version__, "date": str(datetime.date.today()),
                "cpu": platform.processor() or platform.machine(),
                "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None}
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
