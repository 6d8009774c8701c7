"""The training-loss path's switchable fast paths, measured against each other and LPIPS-alex.

    python benchmarks/bench_loss_variants.py [--size 64] [--batch 32] [--rounds 12]

One forward + backward to the first image per call (frozen weights), as `bench_distance.py
--backward` times it, for the default metric under each setting of `TPUResNet.stem_input_grad`
("autograd": plain autograd through the stem, as before 0.3; "native": the loss-path stem with
oneDNN's backward-data kernel; "polyphase": with the polyphase input gradient) and of
`SingleConvBlock.small_map_nchw` (NCHW or channels_last for the 4x4/2x2 maps), in interleaved rounds;
medians and the ratio to LPIPS-alex (random trunk) timed in the same rounds. Also prints each
variant's largest input-gradient difference from "autograd" (float32 rounding, ~1e-6 relative).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_distance import cpu_name  # noqa: E402

import lowps  # noqa: E402
from lowps.backbones.resnet_tpu import SingleConvBlock, TPUResNet  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=12)
    a = p.parse_args()
    import lpips
    warnings.filterwarnings("ignore", category=UserWarning)
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.rand(a.batch, 3, a.size, a.size, generator=gen) for _ in range(2))
    metric = lowps.PerceptualDistance()
    alex = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval().requires_grad_(False)

    def step(fn):
        xx = x.clone().requires_grad_()
        fn(xx, y).sum().backward()
        return xx.grad

    def variant(stem: str, nchw: bool):
        def run():
            TPUResNet.stem_input_grad, SingleConvBlock.small_map_nchw = stem, nchw
            return step(metric)
        return run

    variants = {"lpips-alex": lambda: step(lambda a_, b_: alex(a_, b_, normalize=True))}
    for stem in ("autograd", "native", "polyphase"):
        for nchw in (True, False):
            variants[f"stem={stem} small_maps={'nchw' if nchw else 'channels_last'}"] = variant(stem, nchw)
    grads = {k: f() for k, f in variants.items()}  # warm-up, and the gradients to compare
    ref = grads["stem=autograd small_maps=nchw"]
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for k, f in variants.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    TPUResNet.stem_input_grad, SingleConvBlock.small_map_nchw = "auto", None
    alex_t = statistics.median(times["lpips-alex"])
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{a.size}x{a.size}, batch {a.batch}, forward + backward, {a.rounds} interleaved rounds")
    print(f"{'variant':<50}{'ms':>8}{'x alex':>8}{'grad diff':>11}")
    for k, ts in times.items():
        t = statistics.median(ts)
        diff = "" if k == "lpips-alex" else f"{float((grads[k] - ref).abs().max() / ref.abs().max()):.1e}"
        print(f"{k:<50}{t * 1e3:>8.1f}{alex_t / t:>8.2f}{diff:>11}")


if __name__ == "__main__":
    main()
