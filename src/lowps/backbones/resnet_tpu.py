"""ResNets as in the TPU ResNet code used by Kumar et al. 2022 (ResNet-6, -10, -18, -50, -200).

They differ from torchvision/timm ResNets in three ways that matter for converted checkpoints and
for reproducing the paper:

* every stage's first block has a projection shortcut (conv1x1 + BN), stage 1 included;
* the stem max-pool uses TensorFlow "SAME" padding (0 before / 1 after for even sizes), not
  PyTorch's symmetric ``padding=1``;
* ResNet-6 is built from *single-conv* residual blocks: ``ReLU(BN(conv3x3(x)) + BN(conv1x1(x)))``.

The models are registered in timm's registry, so ``timm.create_model("resnet6")`` works once
``lowps`` is imported. ``forward_stages`` returns the outputs of the four reduction stages, which is
the feature contract `lowps.backbones` builds on.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from .._cpu import cpu_vendor, native_avx512
from .._modes import batched_tensor, dispatch_mode_active, graph_mode, plain_ops_only

__all__ = ["TPUResNet", "tf_same_max_pool", "tf_variance_scaling_"]

# TF batch-norm decay 0.9 == PyTorch momentum 0.1; eps as in the TPU code's BN (1e-5).
_BN_MOMENTUM = 0.1
_BN_EPS = 1e-5


def tf_same_max_pool(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """Max-pool 3x3/2 with TensorFlow "SAME" padding: extra padding goes after, padded cells never win.

    TF pads ``total = max((ceil(n/2) - 1) * 2 + 3 - n, 0)`` cells, ``total // 2`` before. For even
    ``n`` that is 0 before / 1 after, which PyTorch's ``ceil_mode`` gives with no padding; for odd
    ``n`` it is 1 / 1, PyTorch's symmetric ``padding=1``. Both ignore padded cells, as TF does.
    """
    if kernel != 3 or stride != 2:
        raise ValueError("tf_same_max_pool implements the stem's 3x3 stride-2 pool only")
    h, w = x.shape[-2:]
    if x.dtype in (torch.bfloat16, torch.float16) and not (torch.is_grad_enabled() and x.requires_grad) \
            and not plain_ops_only():  # out= ops: no autograd, dual tensors, vmap or graph
        return separable_max_pool(x)
    return F.max_pool2d(x, 3, 2, padding=_tf_same_padding(h, w), ceil_mode=True)


def _tf_same_padding(h: int, w: int) -> tuple[int, int]:
    """PyTorch padding (with ``ceil_mode=True``) of the 3x3/2 pool over an h x w map that gives TF "SAME"."""
    return h % 2, w % 2


def _max3s2_along(src: torch.Tensor, dim: int, dst: torch.Tensor) -> None:
    """``dst`` = the TF-SAME 3-wide, stride-2 running max of ``src`` along ``dim`` (elementwise maxima).

    Even length n: window k covers cells 2k, 2k + 1, 2k + 2 (the last window has no third cell).
    Odd n: 2k - 1, 2k, 2k + 1 (the first has no 2k - 1, the last no 2k + 1). Missing cells are TF's
    padding, which never wins a max, so they are simply left out."""
    def sel(t: torch.Tensor, part: slice) -> torch.Tensor:
        return t[(slice(None),) * dim + (part,)]
    k = dst.shape[dim]
    even, odd, head, tail = sel(src, slice(0, None, 2)), sel(src, slice(1, None, 2)), sel(dst, slice(0, k - 1)), \
        sel(dst, slice(1, None))
    if src.shape[dim] % 2 == 0:
        torch.maximum(even, odd, out=dst)
        if k > 1:
            torch.maximum(head, sel(src, slice(2, None, 2)), out=head)
    else:
        dst.copy_(even)
        if k > 1:
            torch.maximum(head, odd, out=head)
            torch.maximum(tail, odd, out=tail)


def separable_max_pool(x: torch.Tensor, out: torch.Tensor | None = None,
                       scratch: torch.Tensor | None = None) -> torch.Tensor:
    """`tf_same_max_pool`'s values (exactly: max is exact) as two passes of elementwise maxima, rows
    then columns, without autograd; into ``out`` (and through the row pass's ``scratch``) when given.

    The stem's pool at inference: it writes no int64 indices nobody reads, and on CPU it took 0.15-0.25 ms
    against ``max_pool2d_with_indices``'s 0.44-0.48 ms for one float32 channels_last sub-batch of a
    64x64 batch on an AMD EPYC (Zen 4; ``benchmarks/bench_kernels.py``, "stem max-pool"), and is
    several times faster for bf16/fp16, whose CPU max-pool kernel is slow."""
    *lead, h, w = x.shape  # (N, C, H, W) or unbatched (C, H, W), as max_pool2d
    ph, pw = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    fmt = torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format
    if scratch is None:
        scratch = torch.empty((*lead, ph, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    if out is None:
        out = torch.empty((*lead, ph, pw), dtype=x.dtype, device=x.device, memory_format=fmt)
    # rows first: in either layout a row is one contiguous run, so the first (larger) pass reads whole runs
    _max3s2_along(x, x.ndim - 2, scratch)
    _max3s2_along(scratch, x.ndim - 1, out)
    return out


# TF's truncated normal keeps |x| < 2 std; rescaling by this factor restores the intended std.
_TRUNC_STD = 0.87962566103423978


@torch.no_grad()
def tf_variance_scaling_(w: torch.Tensor, scale: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """TF's ``variance_scaling_initializer()`` (fan-in, truncated normal), in place.

    Samples a normal truncated at 2 std with ``std = sqrt(scale / fan_in) / 0.8796...`` so the
    truncated samples' std is ``sqrt(scale / fan_in)``, as TF does (Kumar et al. 2022 trained with
    the TPU ResNet code, which initialises every conv this way).
    """
    fan_in = w.shape[1] * w[0, 0].numel()
    std = (scale / fan_in) ** 0.5 / _TRUNC_STD
    return nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std, generator=generator)


def _polyphase_kernel(weight: torch.Tensor) -> torch.Tensor:
    """`_polyphase_input_grad`'s 4x1 kernel for a (C_out, C_in, 7, 7) stem weight: (16 C_in, C_out, 4, 1).

    Output channel (r, m, q, c) is input row parity r, column tap j = 2m + q and input channel c; tap t
    reads conv row Y' - 3 + t, i.e. kernel row 2(3 - t) + r (row 7 and column 7 are zeros)."""
    c_out, c_in = weight.shape[:2]
    rows = torch.tensor([[2 * (3 - t) + r for t in range(4)] for r in range(2)], device=weight.device)
    k = F.pad(weight, (0, 1, 0, 1))[:, :, rows]  # (C_out, C_in, r, t, j=8)
    k = k.unflatten(4, (4, 2))  # (C_out, C_in, r, t, m, q)
    return k.permute(2, 4, 5, 1, 0, 3).reshape(16 * c_in, c_out, 4, 1)


