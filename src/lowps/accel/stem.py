"""The stem (conv 7x7/2 with BatchNorm folded -> ReLU -> TF-SAME max-pool 3x3/2) as one module,
`FastStem`, in place of ``conv1``/``bn1``/``act1``/``pool`` of a fused `TPUResNet`.

Inference: images in sub-batches of ``chunk_pixels`` input pixels (or bands of rows when one image
alone is larger), each pooled straight into its rows of the output, so only one sub-batch's conv
output (the network's largest activation) is alive at a time; the pool is `separable_max_pool`.
Loss path (a tracked input, frozen weights): `LossStem` keeps only the pool's indices for the
backward, not the conv output, and computes the input gradient by `polyphase_input_grad`. ReLU
after the pool equals ReLU before it (both monotone) on 4x fewer values. Values and gradients equal
the plain ops' up to float rounding (tests/accel/test_stem.py).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._modes import batched_tensor, plain_ops_only
from . import probe
from .grad import (
    grad_in_forward_layout,
    onednn_input_grad,
    polyphase_input_grad,
    polyphase_kernel,
    transposed_conv_grad,
)
from .pool import separable_max_pool, stem_max_pool
from .width_im2col import width_im2col_conv

__all__ = ["FastStem", "LossStem"]


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
        pad = [ch % 2, cw % 2]
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


class LossStem(torch.autograd.Function):
    """The fused stem (conv 7x7/2 with bias -> TF-SAME max-pool -> ReLU) for a tracked input with frozen
    weights: forward and backward run in sub-batches of images, and backward keeps only the pool's
    indices (not the conv output, the network's largest activation). Same values and gradients as
    autograd through the plain ops up to float rounding (tests/accel/test_stem.py)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, step: int,
                polyphase: bool, width_im2col: bool) -> torch.Tensor:
        n, h, w = x.shape[0], *x.shape[-2:]
        ch, cw = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # the conv's output, which the pool reads

        def conv(i: int) -> torch.Tensor:
            xi = x[i:i + step]
            return width_im2col_conv(xi, weight, bias) if width_im2col else F.conv2d(xi, weight, bias, 2, 3)
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
        pad = [ch % 2, cw % 2]
        if batched_tensor(grad):  # a vmapped backward: the whole batch through ops with batching rules
            shell = torch.empty((out.shape[0], out.shape[1], ch, cw), dtype=out.dtype, device=out.device)
            gy = torch.ops.aten.max_pool2d_with_indices_backward(grad, shell, [3, 3], [2, 2], pad, [1, 1], True, idx)
            return transposed_conv_grad(gy, weight, (h, w), 2, 3), None, None, None, None, None
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        kernel = polyphase_kernel(weight).contiguous(memory_format=fmt) if ctx.polyphase else None
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
                part = polyphase_input_grad(gy, kernel, (h, w))
            else:
                part = onednn_input_grad(gy, weight, (h, w), 2, 3, fmt)
            if gx is None:
                parts.append(part)
            else:
                gx[i:i + ctx.step] = part
        if gx is None:
            gx = torch.cat(parts) if len(parts) > 1 else parts[0]
        return gx, None, None, None, None, None


class FastStem(nn.Module):
    """conv 7x7/2 (bias: BatchNorm folded) -> ReLU -> TF-SAME max-pool 3x3/2, fast on CPU.

    Args:
        conv: the fused stem conv (7x7, stride 2, padding 3, with bias).
        chunk_pixels: input pixels per sub-batch at inference and on the loss path.
        conv_mode: ``"direct"``, ``"width_im2col"`` (`width_im2col_conv`) or ``"auto"``
            (`lowps.accel.probe.stem_conv_mode`).
        input_grad: the loss path's input gradient: ``"polyphase"``, ``"native"`` (oneDNN's kernel,
            without keeping the conv output), ``"autograd"`` (plain autograd through the ops) or
            ``"auto"`` (`lowps.accel.probe.stem_input_grad_mode`).
    """

    def __init__(self, conv: nn.Conv2d, chunk_pixels: int = 2 ** 16, conv_mode: str = "auto",
                 input_grad: str = "auto") -> None:
        super().__init__()
        if conv_mode not in ("auto", "direct", "width_im2col"):
            raise ValueError(f"conv_mode={conv_mode!r}: choose 'auto', 'direct' or 'width_im2col'")
        if input_grad not in ("auto", "polyphase", "native", "autograd"):
            raise ValueError(f"input_grad={input_grad!r}: choose 'auto', 'polyphase', 'native' or 'autograd'")
        if conv.bias is None or tuple(conv.kernel_size) != (7, 7) or tuple(conv.stride) != (2, 2) \
                or tuple(conv.padding) != (3, 3) or conv.groups != 1:
            raise ValueError("FastStem needs the fused 7x7/2 stem conv (padding 3, with bias: BatchNorm folded)")
        self.conv, self.chunk_pixels, self.conv_mode, self.input_grad = conv, chunk_pixels, conv_mode, input_grad

    def _float_frozen(self, x: torch.Tensor) -> bool:
        """Frozen float weights, eager, no autocast: where `width_im2col_conv` and `LossStem` compute
        exactly what the plain ops do."""
        conv = self.conv
        frozen = not conv.weight.requires_grad and not (conv.bias is not None and conv.bias.requires_grad)
        return (x.shape[0] > 0 and frozen
                and x.dtype in (torch.float32, torch.float64) and conv.weight.dtype == x.dtype
                and not torch.is_autocast_enabled(x.device.type) and not plain_ops_only())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_in_forward_layout(self._forward(x))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        step = self.chunk_pixels // (h * w)
        grad_mode = probe.stem_input_grad_mode(x.device) if self.input_grad == "auto" else self.input_grad
        conv_mode = probe.stem_conv_mode(x.device) if self.conv_mode == "auto" else self.conv_mode
        fast = self._float_frozen(x)
        width = conv_mode == "width_im2col" and fast
        if grad_mode != "autograd" and fast and torch.is_grad_enabled() and x.requires_grad:
            return LossStem.apply(x, self.conv.weight, self.conv.bias, max(1, step), grad_mode == "polyphase", width)
        if plain_ops_only() or torch.is_grad_enabled() or n == 0:
            return stem_max_pool(self.conv(x)).relu_()

        def conv(v: torch.Tensor) -> torch.Tensor:
            return width_im2col_conv(v, self.conv.weight, self.conv.bias) if width else self.conv(v)
        if step >= 1:
            step = min(step, n)
            return _pool_sub_batches(lambda i: conv(x[i:i + step]), n, step)[0]
        rows = max(1, self.chunk_pixels // (4 * w))  # pooled rows per band (4 input rows each)
        pooled_h = ((h - 1) // 2 + 2) // 2
        return torch.cat([torch.cat([self._band(x[i:i + 1], k, min(k + rows, pooled_h))
                                     for k in range(0, pooled_h, rows)], dim=2) for i in range(n)]).relu_()

    def _band(self, x: torch.Tensor, k0: int, k1: int) -> torch.Tensor:
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
        conv = self.conv
        y = F.conv2d(band.contiguous(memory_format=fmt), conv.weight, conv.bias, conv.stride, (0, int(conv.padding[1])))
        if r0 != want0 or r1 != want1:  # the pool's padding: never wins a max
            y = F.pad(y, (0, 0, r0 - want0, want1 - r1), value=float("-inf"))
        return F.max_pool2d(y, 3, 2, padding=(0, y.shape[-1] % 2), ceil_mode=True)
