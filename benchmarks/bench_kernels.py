"""Micro-benchmarks behind the CPU fast paths of ResNet-6 (docs/performance.md), on this machine.

    python benchmarks/bench_kernels.py [--batch 32] [--size 64] [--rounds 5]

Times, in interleaved rounds (medians, ms per call), the alternatives lowps chose between:

* the stem's input gradient (conv 7x7/2, 64 -> 3 channels, transposed): oneDNN's backward-data
  kernel (channels_last and NCHW), ``conv_transpose2d``, the row-polyphase form lowps uses on AVX2
  (`lowps.backbones.resnet_tpu._polyphase_input_grad`: a 4x1 conv with 48 outputs and four
  strided adds), the 2-D polyphase form it used before (a 4x4 conv with 12 outputs and a pixel
  shuffle), and a matrix product plus ``F.fold``;
* the stem's forward (conv + max-pool, sub-batches of 16 images as at inference): channels_last,
  NCHW conv with a channels_last pool, space-to-depth (a 4x4 conv over 12 channels), and a
  width-im2col (21 channels, a 7x1 conv);
* the stem's max-pool alone on one sub-batch: the indices kernel against `separable_max_pool`
  (each into its own preallocated buffers);
* the 3x3 convs on ResNet-6's small late maps at 64x64 input (stages 3 and 4), channels_last
  against NCHW (`SingleConvBlock.small_map_nchw`), and their input gradients: oneDNN's
  backward-data kernel (channels_last and NCHW) against one matrix product plus nine strided adds
  (`lowps.backbones.resnet_tpu._gemm_input_grad`, `SingleConvBlock.loss_input_grad`);
* stage 1's ReLU mask on the loss path (``threshold_backward`` of the gradient against the
  channels_last activation), with the gradient NCHW (what arrived before
  `lowps.backbones.resnet_tpu._grad_in_forward_layout`), channels_last, and converted from NCHW to
  channels_last first (what that hook does).

Each alternative's largest difference from the first of its group is printed (float rounding).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_distance import cpu_name  # noqa: E402

from lowps.backbones.resnet_tpu import (  # noqa: E402
    _gemm_input_grad,
    _polyphase_input_grad,
    _polyphase_kernel,
    _width_im2col_conv,
    separable_max_pool,
)

CL = torch.channels_last


def _time(groups: dict[str, dict[str, Callable[[], torch.Tensor]]], rounds: int, calls: int = 5) -> None:
    for title, fns in groups.items():
        outs = {k: f() for k, f in fns.items()}  # warm-up and results
        ref = next(iter(outs.values()))
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():
                t = time.perf_counter()
                for _ in range(calls):
                    f()
                times[k].append((time.perf_counter() - t) / calls)
        print(f"\n{title}")
        for k, ts in times.items():
            diff = float((outs[k] - ref).abs().max() / ref.abs().max())
            print(f"  {k:<44}{statistics.median(ts) * 1e3:>8.2f} ms   max diff {diff:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    g = torch.Generator().manual_seed(0)
    n, s = a.batch, a.size
    w = torch.randn(64, 3, 7, 7, generator=g) * 0.1
    b = torch.randn(64, generator=g)
    x = torch.randn(n, 3, s, s, generator=g)
    ho = (s - 1) // 2 + 1
    grad = torch.randn(n, 64, ho, ho, generator=g)
    xc, wc, gc = x.contiguous(memory_format=CL), w.contiguous(memory_format=CL), grad.contiguous(memory_format=CL)

    def native(gg: torch.Tensor, xx: torch.Tensor, ww: torch.Tensor) -> Callable[[], torch.Tensor]:
        return lambda: torch.ops.aten.convolution_backward(gg, xx, ww, None, [2, 2], [3, 3], [1, 1], False, [0, 0], 1,
                                                           [True, False, False])[0]

    def gemm_fold() -> torch.Tensor:
        cols = (gc.permute(0, 2, 3, 1).reshape(-1, 64) @ w.reshape(64, 147)).view(n, -1, 147).transpose(1, 2)
        return F.fold(cols, (s, s), 7, padding=3, stride=2)

    # the 2-D polyphase form (lowps 0.2's): the four output phases as 4 x 3 channels of one 4x4 conv
    taps = torch.tensor(((5, 3, 1, 7), (6, 4, 2, 0)))  # row parity, window offset -> kernel row (7: zero)
    w_pp = F.pad(w, (0, 1, 0, 1))[:, :, taps][..., taps].permute(1, 2, 4, 0, 3, 5).reshape(12, 64, 4, 4)
    w_pp = w_pp.contiguous(memory_format=CL)

    def polyphase_2d() -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(gc, w_pp, None, 1, 2)[:, :, 1:, 1:], 2)[..., :s, :s]

    k_rows = _polyphase_kernel(w).contiguous(memory_format=CL)  # lowps builds it once per backward

    def pool(y: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(y, 3, 2, padding=(y.shape[-2] % 2, y.shape[-1] % 2), ceil_mode=True)

    def per16(f: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor) -> Callable[[], torch.Tensor]:
        return lambda: torch.cat([f(inp[i:i + 16]) for i in range(0, n, 16)])

    w_s2d = F.pad(w, (0, 1, 0, 1)).reshape(64, 3, 4, 2, 4, 2).permute(0, 1, 3, 5, 2, 4).reshape(64, 12, 4, 4)
    w_s2d = w_s2d.contiguous(memory_format=CL)

    def s2d(v: torch.Tensor) -> torch.Tensor:
        pad = (3, 3 + (s % 2), 3, 3 + (s % 2))
        return pool(F.conv2d(F.pixel_unshuffle(F.pad(v, pad), 2).contiguous(memory_format=CL), w_s2d, b))

    def width_col(v: torch.Tensor) -> torch.Tensor:
        return pool(_width_im2col_conv(v, w, b))

    groups: dict[str, dict[str, Callable[[], torch.Tensor]]] = {
        f"stem input gradient, {n} x 3 x {s} x {s}": {
            "oneDNN backward-data, channels_last": native(gc, xc, wc),
            "oneDNN backward-data, NCHW": native(grad, x, w),
            "conv_transpose2d, channels_last": lambda: F.conv_transpose2d(gc, wc, None, 2, 3, output_padding=1 - s % 2),
            "row polyphase (4x1 conv, 48 ch + 4 adds)": lambda: _polyphase_input_grad(gc, k_rows, (s, s)),
            "2-D polyphase (4x4 conv, 12 ch + shuffle)": polyphase_2d,
            "matrix product + F.fold": gemm_fold,
        },
        f"stem forward (conv + max-pool), {n} images in sub-batches of 16": {
            "channels_last": per16(lambda v: pool(F.conv2d(v, wc, b, 2, 3)), xc),
            "NCHW conv, channels_last pool": per16(
                lambda v: pool(F.conv2d(v, w, b, 2, 3).contiguous(memory_format=CL)), x),
            "space-to-depth (12 ch, 4x4 conv)": per16(s2d, xc),
            "width im2col (21 ch, 7x1 conv; lowps)": per16(width_col, xc),
        },
    }
    # The stem's pool alone, one 16-image sub-batch of its conv output, as inference runs it: with the
    # indices kernel into a preallocated output and index scratch (lowps until 2026-12-04 evening)
    # against two passes of elementwise maxima into preallocated buffers (`separable_max_pool`)
    ys = F.conv2d(xc[:16], wc, b, 2, 3)
    ch = ys.shape[-1]
    ph = (ch - 1) // 2 + 1
    p_out, p_out2 = (torch.empty(ys.shape[0], 64, ph, ph).contiguous(memory_format=CL) for _ in range(2))
    p_idx = torch.empty(p_out.shape, dtype=torch.int64).contiguous(memory_format=CL)
    p_scratch = torch.empty(ys.shape[0], 64, ph, ch).contiguous(memory_format=CL)

    def pool_indices() -> torch.Tensor:
        torch.ops.aten.max_pool2d_with_indices.out(ys, [3, 3], [2, 2], [ch % 2, ch % 2], [1, 1], True, out=p_out,
                                                   indices=p_idx)
        return p_out
    groups[f"stem max-pool, {ys.shape[0]} x 64 x {ch} x {ch} channels_last"] = {
        "max_pool2d_with_indices into buffers": pool_indices,
        "separable maxima into buffers (lowps)": lambda: separable_max_pool(ys, p_out2, p_scratch),
    }
    for name, (cin, cout, hw) in {"stage 3 (8x8 -> 4x4)": (128, 256, 8), "stage 4 (4x4 -> 2x2)": (256, 512, 4)}.items():
        xs = torch.randn(n, cin, hw, hw, generator=g)
        ws = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        xsc, wsc = xs.contiguous(memory_format=CL), ws.contiguous(memory_format=CL)
        groups[f"{name} conv 3x3/2, {n} images"] = {
            "channels_last": (lambda xx, ww: lambda: F.conv2d(xx, ww, None, 2, 1))(xsc, wsc),
            "NCHW": (lambda xx, ww: lambda: F.conv2d(xx, ww, None, 2, 1))(xs, ws),
        }
        gs = torch.randn(n, cout, hw // 2, hw // 2, generator=g)
        gsc = gs.contiguous(memory_format=CL)

        def bwd(gg: torch.Tensor, xx: torch.Tensor, ww: torch.Tensor) -> Callable[[], torch.Tensor]:
            return lambda: torch.ops.aten.convolution_backward(gg, xx, ww, None, [2, 2], [1, 1], [1, 1], False,
                                                               [0, 0], 1, [True, False, False])[0]
        groups[f"{name} input gradient, {n} images"] = {
            "oneDNN backward-data, channels_last": bwd(gsc, xsc, wsc),
            "oneDNN backward-data, NCHW": bwd(gs, xs, ws),
            "matrix product + 9 strided adds": (lambda gg, ww, sz: lambda: _gemm_input_grad(gg, ww, sz, 2, 1))(
                gsc, ws, (hw, hw)),
        }
    c1 = s // 4  # stage 1's map: after the stride-2 stem conv and the stride-2 pool
    act = torch.randn(n, 64, c1, c1, generator=g).contiguous(memory_format=CL)
    g_nchw = torch.randn(n, 64, c1, c1, generator=g)
    g_cl = g_nchw.contiguous(memory_format=CL)
    mask = torch.ops.aten.threshold_backward
    groups[f"stage 1 ReLU mask on the loss path, {n} x 64 x {c1} x {c1} channels_last activation"] = {
        "gradient NCHW (mixed layouts)": lambda: mask(g_nchw, act, 0),
        "gradient channels_last": lambda: mask(g_cl, act, 0),
        "NCHW gradient converted, then masked": lambda: mask(g_nchw.contiguous(memory_format=CL), act, 0),
    }
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {a.rounds} interleaved rounds")
    with torch.no_grad():
        _time(groups, a.rounds)


if __name__ == "__main__":
    main()
