"""Pairs/s and peak memory of lowps against LPIPS, measured in one process run.

    python benchmarks/bench_distance.py [--device cpu|cuda] [--sizes 64 256 512 96x160]
        [--batches 1 32 256] [--metrics lpips-alex lowps:meanpool lowps:meanpool:bf16 ...]
        [--backward] [--memory] [--roofline] [--json FILE] [--quick]

``--backward`` times what a training loss does: forward plus backward to the first image (frozen
weights), outside inference mode; a metric spec ending in ``:ac`` runs under bf16 autocast
(``lpips-alex:ac``, ``lowps:meanpool:ac``), one ending in ``:ch`` with the head alone compiled
(``lowps:structure:ch``: ``metric.head = torch.compile(metric.head)``, inductor; the warm-up call
compiles, so compile time is not timed). ``--roofline`` adds, for each lowps row, the achieved
multiply-adds per second (MACs per call counted by ``torch.utils.flop_counter``; with ``--backward``
1.5x the forward of both images: the first image's input gradient costs its forward again) and their
fraction of this machine's conv peak: a large 3x3 convolution (batch 32, 256 -> 256 channels, 28x28,
channels_last, fp32; bf16 for bf16 rows) timed in the same interleaved rounds as that row's metrics
(column "peak"), so the fraction compares calls made under the same machine conditions.

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
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def make(name: str, device: str):
    """The metric of a spec: ``lpips-NET[:ac]`` (the ``lpips`` package), ``lowps.lpips-NET[:ac]`` (lowps's
    drop-in `lowps.LPIPS`, random trunk and linear layers: speed only) or ``lowps:HEAD[:PRECISION][:ac]``
    (``ac``: bf16 autocast)."""
    warnings.filterwarnings("ignore")
    parts = name.split(":")
    autocast = parts[-1] == "ac"
    if autocast:
        parts = parts[:-1]
    if parts[0].startswith("lpips-"):
        import lpips

        net = lpips.LPIPS(net=parts[0].split("-")[1], pnet_rand=True, verbose=False).to(device).eval()
        net.requires_grad_(False)
        fn = lambda a, b: net(a, b, normalize=True)  # noqa: E731
    elif parts[0].startswith("lowps.lpips-"):
        import lowps

        ours = lowps.LPIPS(net=parts[0].split("-")[1], pretrained=False, pnet_rand=True, verbose=False).to(device)
        ours.requires_grad_(False)
        fn = lambda a, b: ours(a, b, normalize=True)  # noqa: E731
    else:
        import lowps

        _, head, *prec = parts
        compiled_head = bool(prec) and prec[-1] == "ch"
        if compiled_head:
            prec = prec[:-1]
        extra = {"head_weights": "ones"} if head == "linear" else {}
        weights = os.environ.get("LOWPS_BENCH_WEIGHTS") or None
        # forced: the benchmark measures the precision it names, also on CPUs where lowps would fall back
        fn = lowps.PerceptualDistance(distance=head, weights=weights, precision=prec[0] if prec else "fp32",
                                      force_precision=True, **extra).to(device)
        if compiled_head:  # the user recipe of docs/performance.md: the head alone through torch.compile
            fn.head = torch.compile(fn.head)
    if not autocast:
        return fn

    def with_autocast(a, b):
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            return fn(a, b)
    return with_autocast


#: Multiply-adds of a --backward call relative to the counted forward of both images (see main()).
BACKWARD_MAC_FACTOR = 1.5


def run_once(fn, x, y, backward: bool):
    """One metric call as the benchmark times it: inference, or forward + backward to ``x``."""
    if not backward:
        with torch.inference_mode():
            return fn(x, y)
    xg = x.detach().requires_grad_(True)
    fn(xg, y).sum().backward()
    return xg.grad


def macs_per_call(name: str, device: str, batch: int, size: tuple[int, int]) -> float:
    """Multiply-adds of one forward call (torch.utils.flop_counter counts 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    fn = make(name, device)
    x = torch.rand(batch, 3, *size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(x, torch.rand_like(x))
    return counter.get_total_flops() / 2


def peak_conv(device: str, dtype: torch.dtype) -> tuple[Callable[[], object], float]:
    """The reference for the roofline: a large 3x3 conv (batch 32, 256 -> 256 channels, 28x28,
    channels_last) and its multiply-adds; timed in the same interleaved rounds as the metrics."""
    n, c, hw = 32, 256, 28
    x = torch.rand(n, c, hw, hw, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(device=device, dtype=dtype,
                                                                memory_format=torch.channels_last)

    def call() -> object:
        with torch.inference_mode():
            return conv(x)
    return call, float(n * c * c * 9 * hw * hw)


def cpu_name() -> str:
    """The CPU's model name, the vector ISA PyTorch's kernels use on it (AVX2, AVX512...), AMX where
    present, and its family/model numbers: machines of one name differ in ISA (VMs often report a bare
    "Intel(R) Xeon(R) Processor"), and oneDNN's kernel choice, hence every ratio, follows the ISA."""
    from lowps.accel.probe import cpu_info  # the one /proc/cpuinfo reader

    fields = cpu_info()
    name = fields.get("model name") or platform.processor() or platform.machine()
    isa = torch.backends.cpu.get_cpu_capability()
    if torch.cpu._is_amx_tile_supported():
        isa += ", AMX"
    if "cpu family" in fields and "model" in fields:
        isa += f"; family {fields['cpu family']} model {fields['model']}"
    return f"{name} ({isa})"


def parse_size(s: str) -> tuple[int, int]:
    h, _, w = s.partition("x")
    return int(h), int(w or h)


def time_interleaved(names: list[str], device: str, batch: int, size: tuple[int, int],
                     min_time: float, backward: bool = False,
                     refs: dict[str, Callable[[], object]] | None = None) -> dict[str, float]:
    """Pairs/s of each metric on the same inputs: batch / median call time over interleaved rounds.

    Every round calls each metric once, in turn, so slow drift of a shared machine (clock, other
    tenants) hits all of them alike, and the median drops the odd stalled call; the ratios against
    LPIPS-alex are what this benchmark is for. ``refs`` (the roofline's peak conv) are called in the
    same rounds; their entries are calls/s.
    """
    fns = {name: make(name, device) for name in names}
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, *size, generator=g).to(device)
    y = torch.rand(batch, 3, *size, generator=g).to(device)

    def timed(f: Callable[[], object]) -> float:
        start = time.perf_counter()
        f()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    calls: dict[str, Callable[[], object]] = {name: (lambda fn=fn: run_once(fn, x, y, backward))
                                               for name, fn in fns.items()}
    calls.update(refs or {})
    for f in calls.values():  # warm-up: allocator, oneDNN/cuDNN kernel choice
        timed(f)
        timed(f)
    times: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    while True:
        for name, f in calls.items():
            times[name].append(timed(f))
        if len(times[names[0]]) >= 3 and time.perf_counter() - start >= min_time * len(calls):
            return {name: (batch if name in fns else 1) / statistics.median(t) for name, t in times.items()}


#: The child's allocator settings for `peak_memory` on CPU (glibc; other allocators ignore them).
#: glibc's mmap threshold adapts to the sizes a process has freed, so whether a large buffer lives in
#: the heap (and stays resident after its free) or in its own mapping depends on history: the same
#: call measured 29-51 MiB. A fixed threshold maps every block of 64 KiB or more on its own and unmaps
#: it when freed, so the resident-set peak follows the live tensors.
MALLOC_PEAK_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def peak_memory(name: str, device: str, batch: int, size: tuple[int, int], backward: bool = False) -> float:
    """Peak memory (MiB) of one call: CUDA allocator peak, or a child process's RSS growth on CPU."""
    if device.startswith("cuda"):
        fn = make(name, device)
        x = torch.rand(batch, 3, *size, device=device)
        y = torch.rand(batch, 3, *size, device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_once(fn, x, y, backward)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    code = (
        "import sys, torch; sys.path.insert(0, %r); import bench_distance as b;"
        "fn = b.make(%r, 'cpu'); x = torch.rand(%d, 3, %d, %d); y = torch.rand_like(x); bw = %r\n"
        "b.run_once(fn, x[:1], y[:1], bw)\n"  # load kernels before the baseline
        "rss = lambda key: int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1])\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # reset the peak-RSS mark (Linux)
        "base = rss('VmRSS:')\n"
        "b.run_once(fn, x, y, bw)\n"
        "print(max(0, rss('VmHWM:') - base) / 1024)"
    ) % (HERE, name, batch, size[0], size[1], backward)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **MALLOC_PEAK_ENV})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", nargs="+", default=["64", "256", "512", "96x160"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32, 256])
    p.add_argument("--metrics", nargs="+", default=["lpips-alex", "lpips-vgg", "lpips-squeeze", "lowps:meanpool",
                                                     "lowps:local", "lowps:style", "lowps:linear",
                                                     "lowps:meanpool:bf16"],
                   help="lpips-NET, lowps.lpips-NET (lowps.LPIPS), or lowps:HEAD[:PRECISION] (PRECISION fp32 "
                        "(default), bf16 or fp16)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="seconds of timed calls per metric and configuration (at least 3 rounds)")
    p.add_argument("--max-pixels", type=float, default=256 * 256 * 256,
                   help="skip configurations whose batch x H x W exceeds this (vgg at 512 px is minutes on CPU)")
    p.add_argument("--memory", action="store_true", help="also measure peak memory")
    p.add_argument("--backward", action="store_true",
                   help="time forward + backward to the inputs (a training loss), not inference")
    p.add_argument("--roofline", action="store_true",
                   help="MAC/s of lowps rows and their fraction of a large 3x3 conv's MAC/s timed in this run")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true",
                   help="64 and 256 px, batch 32: lpips-alex, the default metric, and it in bf16")
    a = p.parse_args()
    if a.quick:
        a.sizes, a.batches, a.metrics = ["64", "256"], [32], ["lpips-alex", "lowps:meanpool", "lowps:meanpool:bf16"]
    threads = torch.get_num_threads()
    rows = []
    # The roofline's reference conv is timed in every row's interleaved rounds (not once up front): on
    # a shared machine the peak drifts with the metrics, and the fraction must compare like with like.
    peak_calls: dict[str, tuple[Callable[[], object], float]] = {}
    if a.roofline:
        peak_calls["fp32"] = peak_conv(a.device, torch.float32)
        if any(n.endswith(("bf16", "bf16:ac", ":ac")) for n in a.metrics):
            peak_calls["bf16"] = peak_conv(a.device, torch.bfloat16)
    peaks_seen: dict[str, list[float]] = {k: [] for k in peak_calls}
    print(f"# {cpu_name()}, {threads} threads, torch {torch.__version__}, device {a.device}, "
          f"{datetime.date.today()}, {'forward + backward (loss)' if a.backward else 'inference'}")
    if peak_calls:
        print("# conv peak: a 3x3 conv, 256->256 ch, 28x28, batch 32, timed in each row's rounds (column 'peak')")
    print(f"{'metric':<22}{'size':>9}{'batch':>7}{'pairs/s':>11}{'x alex':>8}" + (f"{'peak MiB':>10}" if a.memory else "")
          + (f"{'GMAC/s':>9}{'peak':>7}{'% peak':>8}" if a.roofline else ""))
    for size_s in a.sizes:
        size = parse_size(size_s)
        for batch in a.batches:
            if batch * size[0] * size[1] > a.max_pixels:
                continue
            names = [n for n in a.metrics
                     if not (n == "lpips-vgg" and a.device == "cpu" and batch * size[0] * size[1] > 32 * 256 * 256)]
            refs = {f"peak:{k}": f for k, (f, _) in peak_calls.items()}
            rates = time_interleaved(names, a.device, batch, size, a.min_time, a.backward, refs)
            peaks = {k: rates.pop(f"peak:{k}") * macs for k, (_, macs) in peak_calls.items()}
            for k, v in peaks.items():
                peaks_seen[k].append(v)
            alex = rates.get("lpips-alex") or rates.get("lpips-alex:ac")
            for name in names:
                rate = rates[name]
                mem = peak_memory(name, a.device, batch, size, a.backward) if a.memory else None
                row = {"metric": name, "size": f"{size[0]}x{size[1]}", "batch": batch, "pairs_per_s": rate,
                       "ratio_to_alex": rate / alex if alex else None, "peak_mib": mem,
                       "mode": "backward" if a.backward else "inference"}
                roof = ""
                if a.roofline and name.startswith("lowps:"):
                    macs = macs_per_call(name, a.device, batch, size)
                    # --backward: both images' forwards (counted) plus the input gradient of the first
                    # image only (frozen weights: no weight gradients), which costs its forward's MACs again
                    # (a conv's input gradient is its transposed conv: the same multiply-adds), so 1.5x.
                    achieved = macs * rate / batch * (BACKWARD_MAC_FACTOR if a.backward else 1)
                    peak = peaks["bf16" if ("bf16" in name or name.endswith(":ac")) else "fp32"]
                    row.update(macs_per_pair=macs / batch, gmacs_per_s=achieved / 1e9, fraction_of_peak=achieved / peak,
                               conv_peak_gmacs_per_s=peak / 1e9)
                    roof = f"{achieved / 1e9:>9.1f}{peak / 1e9:>7.1f}{100 * achieved / peak:>7.0f}%"
                rows.append(row)
                ratio = f"{row['ratio_to_alex']:.2f}" if alex else "-"
                print(f"{name:<22}{row['size']:>9}{batch:>7}{rate:>11.1f}{ratio:>8}"
                      + (f"{mem:>10.1f}" if mem is not None else "") + roof, flush=True)
    if a.json:
        meta = {"device": a.device, "threads": threads, "torch": torch.__version__, "date": str(datetime.date.today()),
                "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "native_bf16": bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()),
                "amx": bool(torch.cpu._is_amx_tile_supported()),
                "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
                "mode": "backward" if a.backward else "inference",
                "conv_peak_macs_per_s": {k: statistics.median(v) for k, v in peaks_seen.items() if v} or None,
                "backward_mac_factor": BACKWARD_MAC_FACTOR if a.backward else None}
        from lowps._io import write_json  # atomic, strict JSON: the writer every results file uses
        write_json(a.json, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
