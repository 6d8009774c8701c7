"""Input gradients of frozen convs on the loss path (an image optimised through the metric): one
matrix product for small maps (`gemm_input_grad`), a polyphase form of the stem's 7x7/2 conv
(`polyphase_input_grad`), oneDNN's own kernel on an empty input shell (`onednn_input_grad`), and
the plain differentiable form for vmapped or double backwards (`transposed_conv_grad`). Each gives
the conv's input gradient up to float rounding (tests/accel/)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._modes import batched_tensor, plain_ops_only

__all__ = ["polyphase_kernel", "polyphase_input_grad", "gemm_input_grad", "onednn_input_grad",
           "transposed_conv_grad", "grad_in_forward_layout", "is_fake"]


def polyphase_kernel(weight: torch.Tensor) -> torch.Tensor:
    """`polyphase_input_grad`'s 4x1 kernel for a (C_out, C_in, 7, 7) stem weight: (16 C_in, C_out, 4, 1).

    Output channel (r, m, q, c) is input row parity r, column tap j = 2m + q and input channel c; tap t
    reads conv row Y' - 3 + t, i.e. kernel row 2(3 - t) + r (row 7 and column 7 are zeros)."""
    c_out, c_in = weight.shape[:2]
    rows = torch.tensor([[2 * (3 - t) + r for t in range(4)] for r in range(2)], device=weight.device)
    k = F.pad(weight, (0, 1, 0, 1))[:, :, rows]  # (C_out, C_in, r, t, j=8)
    k = k.unflatten(4, (4, 2))  # (C_out, C_in, r, t, m, q)
    return k.permute(2, 4, 5, 1, 0, 3).reshape(16 * c_in, c_out, 4, 1)


def polyphase_input_grad(grad: torch.Tensor, kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Input gradient of ``conv2d(x, weight, stride=2, padding=3)`` (7x7 kernel, ``x`` of ``size``) as one
    stride-1 forward conv and four strided adds; ``kernel`` is `polyphase_kernel(weight)` (built once
    per backward, not per sub-batch).

    The transposed stride-2 conv splits by input-row parity r into two 4-tap correlations down the
    rows; the 7 column taps (and the input channels) become output channels, so it is one 4x1 conv
    with 2 x 8 x C_in = 48 outputs (column tap 7 is zero). Its output holds, for each conv column X,
    the contributions to input columns 2X + j; with the taps ordered j = 2m + q, taps 2m and 2m + 1
    land side by side, so folding them back is four adds of (column pair, channel) runs. On an AVX2
    CPU this is ~1.5x faster than a 2-D polyphase form (a 4x4 conv with 12 outputs, which fill
    oneDNN's register blocks poorly) and ~2.4x faster than oneDNN's backward-data kernel for this
    3-channel layer (docs/performance.md).
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


def onednn_input_grad(grad: torch.Tensor, weight: torch.Tensor, size: tuple[int, int], stride: int,
                       padding: int, fmt: torch.memory_format) -> torch.Tensor:
    """Input gradient of ``conv2d(x, weight, stride=stride, padding=padding)`` (``x`` of spatial ``size``)
    from oneDNN's backward-data kernel, the one autograd runs; that kernel reads only the input's shape
    and layout (``fmt``), so the input is an empty shell."""
    shell = torch.empty((grad.shape[0], weight.shape[1], *size), dtype=grad.dtype, device=grad.device,
                        memory_format=fmt)
    return torch.ops.aten.convolution_backward(grad, shell, weight, None, [stride] * 2, [padding] * 2, [1, 1],
                                               False, [0, 0], 1, [True, False, False])[0]


def gemm_input_grad(grad: torch.Tensor, weight: torch.Tensor, size: tuple[int, int], stride: int,
                     padding: int) -> torch.Tensor:
    """Input gradient of ``conv2d(x, weight, stride=stride, padding=padding)`` (``x`` of spatial ``size``,
    square kernel, no groups or dilation) as one matrix product and k x k strided adds.

    The product ``grad (N Ho Wo, C_out) @ weight (C_out, k k C_in)`` gives every output position's
    contribution to the k x k input window it read; window tap (i, j) of position (a, b) lands on padded
    input pixel (s a + i, s b + j), so folding is one strided add per tap. Same multiply-adds as the
    forward conv. For ResNet-6's last conv at 64x64 input (4x4 -> 2x2, 512 channels) oneDNN's AVX-512
    backward-data kernel is ~2.1x slower than this (docs/performance.md): on a map that small it
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


def _channels_last_grad(g: torch.Tensor) -> torch.Tensor | None:
    # a vmapped backward (is_grads_batched) has no memory formats: leave its gradient as it is
    return None if batched_tensor(g) else g.contiguous(memory_format=torch.channels_last)


def grad_in_forward_layout(t: torch.Tensor) -> torch.Tensor:
    """``t``, whose gradient will arrive channels_last if ``t`` is (a hook on the summed gradient).

    A stage output's gradient is the sum of the head's (an expanded or NCHW tensor) and the next
    stage's input gradient (NCHW where that stage runs NCHW, `SingleConvBlock.small_map_nchw`), so
    without this it reaches the ReLU mask and the conv's backward in NCHW while the saved activation is
    channels_last. Mixed layouts take PyTorch's slow strided elementwise loops: the ReLU mask of
    32 x 64 x 16 x 16 took 1.30 ms mixed against 0.05 ms matched on an AMD EPYC (AVX-512), and 0.18 ms
    with the conversion (docs/performance.md). Values are unchanged (a layout copy)."""
    # plain_ops_only() covers torch.func, whose batched tensors have no memory formats to query
    if t.requires_grad and torch.is_grad_enabled() and not plain_ops_only() \
            and t.dim() == 4 and t.shape[1] > 1 and not t.is_contiguous() \
            and t.is_contiguous(memory_format=torch.channels_last):
        t.register_hook(_channels_last_grad)
    return t


def transposed_conv_grad(grad: torch.Tensor, weight: torch.Tensor, size: tuple[int, int], stride: int,
                          padding: int) -> torch.Tensor:
    """The input gradient of a square conv as ``conv_transpose2d``: plain ops with batching rules, for
    vmapped backwards (`lowps._modes.batched_tensor`)."""
    k = weight.shape[-1]
    extra = [size[i] + 2 * padding - k - (grad.shape[2 + i] - 1) * stride for i in range(2)]
    return F.conv_transpose2d(grad, weight, None, stride, padding, output_padding=tuple(extra))


def is_fake(t: torch.Tensor) -> bool:
    """A tensor without storage (FakeTensor/FunctionalTensor under torch.export): no data pointer to key on."""
    try:
        t.data_ptr()
        return False
    except RuntimeError:
        return True