def _polyphase_input_grad(grad: torch.Tensor, kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Input gradient of ``conv2d(x, weight, stride=2, padding=3)`` (7x7 kernel, ``x`` of ``size``) as one
    stride-1 forward conv and four strided adds; ``kernel`` is `_polyphase_kernel(weight)` (built once
    per backward, not per sub-batch).

    The transposed stride-2 conv splits by input-row parity r into two 4-tap correlations down the
    rows; the 7 column taps (and the input channels) become output channels, so it is one 4x1 conv
    with 2 x 8 x C_in = 48 outputs (column tap 7 is zero). Its output holds, for each conv column X,
    the contributions to input columns 2X + j; with the taps ordered j = 2m + q, taps 2m and 2m + 1
    land side by side, so folding them back is four adds of (column pair, channel) runs. On an AVX2
    CPU this is ~1.5x faster than a 2-D polyphase form (a 4x4 conv with 12 outputs, which fill
    oneDNN's register blocks poorly) and ~2.4x faster than oneDNN's backward-data kernel for this
    3-channel layer (benchmarks/bench_kernels.py).
    """
    n, _, ho, wo = grad.shape
    c_in = kernel.shape[0] // 16
    h, w = size
    fmt = torch.channels_last if grad.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    # (N, 16 C_in, Ho + 3, Wo): row Y' of phase r is input row 2Y' + r
    y = F.conv2d(grad, kernel.contiguous(memory_format=fmt), padding=(3, 0))
    # (N, Y', r, X, m, (q, c)) -> padded input rows 2Y' + r, columns 2(X + m) + q
    src = y.permute(0, 2, 3, 1).unflatten(3, (2, 4, 2 * c_in)).permute(0, 1, 3, 2, 4, 5)
    dxp = torch.zeros((n, ho + 3, 2, wo + 3, 2 * c_in), dtype=grad.dtype, device=grad.device)
    for m in range(4):
        dxp[:, :, :, m:m + wo] += src[:, :, :, :, m]
    return dxp.view(n, 2 * ho + 6, 2 * wo + 6, c_in)[:, 3:h + 3, 3:w + 3].permute(0, 3, 1, 2)


def _width_im2col_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(x, weight, bias, stride=2, padding=3)`` for a 7x7 kernel, with the column taps unrolled.

    The 7 column taps of the C_in input channels become 7 x C_in channels of a 7x1 conv (stride 2 down
    the rows): the same sums in another order. With 3 input channels oneDNN's AVX2 kernels run this
    ~1.2x faster than the 7x7 conv itself (benchmarks/bench_kernels.py); the unrolled input is
    built in one copy, channels_last, and is 7/4 the size of the conv output.
    """
    c_out, c_in = weight.shape[:2]
    xp = F.pad(x, (3, 3))  # the columns' padding; the conv pads the rows
    n, _, h, wp = xp.shape
    wo = (wp - 7) // 2 + 1
    sn, sc, sh, sw = xp.stride()
    cols = xp.as_strided((n, h, wo, 7, c_in), (sn, sh, 2 * sw, sw, sc)).reshape(n, h, wo, 7 * c_in)
    w_cols = weight.permute(0, 3, 1, 2).reshape(c_out, 7 * c_in, 7, 1)  # in-channel = column tap * C_in + c
    return F.conv2d(cols.permute(0, 3, 1, 2), w_cols.contiguous(memory_format=torch.channels_last), bias, (2, 1),
                    (3, 0))


def _pool_sub_batches(conv: Callable[[int], torch.Tensor], n: int, step: int,
                      keep_indices: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The stem's TF-SAME 3x3/2 max-pool and ReLU of ``n`` images whose conv runs in sub-batches of ``step``
    (``conv(i)``: the conv output of the sub-batch starting at image ``i``), each pooled straight into its
    rows of one output instead of concatenating pooled parts (~15% of the pooling's time for 8 images
    at 256x256 on an AMD EPYC Zen 4). Returns the output and, with ``keep_indices`` (for a backward),
    the pool's indices of all ``n`` images; without, on CPU the pool is `separable_max_pool` through one
    sub-batch's scratch (no indices; any float dtype), elsewhere one max-pool kernel per sub-batch
    (fewer launches on a GPU) with one sub-batch's scratch indices.

    Only one sub-batch's conv output is alive at a time: the helper makes the first one itself (no
    caller's argument keeps it alive through the loop, which cost 4 MiB of peak at 64x64/32)."""
    y = conv(0)
    ch, cw = y.shape[-2:]
    fmt = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    shape = (n, y.shape[1], (ch - 1) // 2 + 1, (cw - 1) // 2 + 1)
    out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=fmt)
    separable = not keep_indices and y.device.type == "cpu"
    if separable:
        scratch = torch.empty((min(step, n), shape[1], shape[2], cw), dtype=y.dtype, device=y.device,
                              memory_format=fmt)
    else:
        idx = torch.empty((n if keep_indices else min(step, n), *shape[1:]), dtype=torch.int64, device=y.device,
                          memory_format=fmt)
        pad = list(_tf_same_padding(ch, cw))
    for i in range(0, n, step):
        if i:
            del y  # free the previous sub-batch's conv output before making the next
            y = conv(i)
        k = y.shape[0]
        if separable:
            separable_max_pool(y, out[i:i + k], scratch[:k])
        else:
            torch.ops.aten.max_pool2d_with_indices.out(y, [3, 3], [2, 2], pad, [1, 1], True, out=out[i:i + k],
                                                       indices=idx[i:i + k] if keep_indices else idx[:k])
        out[i:i + k].relu_()  # the stem's ReLU (after the pool: the same values), while the rows are in cache
    return out, (idx if keep_indices else None)


class _LossStem(torch.autograd.Function):
    """The fused stem (conv 7x7/2 with bias -> TF-SAME max-pool -> ReLU) for a tracked input with frozen
    weights: forward and backward run in sub-batches of images, and backward keeps only the pool's
    indices (not the conv output, the network's largest activation). Same values and gradients as
    autograd through the plain ops up to float rounding (tests/test_backbones.py)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, step: int,
                polyphase: bool, width_im2col: bool) -> torch.Tensor:
        n, h, w = x.shape[0], *x.shape[-2:]
        ch, cw = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # the conv's output, which the pool reads

        def conv(i: int) -> torch.Tensor:
            xi = x[i:i + step]
            return _width_im2col_conv(xi, weight, bias) if width_im2col else F.conv2d(xi, weight, bias, 2, 3)
        # Sub-batches pool straight into the output and the saved indices (no concatenation of 32 MiB
        # of pooled maps and 64 MiB of int64 indices per 256x256/32 batch).
        out, idx = _pool_sub_batches(conv, n, step, keep_indices=True)
        ctx.save_for_backward(out, idx, weight)
        ctx.conv_hw, ctx.size, ctx.step, ctx.polyphase = (ch, cw), (h, w), step, polyphase
        ctx.channels_last = x.is_contiguous(memory_format=torch.channels_last)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        out, idx, weight = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad, out, 0)  # the ReLU's mask, one pass (differentiable in grad)
        (h, w), (ch, cw) = ctx.size, ctx.conv_hw
        pad = list(_tf_same_padding(ch, cw))
        if batched_tensor(grad):  # a vmapped backward: the whole batch through ops with batching rules
            shell = torch.empty((out.shape[0], out.shape[1], ch, cw), dtype=out.dtype, device=out.device)
            gy = torch.ops.aten.max_pool2d_with_indices_backward(grad, shell, [3, 3], [2, 2], pad, [1, 1], True, idx)
            return _transposed_conv_grad(gy, weight, (h, w), 2, 3), None, None, None, None, None
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        kernel = _polyphase_kernel(weight).contiguous(memory_format=fmt) if ctx.polyphase else None
        # The input's gradient is written NCHW (PyTorch's default layout, and the layout of most callers'
        # images): the normalisation's backward keeps it, so autograd hands it to an NCHW leaf without
        # another layout copy of the whole batch. Under create_graph (double backward) the parts are
        # concatenated instead, a differentiable op.
        n = grad.shape[0]
        gx = None if torch.is_grad_enabled() else torch.empty((n, weight.shape[1], h, w), dtype=grad.dtype,
                                                              device=grad.device)
        parts = []
        for i in range(0, n, ctx.step):
            g = grad[i:i + ctx.step]
            # The pool's backward and the conv's read only these tensors' shapes and layouts: empty shells.
            shell = torch.empty((g.shape[0], g.shape[1], ch, cw), dtype=g.dtype, device=g.device, memory_format=fmt)
            gy = torch.ops.aten.max_pool2d_with_indices_backward(g, shell, [3, 3], [2, 2], pad, [1, 1], True,
                                                                 idx[i:i + ctx.step])
            if kernel is not None:
                part = _polyphase_input_grad(gy, kernel, (h, w))
            else:
                part = _onednn_input_grad(gy, weight, (h, w), 2, 3, fmt)
            if gx is None:
                parts.append(part)
            else:
                gx[i:i + ctx.step] = part
        if gx is None:
            gx = torch.cat(parts) if len(parts) > 1 else parts[0]
        return gx, None, None, None, None, None


def _onednn_input_grad(grad: torch.Tensor, weight: torch.Tensor, size: tuple[int, int], stride: int,
                       padding: int, fmt: torch.memory_format) -> torch.Tensor:
    """Input gradient of ``conv2d(x, weight, stride=stride, padding=padding)`` (``x`` of spatial ``size``)
    from oneDNN's backward-data kernel, the one autograd runs; that kernel reads only the input's shape
    and layout (``fmt``), so the input is an empty shell."""
    shell = torch.empty((grad.shape[0], weight.shape[1], *size), dtype=grad.dtype, device=grad.device,
                        memory_format=fmt)
    return torch.ops.aten.convolution_backward(grad, shell, weight, None, [stride] * 2, [padding] * 2, [1, 1],
                                               False, [0, 0], 1, [True, False, False])[0]


def _gemm_input_grad(grad: torch.Tensor, weight: torch.Tensor, size: tuple[int, int], stride: int,
                     padding: int) -> torch.Tensor:
    """Input gradient of ``conv2d(x, weight, stride=stride, padding=padding)`` (``x`` of spatial ``size``,
    square kernel, no groups or dilation) as one matrix product and k x k strided adds.

    The product ``grad (N Ho Wo, C_out) @ weight (C_out, k k C_in)`` gives every output position's
    contribution to the k x k input window it read; window tap (i, j) of position (a, b) lands on padded
    input pixel (s a + i, s b + j), so folding is one strided add per tap. Same multiply-adds as the
    forward conv. For ResNet-6's last conv at 64x64 input (4x4 -> 2x2, 512 channels) oneDNN's AVX-512
    backward-data kernel is ~2.1x slower than this (benchmarks/bench_kernels.py): on a map that small it
    is latency-bound, while one (128 x 512) @ (512 x 2304) product is not.
    """
    n, c_out, ho, wo = grad.shape
    c_in, k = weight.shape[1], weight.shape[-1]
    h, w = size
    cols = grad.permute(0, 2, 3, 1).reshape(n * ho * wo, c_out) @ weight.permute(0, 2, 3, 1).reshape(c_out, -1)
    cols = cols.view(n, ho, wo, k, k, c_in)
    hp, wp = max(stride * (ho - 1) + k, h + padding), max(stride * (wo - 1) + k, w + padding)
    dxp = grad.new_zeros((n, hp, wp, c_in))
    for i in range(k):
        for j in range(k):
            dxp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] += cols[:, :, :, i, j]
    return dxp[:, padding:padding + h, padding:padding + w].permute(0, 3, 1, 2)


class _LossConvReLU(torch.autograd.Function):
    """``relu(conv2d(x, weight, bias))`` of a merged single-conv block for a tracked input with frozen
    weights. Forward: the block's prepacked oneDNN conv (``packed``, `SingleConvBlock._packed_conv_relu`)
    or its plain conv. Input gradient: one matrix product (``gemm``, `_gemm_input_grad`) or oneDNN's
    backward-data kernel, the one plain autograd runs. Keeps only the output (the ReLU's mask; a
    feature the head reads anyway), as autograd does. Double backward works: under ``create_graph``
    backward is made of differentiable ops of the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, block: SingleConvBlock, gemm: bool, packed: bool) -> torch.Tensor:
        y = block._packed_conv_relu(x) if packed else block._conv(x).relu_()
        conv = block.conv1
        ctx.save_for_backward(y, conv.weight)
        ctx.size, ctx.stride, ctx.padding = tuple(x.shape[-2:]), int(conv.stride[0]), int(conv.padding[0])
        ctx.gemm, ctx.block = gemm, (block if packed else None)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y, weight = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad, y, 0)  # the ReLU's mask, one pass
        if batched_tensor(grad) or (not ctx.gemm and torch.is_grad_enabled()):
            # vmapped backward (batching rules) or double backward: a differentiable plain op
            return _transposed_conv_grad(grad, weight, ctx.size, ctx.stride, ctx.padding), None, None, None
        if ctx.gemm:
            return _gemm_input_grad(grad, weight, ctx.size, ctx.stride, ctx.padding), None, None, None
        fmt = torch.channels_last if grad.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        if ctx.block is not None and fmt == torch.channels_last:  # the packed transposed conv (same kernel)
            return ctx.block._packed_input_grad(grad, ctx.size), None, None, None
        return _onednn_input_grad(grad, weight, ctx.size, ctx.stride, ctx.padding, fmt), None, None, None


@functools.cache
def _packed_ops_work() -> bool:
    """Whether oneDNN's prepacked conv ops (private ops of PyTorch's CPU build, used by inductor's
    freezing) exist in this PyTorch and give the plain convs' values: checked once on a tiny conv, so a
    build without them, or a release that changed them, takes the plain convs instead of failing."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        mk = torch.ops.mkldnn
        with torch.inference_mode(False), torch.no_grad():
            gen = torch.Generator().manual_seed(0)  # not the global RNG
            x = torch.rand(2, 8, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
            w = torch.randn(16, 8, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
            b = torch.randn(16, generator=gen)
            pw = mk._reorder_convolution_weight(w, [1, 1], [2, 2], [1, 1], 1, list(x.shape))
            y = mk._convolution_pointwise(x, pw, b, [1, 1], [2, 2], [1, 1], 1, "relu", [], "")
            g = torch.randn(y.shape, generator=gen).contiguous(memory_format=torch.channels_last)
            pt = mk._reorder_convolution_transpose_weight(w, [1, 1], [0, 0], [2, 2], [1, 1], 1, list(g.shape))
            gx = mk._convolution_transpose_pointwise(g, pt, None, [1, 1], [0, 0], [2, 2], [1, 1], 1, "none", [], "")
            return bool(torch.allclose(y, F.conv2d(x, w, b, 2, 1).relu(), rtol=1e-4, atol=1e-5)
                        and torch.allclose(gx, F.conv_transpose2d(g, w, None, 2, 1), rtol=1e-4, atol=1e-5))
    except (RuntimeError, TypeError, AttributeError, NotImplementedError):
        return False


def _gemm_grad_pays() -> bool:
    """Where ``loss_input_grad="auto"`` takes `_gemm_input_grad`: Intel CPUs with AVX-512. For ResNet-6's
    4x4 -> 2x2 conv oneDNN's backward-data kernel took 4.7 ms against the product's 2.2 on an Intel Xeon
    (AVX-512, no AMX); on an AMD EPYC with AVX-512 (Zen 5) it took 2.3-2.5 ms against 2.6 (MKL's matrix
    product runs below oneDNN's convolutions there), and on AVX2 CPUs the step was no faster
    (benchmarks/bench_kernels.py, docs/performance.md)."""
    return native_avx512() and cpu_vendor() == "GenuineIntel"


def _channels_last_grad(g: torch.Tensor) -> torch.Tensor | None:
    # a vmapped backward (is_grads_batched) has no memory formats: leave its gradient as it is
    return None if batched_tensor(g) else g.contiguous(memory_format=torch.channels_last)


def _grad_in_forward_layout(t: torch.Tensor) -> torch.Tensor:
    """``t``, whose gradient will arrive channels_last if ``t`` is (a hook on the summed gradient).

    A stage output's gradient is the sum of the head's (an expanded or NCHW tensor) and the next
    stage's input gradient (NCHW where that stage runs NCHW, `SingleConvBlock.small_map_nchw`), so
    without this it reaches the ReLU mask and the conv's backward in NCHW while the saved activation is
    channels_last. Mixed layouts take PyTorch's slow strided elementwise loops: the ReLU mask of
    32 x 64 x 16 x 16 took 1.30 ms mixed against 0.05 ms matched on an AMD EPYC (AVX-512), and 0.18 ms
    with the conversion (benchmarks/bench_kernels.py). Values are unchanged (a layout copy)."""
    # plain_ops_only() covers torch.func, whose batched tensors have no memory formats to query
    if t.requires_grad and torch.is_grad_enabled() and not plain_ops_only() \
            and t.dim() == 4 and t.shape[1] > 1 and not t.is_contiguous() \
            and t.is_contiguous(memory_format=torch.channels_last):
        t.register_hook(_channels_last_grad)
    return t


def _transposed_conv_grad(grad: torch.Tensor, weight: torch.Tensor, size: tuple[int, int], stride: int,
                          padding: int) -> torch.Tensor:
    """The input gradient of a square conv as ``conv_transpose2d``: plain ops with batching rules, for
    vmapped backwards (`lowps._modes.batched_tensor`)."""
    k = weight.shape[-1]
    extra = [size[i] + 2 * padding - k - (grad.shape[2 + i] - 1) * stride for i in range(2)]
    return F.conv_transpose2d(grad, weight, None, stride, padding, output_padding=tuple(extra))


def _is_fake(t: torch.Tensor) -> bool:
    """A tensor without storage (FakeTensor/FunctionalTensor under torch.export): no data pointer to key on."""
    try:
        t.data_ptr()
        return False
    except RuntimeError:
        return True


def _bn(channels: int, zero_init: bool = False) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
    if zero_init:  # TPU code: last BN of each residual branch starts at gamma = 0
        nn.init.zeros_(bn.weight)
    return bn


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    # TF "fixed padding" for stride > 1 and "SAME" for stride 1 both equal symmetric (k-1)//2 for odd k.
    return nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=False)


class _Projection(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(_conv(cin, cout, 1, stride), _bn(cout))


class SingleConvBlock(nn.Module):
    """ResNet-6's block: one 3x3 conv on the main path, a projection on the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, project: bool) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride)
        self.bn1 = _bn(cout, zero_init=True)
        self.shortcut: nn.Module | None = _Projection(cin, cout, stride) if project else nn.Identity()
        self._nchw_key: tuple | None = None
        # the weight in oneDNN's layouts, by use ("conv", "grad"): (key, packed tensor) (`_packed_weight`)
        self._packed: dict[str, tuple[tuple, torch.Tensor]] = {}

    #: Maps of at most this many pixels take the NCHW path on CPU (see ``_conv_small_map``) ...
    small_map_pixels: int = 64
    #: ... if ``small_map_nchw`` says so: True/False, or ``None`` (default): on AVX-512 CPUs, except on
    #: AMD ones where the prepacked channels_last conv applies (`_packed_eligible`). On an AMD EPYC
    #: (Zen 4) that was faster in every case measured: the 64x64 loss step 1.06x at batch 32 and 1.17x
    #: at batch 8, one-pair inference 1.21x, and no per-call reorder of the NCHW weights (peak memory of
    #: a 64x64/8 loss step 7.5 vs 9.2 MiB; docs/performance.md). The NCHW rule was measured on an Intel
    #: Xeon against plain channels_last convs, before the packed weights existed; it stays there until
    #: `benchmarks/bench_variants.py` (its last rows) says otherwise on such a CPU.
    small_map_nchw: bool | None = None

    #: On the loss path (a tracked input, frozen weights, CPU), merged blocks whose input map has at most
    #: this many pixels compute their input gradient as one matrix product (`_gemm_input_grad`) ...
    gemm_grad_pixels: int = 16
    #: ... if ``loss_input_grad`` says so: ``"gemm"``, ``"autograd"`` (oneDNN's backward-data kernel
    #: through plain autograd) or ``"auto"``: gemm on Intel CPUs with AVX-512, where oneDNN's kernel is
    #: ~2.1x slower on ResNet-6's 4x4 -> 2x2 conv; autograd elsewhere (`_gemm_grad_pays`: slower on an
    #: AMD EPYC with AVX-512, no faster in the step on AVX2). Same gradients up to float rounding
    #: (tests/test_backbones.py).
    loss_input_grad: str = "auto"

    #: CPU float32 merged blocks run their conv + ReLU as one oneDNN op on a copy of the weight kept in
    #: oneDNN's blocked layout (`_packed_conv_relu`); ``False`` runs ``F.conv2d``, which reorders the
    #: weight into that layout on every call: 3.5 ms of an 87 ms loss step at 64x64/32 for ResNet-6
    #: on an AMD EPYC (AVX2), and ~6 MiB of transient buffers (docs/performance.md). Same kernel, same
    #: values. The copy (as large as the block's weight; a second one for the loss path's input
    #: gradient, `_packed_input_grad`) is remade when the weight or the input size changes.
    packed_weights: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:  # merged into conv1 (merge_shortcut)
            gemm, packed = self._gemm_grad_applies(x), self._packed_applies(x)
            if gemm or (packed and torch.is_grad_enabled() and x.requires_grad):
                return cast(torch.Tensor, _LossConvReLU.apply(x, self, gemm, packed))
            if packed:
                return self._packed_conv_relu(x)
            return self._conv(x).relu_()
        y = self.bn1(self.conv1(x))
        return y.add_(self.shortcut(x)).relu_()  # in place: neither op's backward needs this buffer

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """The merged block's conv (no ReLU): NCHW for small maps on CPUs where that is faster."""
        if self._small_map_nchw(x):
            return self._conv_small_map(x)
        return self.conv1(x)

    def _gemm_grad_applies(self, x: torch.Tensor) -> bool:
        mode = self.loss_input_grad
        if mode not in ("auto", "gemm", "autograd"):
            raise ValueError(f"loss_input_grad={mode!r}: choose 'auto', 'gemm' or 'autograd'")
        conv = self.conv1
        if mode == "autograd" or not (torch.is_grad_enabled() and x.requires_grad) or x.device.type != "cpu" \
                or x.shape[-2] * x.shape[-1] > self.gemm_grad_pixels or x.shape[0] == 0:
            return False
        if mode == "auto" and not _gemm_grad_pays():
            return False
        return (not conv.weight.requires_grad and not (conv.bias is not None and conv.bias.requires_grad)
                and x.dtype in (torch.float32, torch.float64) and conv.weight.dtype == x.dtype
                and conv.groups == 1 and tuple(conv.dilation) == (1, 1)
                and conv.kernel_size[0] == conv.kernel_size[1] and conv.stride[0] == conv.stride[1]
                and conv.padding[0] == conv.padding[1]
                and not torch.is_autocast_enabled(x.device.type)
                and not plain_ops_only() and not _is_fake(conv.weight))

    def _small_map_nchw(self, x: torch.Tensor, packed_eligible: bool | None = None) -> bool:
        """Whether this call's conv runs NCHW (``packed_eligible``: `_packed_eligible(x)`, if known)."""
        if not (x.device.type == "cpu" and x.shape[-2] * x.shape[-1] <= self.small_map_pixels
                and not self.conv1.weight.requires_grad):
            return False
        if self.small_map_nchw is not None:
            return self.small_map_nchw
        if not native_avx512() or cpu_vendor() != "AuthenticAMD":
            return native_avx512()
        return not (self._packed_eligible(x) if packed_eligible is None else packed_eligible)

    def _packed_applies(self, x: torch.Tensor) -> bool:
        """Whether this call takes `_packed_conv_relu`: `_packed_eligible`, and not a small map that
        runs NCHW (`_small_map_nchw`)."""
        eligible = self._packed_eligible(x)
        return eligible and not self._small_map_nchw(x, eligible)

    def _packed_eligible(self, x: torch.Tensor) -> bool:
        """Whether the prepacked conv can run this call: a merged block on CPU in float32, input
        channels_last (where the plain conv would run channels_last too), weights not trained by this
        call, no autocast, no transform, tracing or fake tensors (one graph of plain ops there), and no
        dispatch mode (a FlopCounterMode would not count the oneDNN op)."""
        if self.shortcut is not None:
            return False
        conv = self.conv1
        if not self.packed_weights or x.device.type != "cpu" or x.dtype != torch.float32 \
                or conv.weight.dtype != torch.float32 or x.dim() != 4 or x.shape[0] == 0:
            return False
        if torch.is_grad_enabled() and (conv.weight.requires_grad
                                        or (conv.bias is not None and conv.bias.requires_grad)):
            return False
        return (not torch.is_autocast_enabled("cpu") and not plain_ops_only() and not dispatch_mode_active()
                and not _is_fake(conv.weight)
                and not _is_fake(x) and x.is_contiguous(memory_format=torch.channels_last)
                and _packed_ops_work())

    def _packed_conv_relu(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(conv1(x))`` as ``torch.ops.mkldnn._convolution_pointwise`` (the op inductor's CPU
        freezing emits) with a prepacked weight: the weight is reordered into oneDNN's layout once per
        weight version and input size (the layout may depend on it), not on every call."""
        conv = self.conv1
        packed = self._packed_weight("conv", (tuple(x.shape[-2:]),),
                                     lambda w: torch.ops.mkldnn._reorder_convolution_weight(
                                         w, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
                                         list(x.shape)))
        bias = None if conv.bias is None else conv.bias.detach()
        return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, list(conv.padding), list(conv.stride),
                                                       list(conv.dilation), conv.groups, "relu", [], "")

    def _packed_input_grad(self, grad: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The input gradient of ``conv1`` at input ``size`` as oneDNN's transposed conv
        (``torch.ops.mkldnn._convolution_transpose_pointwise``) on a prepacked copy of the weight: the
        kernel backward-data runs, without reordering the weight on every call."""
        conv = self.conv1
        k, stride, padding = conv.kernel_size, list(conv.stride), list(cast("tuple[int, int]", conv.padding))
        extra = [size[i] + 2 * padding[i] - k[i] - (grad.shape[2 + i] - 1) * stride[i] for i in range(2)]
        packed = self._packed_weight("grad", (tuple(size), tuple(grad.shape[-2:])),
                                     lambda w: torch.ops.mkldnn._reorder_convolution_transpose_weight(
                                         w, padding, extra, stride, list(conv.dilation), conv.groups, list(grad.shape)))
        return torch.ops.mkldnn._convolution_transpose_pointwise(grad, packed, None, padding, extra, stride,
                                                                 list(conv.dilation), conv.groups, "none", [], "")

    def _packed_weight(self, use: str, shapes: tuple, pack: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``pack(weight)``, kept per ``use`` and remade when the weight (version, storage) or the
        ``shapes`` it was packed for change."""
        key = (*self._weight_key(), *shapes)
        hit = self._packed.get(use)
        if hit is None or hit[0] != key:
            # outside inference mode and without history (see `_refresh_nchw_weight`)
            with torch.inference_mode(False), torch.no_grad():
                hit = (key, pack(self.conv1.weight.detach()))
            self._packed[use] = hit
        return hit[1]

    def __getstate__(self) -> dict[str, Any]:
        # the packed copies are a cache of opaque oneDNN tensors: neither pickled nor deep-copied
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state.pop("_packed", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._packed = {}  # also for blocks pickled before the cache existed

    def _conv_small_map(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN's AVX-512 channels_last kernels (plain F.conv2d, weight reordered per call) are slow on
        # small maps: ResNet-6's last conv at 64x64 input (4x4 -> 2x2, 512 channels) runs ~1.8x faster in
        # NCHW, an 8x8 map ~1.1x (Intel Xeon). Its AVX2 kernels are the other way round (NCHW 1.3-1.6x
        # slower on an AMD EPYC), so AVX2 CPUs stay channels_last, and so do AMD AVX-512 CPUs where the
        # prepacked conv runs (`small_map_nchw`; docs/performance.md). PyTorch picks
        # channels_last when the input *or* the weight is, so both go NCHW. The NCHW weight copy is a
        # non-persistent buffer made when the shortcut is merged and after every ``.to()``; it is remade
        # if the weight was edited in place (version) or replaced. Same math: equal to float rounding.
        tracing = graph_mode() or _is_fake(self.conv1.weight)
        if not tracing and self._nchw_key != self._weight_key():  # export/compile: use the buffer as it is
            self._refresh_nchw_weight()
        return F.conv2d(x.contiguous(), self._nchw_weight, self.conv1.bias, self.conv1.stride, self.conv1.padding)

    def _weight_key(self) -> tuple:
        w = self.conv1.weight
        version = -1 if w.is_inference() else w._version  # inference tensors carry no version counter
        return (w.data_ptr(), version, w.dtype, w.device, tuple(w.shape))

    def _refresh_nchw_weight(self) -> None:
        # Made outside inference mode and without autograd history, whatever mode the caller is in: an
        # inference tensor cached during a `torch.inference_mode()` call could never be used by a later
        # autograd call (it cannot be saved for backward), and a graph-carrying copy would leak graphs.
        with torch.inference_mode(False), torch.no_grad():
            self._nchw_weight = self.conv1.weight.detach().clone(memory_format=torch.contiguous_format)
        self._nchw_key = self._weight_key()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> SingleConvBlock:
        # `.to(device/dtype/memory_format)`, `.cuda()`, `.half()` ...: keep the NCHW copy NCHW and current.
        out = super()._apply(fn, recurse)
        self._packed = {}
        if self.shortcut is None:
            self._refresh_nchw_weight()
        return out

    @torch.no_grad()
    def merge_shortcut(self) -> None:
        """Fold the shortcut into the 3x3 conv, leaving one conv + ReLU (after BN folding; in place).

        Both paths are linear and read the same input with the same stride: a 1x1 conv with stride s
        and no padding samples exactly the centre tap of the 3x3 window (padding 1) at stride s, for
        every input size. So ``conv3x3(x) + conv1x1(x) == conv3x3'(x)`` with the 1x1 kernel added to
        the centre of the 3x3 one (an identity shortcut adds the identity there), as in RepVGG.
        """
        if self.shortcut is None:
            return
        if not isinstance(self.bn1, nn.Identity) or self.conv1.bias is None:
            raise RuntimeError("merge_shortcut() needs BatchNorm folded first (TPUResNet.fuse())")
        weight, bias = self.conv1.weight.clone(), self.conv1.bias.clone()
        if isinstance(self.shortcut, nn.Identity):
            weight[:, :, 1, 1] += torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
        else:
            proj, bn = cast(_Projection, self.shortcut)
            if not isinstance(bn, nn.Identity) or not isinstance(proj, nn.Conv2d) or proj.bias is None:
                raise RuntimeError("merge_shortcut() needs BatchNorm folded first (TPUResNet.fuse())")
            weight[:, :, 1, 1] += proj.weight[:, :, 0, 0]
            bias += proj.bias
        self.conv1.weight.copy_(weight)
        self.conv1.bias.copy_(bias)
        self.shortcut = None
        self.register_buffer("_nchw_weight", torch.empty(0), persistent=False)
        self._refresh_nchw_weight()


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, project: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, cout, 3, stride), _bn(cout)
        self.conv2, self.bn2 = _conv(cout, cout, 3), _bn(cout, zero_init=True)
        self.shortcut = _Projection(cin, cout, stride) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(y)).add_(self.shortcut(x)).relu_()


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, cout: int, stride: int, project: bool) -> None:
        super().__init__()
        mid = cout // self.expansion
        self.conv1, self.bn1 = _conv(cin, mid, 1), _bn(mid)
        self.conv2, self.bn2 = _conv(mid, mid, 3, stride), _bn(mid)  # stride on the 3x3, as in TPU code
        self.conv3, self.bn3 = _conv(mid, cout, 1), _bn(cout, zero_init=True)
        self.shortcut = _Projection(cin, cout, stride) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return self.bn3(self.conv3(y)).add_(self.shortcut(x)).relu_()


_BLOCKS = {"single": (SingleConvBlock, 1), "basic": (BasicBlock, 1), "bottleneck": (Bottleneck, 4)}


class TPUResNet(nn.Module):
    """A ResNet laid out like the TPU ResNet reference code (see module docstring).

    Args:
        layers: blocks per stage, e.g. ``(1, 1, 1, 1)``.
        block: ``"single"`` (ResNet-6), ``"basic"`` or ``"bottleneck"``.
        num_classes: classifier outputs; 0 for no classifier.
        init: ``"tpu"`` (default): as the TPU ResNet code the paper trained with, convs from TF's
            ``variance_scaling_initializer()`` (fan-in, scale 1, normal truncated at 2 std and rescaled
            so the samples' std is sqrt(1/fan_in): 0.082 for the 7x7x3 stem), the classifier from
            normal(std 0.01) with zero bias; ``"kaiming"``: Kaiming fan-out normal (lowps < 0.2).
        init_seed: seed of a local ``torch.Generator`` for the init (``None``: the global RNG), so
            seeded random networks never touch or depend on the global random stream.
        width: multiplier of every layer's channels (stem 64, stages 64-512 at 1.0); Kumar et al. sec. 6
            find ResNet-6's best perceptual score at 25% width (Fig. 6b).
    """

    widths = (64, 128, 256, 512)

    def __init__(self, layers: Sequence[int], block: str = "basic", num_classes: int = 1000,
                 in_chans: int = 3, init: str = "tpu", init_seed: int | None = None, width: float = 1.0) -> None:
        super().__init__()
        if not 0 < width <= 4:
            raise ValueError(f"width must be a channel multiplier in (0, 4], got {width}")
        widths = [max(1, round(c * width)) for c in self.widths]
        if block not in _BLOCKS:
            raise ValueError(f"unknown block {block!r}; expected one of {sorted(_BLOCKS)}")
        block_cls, expansion = _BLOCKS[block]
        self.conv1, self.bn1 = _conv(in_chans, widths[0], 7, 2), _bn(widths[0])
        stages, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            cout = w * expansion
            blocks = [block_cls(cin, cout, 1 if i == 0 else 2, project=True)]
            blocks += [block_cls(cout, cout, 1, project=False) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.num_features = cin
        self.stage_channels = [w * expansion for w in widths]
        self.stage_reductions = [4, 8, 16, 32]
        self.feature_info = [{"num_chs": c, "reduction": r, "module": f"stages.{i}"}
                             for i, (c, r) in enumerate(zip(self.stage_channels, self.stage_reductions))]
        self.num_classes = num_classes
        self.fc = nn.Linear(cin, num_classes) if num_classes else nn.Identity()
        if init not in ("tpu", "kaiming"):
            raise ValueError(f"unknown init {init!r}; choose 'tpu' (the TPU ResNet code's) or 'kaiming'")
        gen = torch.Generator().manual_seed(init_seed) if init_seed is not None else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if init == "tpu":
                    tf_variance_scaling_(m.weight, generator=gen)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
        if isinstance(self.fc, nn.Linear):
            nn.init.normal_(self.fc.weight, std=0.01, generator=gen)
            nn.init.zeros_(self.fc.bias)

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Names of every (conv, BN) pair, in the order the TPU code creates them."""
        pairs = [("conv1", "bn1")]
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(cast(nn.Sequential, stage)):
                p = f"stages.{i}.{j}."
                if block.shortcut is not None and not isinstance(block.shortcut, nn.Identity):
                    pairs.append((p + "shortcut.0", p + "shortcut.1"))
                n = {SingleConvBlock: 1, BasicBlock: 2, Bottleneck: 3}[type(block)]
                pairs += [(p + f"conv{k}", p + f"bn{k}") for k in range(1, n + 1)]
        return pairs

    @torch.no_grad()
    def fuse_bn(self) -> TPUResNet:
        """Fold every eval-mode BatchNorm into its conv (exact up to float rounding); in place."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        if self.training:
            raise RuntimeError("fuse_bn() needs eval mode: BatchNorm statistics must be frozen")
        for conv_name, bn_name in self.conv_bn_pairs():
            conv, bn = self.get_submodule(conv_name), self.get_submodule(bn_name)
            if isinstance(bn, nn.Identity):
                continue  # already fused
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d), (conv_name, bn_name)
            parent, _, leaf = conv_name.rpartition(".")
            setattr(self.get_submodule(parent) if parent else self, leaf, fuse_conv_bn_eval(conv, bn))
            parent, _, leaf = bn_name.rpartition(".")
            setattr(self.get_submodule(parent) if parent else self, leaf, nn.Identity())
        return self

    def fuse(self) -> TPUResNet:
        """Inference form: BatchNorm folded, and single-conv blocks reduced to one conv + ReLU; in place.

        Results equal the unfused network's up to float rounding (~1e-6 relative); for ResNet-6 it
        removes the four shortcut convs and residual adds (7% of the MACs at 64x64).
        """
        self.fuse_bn()
        for stage in self.stages:
            for block in cast(nn.Sequential, stage):
                if isinstance(block, SingleConvBlock):
                    block.merge_shortcut()
        return self

    #: Input pixels per stem call at inference. The stem's conv output is the largest activation
    #: (4x the next one), so it runs in sub-batches of images, or in bands of rows when one image
    #: alone is larger; results equal the whole call's up to float rounding.
    stem_chunk_pixels: int = 2 ** 16

    #: The stem's input gradient on the loss path (a tracked input, frozen weights; ``_LossStem``):
    #: ``"polyphase"`` (`_polyphase_input_grad`: one forward conv and four strided adds),
    #: ``"native"`` (that kernel, without keeping the conv output), ``"autograd"`` (plain autograd
    #: through the ops) or ``"auto"``: polyphase on CPUs (2.6x faster than oneDNN's kernel on an AVX-512
    #: Xeon, 2.4x on an AVX2 EPYC), autograd on GPUs (not measured there). Same gradients up to rounding;
    #: ``benchmarks/bench_variants.py --backward`` times them on your machine.
    stem_input_grad: str = "auto"
    #: How the fused stem's conv runs outside autograd and on the loss path: ``"direct"`` (the 7x7
    #: conv), ``"width_im2col"`` (`_width_im2col_conv`: column taps unrolled into channels, ~1.2x
    #: faster on AVX2 CPUs) or ``"auto"``: width_im2col on CPUs without AVX-512, direct elsewhere.
    stem_conv: str = "auto"

    def _fused_float_stem(self, x: torch.Tensor) -> bool:
        """The fused 7x7/2 stem (BatchNorm folded) with frozen float weights, eager, no autocast: where
        `_width_im2col_conv` and `_LossStem` compute exactly what the plain ops do."""
        conv = self.conv1
        return (isinstance(self.bn1, nn.Identity) and x.shape[0] > 0
                and not conv.weight.requires_grad and not (conv.bias is not None and conv.bias.requires_grad)
                and x.dtype in (torch.float32, torch.float64) and conv.weight.dtype == x.dtype
                and tuple(conv.kernel_size) == (7, 7) and tuple(conv.stride) == (2, 2)
                and tuple(conv.padding) == (3, 3) and conv.groups == 1
                and not torch.is_autocast_enabled(x.device.type)
                and not plain_ops_only())

    def _loss_stem_applies(self, x: torch.Tensor, fused: bool | None = None) -> bool:
        """A tracked input through the fused float stem (``fused``: `_fused_float_stem`, if known)."""
        return torch.is_grad_enabled() and x.requires_grad and (self._fused_float_stem(x) if fused is None else fused)

    def _modes(self, x: torch.Tensor) -> tuple[str, str]:
        """``stem_input_grad`` and ``stem_conv`` with "auto" resolved for ``x``'s device."""
        grad_mode, conv_mode = self.stem_input_grad, self.stem_conv
        if grad_mode not in ("auto", "polyphase", "native", "autograd"):
            raise ValueError(f"stem_input_grad={grad_mode!r}: choose 'auto', 'polyphase', 'native' or 'autograd'")
        if conv_mode not in ("auto", "direct", "width_im2col"):
            raise ValueError(f"stem_conv={conv_mode!r}: choose 'auto', 'direct' or 'width_im2col'")
        avx2 = x.device.type == "cpu" and not native_avx512()
        if grad_mode == "auto":
            grad_mode = "polyphase" if x.device.type == "cpu" else "autograd"
        if conv_mode == "auto":
            conv_mode = "width_im2col" if avx2 else "direct"
        return grad_mode, conv_mode

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        # relu(maxpool(.)) == maxpool(relu(.)) exactly (both monotone); pooling first is 4x less ReLU work.
        n, _, h, w = x.shape
        step = self.stem_chunk_pixels // (h * w)
        grad_mode, conv_mode = self._modes(x)
        fused = self._fused_float_stem(x)
        width = conv_mode == "width_im2col" and fused
        if grad_mode != "autograd" and self._loss_stem_applies(x, fused):
            return _LossStem.apply(x, self.conv1.weight, self.conv1.bias, max(1, step), grad_mode == "polyphase", width)
        if plain_ops_only() or torch.is_grad_enabled() or n == 0:
            return tf_same_max_pool(self.bn1(self.conv1(x))).relu_()

        def conv(v: torch.Tensor) -> torch.Tensor:
            return _width_im2col_conv(v, self.conv1.weight, self.conv1.bias) if width else self.bn1(self.conv1(v))
        if step >= 1:
            step = min(step, n)
            return _pool_sub_batches(lambda i: conv(x[i:i + step]), n, step)[0]
        rows = max(1, self.stem_chunk_pixels // (4 * w))  # pooled rows per band (4 input rows each)
        pooled_h = ((h - 1) // 2 + 2) // 2
        return torch.cat([torch.cat([self._stem_band(x[i:i + 1], k, min(k + rows, pooled_h))
                                     for k in range(0, pooled_h, rows)], dim=2) for i in range(n)]).relu_()

    def _stem_band(self, x: torch.Tensor, k0: int, k1: int) -> torch.Tensor:
        """Pooled stem rows ``[k0, k1)`` from only the input rows they depend on (inference only)."""
        h = x.shape[-2]
        conv_h = (h - 1) // 2 + 1  # conv 7x7/2, padding 3
        top = conv_h % 2  # the pool's TF "SAME" padding before (see tf_same_max_pool)
        # Pool row k reads conv rows 2k - top .. 2k - top + 2; conv row r reads input rows 2r-3 .. 2r+3.
        want0, want1 = 2 * k0 - top, 2 * (k1 - 1) - top + 2
        r0, r1 = max(0, want0), min(conv_h - 1, want1)
        i0, i1 = max(0, 2 * r0 - 3), min(h - 1, 2 * r1 + 3)
        band = x[:, :, i0:i1 + 1]
        pad_top, pad_bottom = i0 - (2 * r0 - 3), (2 * r1 + 3) - i1
        if pad_top or pad_bottom:  # the conv's zero padding, only where the band meets the border
            band = F.pad(band, (0, 0, pad_top, pad_bottom))
        fmt = torch.channels_last if not batched_tensor(x) and x.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        conv = self.conv1
        y = self.bn1(F.conv2d(band.contiguous(memory_format=fmt), conv.weight, conv.bias, conv.stride,
                              (0, int(conv.padding[1]))))
        if r0 != want0 or r1 != want1:  # the pool's padding: never wins a max
            y = F.pad(y, (0, 0, r0 - want0, want1 - r1), value=float("-inf"))
        return F.max_pool2d(y, 3, 2, padding=(0, y.shape[-1] % 2), ceil_mode=True)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the four reduction stages (after their final ReLU)."""
        return self.forward_intermediates(x, intermediates_only=True)  # type: ignore[return-value]

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: the outputs of the stages in ``indices`` (default: all four, after their
        final ReLU); with ``intermediates_only=False`` also the last stage's output."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r}: TPU ResNets give NCHW maps only")
        take, max_index = feature_take_indices(len(self.stages), _index_list(indices))
        x = _grad_in_forward_layout(self._stem(x))
        feats = []
        stages = self.stages if not stop_early and not intermediates_only else self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = _grad_in_forward_layout(stage(x))
            if i in take:
                feats.append(x)
        return feats if intermediates_only else (x, feats)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 4, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's API: drop stages after the last of ``indices`` (and the classifier); returns the indices."""
        take, max_index = feature_take_indices(len(self.stages), _index_list(indices))
        self.stages = self.stages[:max_index + 1]
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_stages(x)[-1])

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


# --- timm registry entries -------------------------------------------------------------------------
# timm.create_model("resnet6") works after `import lowps` (or `import timm` after it). Pretrained tags
# point at the checkpoints shipped inside the package (`file`), so
# timm.create_model("resnet6.tiny_s1250", pretrained=True) loads offline; features_only=True gives
# timm's FeatureGetterNet over forward_intermediates with feature_info, like timm's own models.

_FILES = Path(__file__).resolve().parents[1] / "weights" / "files"


def _index_list(indices: int | Sequence[int] | None) -> int | list[int] | None:
    return indices if indices is None or isinstance(indices, int) else list(indices)


def _cfg(file: str | None, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "url": "", "num_classes": 202 if file else 1000, "input_size": (3, 64, 64), "pool_size": (2, 2),
        "crop_pct": 1.0, "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225), "first_conv": "conv1", "classifier": "fc",
        "license": "cc-by-nc-4.0 (trained on Tiny ImageNet: ImageNet's non-commercial terms)" if file else None}
    if file:
        cfg["file"] = str(_FILES / file)
    cfg.update(kw)
    return cfg


default_cfgs = generate_default_cfgs({
    "resnet6.tiny_s1250": _cfg("resnet6_tiny_s1250.safetensors"),  # lowps's default (docs/models.md)
    "resnet6.tiny_s100": _cfg("resnet6_tiny_s100.safetensors"),
    "resnet6.tiny_s500": _cfg("resnet6_tiny_s500.safetensors"),
    "resnet6.tiny_s2500": _cfg("resnet6_tiny_s2500.safetensors"),
    "resnet6.tiny_s5910": _cfg("resnet6_tiny_s5910.safetensors"),
    "resnet10.tiny_s5910": _cfg("resnet10_tiny_s5910.safetensors"),
    "resnet18_tpu.tiny_s3940": _cfg("resnet18_tiny_s3940.safetensors"),
    "resnet6_w50.untrained": _cfg(None),
    "resnet6_w25.untrained": _cfg(None),
    "resnet50_tpu.untrained": _cfg(None),
    "resnet200_tpu.untrained": _cfg(None),
})


def _create(variant: str, layers: tuple[int, ...], block: str, pretrained: bool, **kwargs: Any) -> TPUResNet:
    return build_model_with_cfg(TPUResNet, variant, pretrained, layers=layers, block=block,
                                feature_cfg={"feature_cls": "getter", "out_indices": (0, 1, 2, 3)}, **kwargs)


@register_model
def resnet6(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-6 of Kumar et al. 2022: four single-conv residual blocks, 1,774,656 trunk parameters."""
    return _create("resnet6", (1, 1, 1, 1), "single", pretrained, **kwargs)


@register_model
def resnet6_w50(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-6 at half width (stem 32, stages 32-256 channels): the paper's width axis (sec. 6)."""
    return _create("resnet6_w50", (1, 1, 1, 1), "single", pretrained, width=0.5, **kwargs)


@register_model
def resnet6_w25(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-6 at quarter width (stem 16, stages 16-128), the paper's best width for ResNet-6 (Fig. 6b)."""
    return _create("resnet6_w25", (1, 1, 1, 1), "single", pretrained, width=0.25, **kwargs)


@register_model
def resnet10(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-10 (lowps's; in neither the paper nor the TPU code): basic blocks [1, 1, 1, 1], projection
    shortcut in every stage as the TPU code does for its first blocks."""
    return _create("resnet10", (1, 1, 1, 1), "basic", pretrained, **kwargs)


@register_model
def resnet18_tpu(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-18, TPU style (projection on every stage)."""
    return _create("resnet18_tpu", (2, 2, 2, 2), "basic", pretrained, **kwargs)


@register_model
def resnet50_tpu(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-50, TPU style (bottleneck, stride on the 3x3, projection on every stage)."""
    return _create("resnet50_tpu", (3, 4, 6, 3), "bottleneck", pretrained, **kwargs)


@register_model
def resnet200_tpu(pretrained: bool = False, **kwargs: Any) -> TPUResNet:
    """ResNet-200, TPU style."""
    return _create("resnet200_tpu", (3, 24, 36, 3), "bottleneck", pretrained, **kwargs)
