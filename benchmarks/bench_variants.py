"""lowps's switchable CPU fast paths, measured against each other and LPIPS-alex in one run.

    python benchmarks/bench_variants.py [--backward] [--size 64] [--batch 32] [--rounds 12] [--profile CALLS]

The default metric (`PerceptualDistance()`) under each combination below, timed in interleaved
rounds (medians) with LPIPS-alex (random trunk) in the same rounds. Without ``--backward``: one
inference call on a batch of pairs (``torch.inference_mode``); with it: what a training loss does,
forward + backward to the first image (frozen weights).

* `TPUResNet.stem_conv`: "direct" (the 7x7 conv) or "width_im2col" (column taps unrolled);
* `SingleConvBlock.small_map_nchw`: NCHW or channels_last for the 4x4/2x2 maps;
* with ``--backward``, `TPUResNet.stem_input_grad`: "autograd" (plain autograd through the stem),
  "native" (the loss-path stem with oneDNN's backward-data kernel) or "polyphase";
* with ``--backward``, `SingleConvBlock.loss_input_grad`: "autograd" (oneDNN's backward-data kernel)
  or "gemm" (one matrix product) for the input gradient of the small-map convs;
* `SingleConvBlock.packed_weights`: the merged blocks' convs on a weight prepacked in oneDNN's layout
  (and, with ``--backward``, their input gradients as the packed transposed conv), or ``F.conv2d``,
  which reorders the weight on every call ("packed=off"; every row before the last two did until
  2026-12-03);
* with ``--backward``, the stage outputs' gradients converted to their activations' channels_last
  layout (`lowps.backbones.resnet_tpu._grad_in_forward_layout`; "grad_layout=forward") or left in the
  layout they arrive in ("as_summed"; what every row before the last two did until 2026-12-02).

The first variant is lowps before these paths existed (except the gradient layout). Also printed:
each variant's largest difference from it (distances, or input gradients with ``--backward``):
float32 rounding.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_distance import cpu_name  # noqa: E402

import lowps  # noqa: E402
from lowps.backbones import resnet_tpu  # noqa: E402
from lowps.backbones.resnet_tpu import SingleConvBlock, TPUResNet  # noqa: E402

_GRAD_LAYOUT = resnet_tpu._grad_in_forward_layout


def _as_summed(t: torch.Tensor) -> torch.Tensor:
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backward", action="store_true", help="forward + backward (a loss) instead of inference")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--profile", type=int, default=0, metavar="CALLS",
                   help="instead of the variants: torch.profiler's per-op table of CALLS calls of the default metric")
    a = p.parse_args()
    import lpips
    warnings.filterwarnings("ignore", category=UserWarning)
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.rand(a.batch, 3, a.size, a.size, generator=gen) for _ in range(2))
    metric = lowps.PerceptualDistance()
    alex = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval().requires_grad_(False)

    def call(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if not a.backward:
            with torch.inference_mode():
                return fn(x, y).clone()
        xx = x.clone().requires_grad_()
        fn(xx, y).sum().backward()
        assert xx.grad is not None
        return xx.grad

    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        for _ in range(3):
            call(metric)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.profile):
                call(metric)
        what = "forward + backward" if a.backward else "inference"
        print(f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {a.size}x{a.size}, "
              f"batch {a.batch}, {what}, the default metric, {a.profile} calls (times are totals over them)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=44))
        return

    def variant(conv: str, nchw: bool, grad: str, small_grad: str, layout: bool,
                packed: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            TPUResNet.stem_conv, SingleConvBlock.small_map_nchw, TPUResNet.stem_input_grad = conv, nchw, grad
            SingleConvBlock.loss_input_grad, SingleConvBlock.packed_weights = small_grad, packed
            resnet_tpu._grad_in_forward_layout = _GRAD_LAYOUT if layout else _as_summed
            return call(metric)
        return run

    # (stem_conv, small maps NCHW, stem_input_grad, small_map_grad, grad layout fix, packed weights)
    settings = [("direct", True, "autograd", "autograd", True, False),
                ("direct", False, "autograd", "autograd", True, False),
                ("width_im2col", False, "autograd", "autograd", True, False)]
    if a.backward:
        settings += [("direct", False, "native", "autograd", True, False),
                     ("direct", False, "polyphase", "autograd", True, False),
                     ("width_im2col", False, "polyphase", "autograd", True, False),
                     ("direct", True, "polyphase", "autograd", True, False),
                     ("direct", True, "polyphase", "gemm", True, False),
                     ("width_im2col", False, "polyphase", "gemm", True, False),
                     ("direct", True, "polyphase", "autograd", False, False),
                     ("direct", True, "polyphase", "gemm", False, False),
                     # the defaults of AVX2 CPUs and of Intel AVX-512 CPUs, with packed weights
                     ("width_im2col", False, "polyphase", "autograd", True, True),
                     ("direct", True, "polyphase", "gemm", True, True),
                     # AMD AVX-512 (oneDNN's small-map gradient), small maps NCHW or channels_last
                     ("direct", True, "polyphase", "autograd", True, True),
                     ("direct", False, "polyphase", "autograd", True, True)]
    else:
        settings += [("width_im2col", False, "autograd", "autograd", True, True),
                     ("direct", True, "autograd", "autograd", True, True),
                     ("direct", False, "autograd", "autograd", True, True)]
    variants: dict[str, Callable[[], torch.Tensor]] = {"lpips-alex": lambda: call(lambda u, v: alex(u, v, normalize=True))}
    for conv, nchw, grad, small_grad, layout, packed in settings:
        name = f"stem_conv={conv} small_maps={'nchw' if nchw else 'channels_last'}"
        if a.backward:
            name += f" stem_input_grad={grad} small_map_grad={small_grad}"
            name += " grad_layout=" + ("forward" if layout else "as_summed")
        name += " packed=" + ("on" if packed else "off")
        variants[name] = variant(conv, nchw, grad, small_grad, layout, packed)
    try:
        results = {k: f() for k, f in variants.items()}  # warm-up, and what to compare
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(a.rounds):
            for k, f in variants.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    finally:
        TPUResNet.stem_conv, SingleConvBlock.small_map_nchw, TPUResNet.stem_input_grad = "auto", None, "auto"
        SingleConvBlock.loss_input_grad, SingleConvBlock.packed_weights = "auto", True
        resnet_tpu._grad_in_forward_layout = _GRAD_LAYOUT
    ref = results[list(variants)[1]]
    alex_t = statistics.median(times["lpips-alex"])
    what = "forward + backward" if a.backward else "inference"
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{a.size}x{a.size}, batch {a.batch}, {what}, {a.rounds} interleaved rounds")
    print(f"{'variant':<136}{'ms':>8}{'x alex':>8}{'max diff':>10}")
    for k, ts in times.items():
        t = statistics.median(ts)
        diff = "" if k == "lpips-alex" else f"{float((results[k] - ref).abs().max() / ref.abs().max()):.1e}"
        print(f"{k:<136}{t * 1e3:>8.1f}{alex_t / t:>8.2f}{diff:>10}")


if __name__ == "__main__":
    main()
