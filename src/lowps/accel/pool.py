"""The stem's TF-SAME 3x3/2 max-pool as two passes of elementwise maxima (`separable_max_pool`):
no int64 indices nobody reads at inference, and several times faster than PyTorch's CPU max-pool
kernel for bf16/fp16."""
from __future__ import annotations

import torch

from .._modes import plain_ops_only
from ..backbones.resnet_tpu import tf_same_max_pool

__all__ = ["separable_max_pool", "stem_max_pool"]


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
    64x64 batch on an AMD EPYC (Zen 4; docs/performance.md), and is
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


def stem_max_pool(x: torch.Tensor) -> torch.Tensor:
    """The stem pool (`lowps.backbones.resnet_tpu.tf_same_max_pool`): separable for bf16/fp16 without
    autograd, where PyTorch's CPU kernel is slow; PyTorch's kernel elsewhere."""
    if x.dtype in (torch.bfloat16, torch.float16) and not (torch.is_grad_enabled() and x.requires_grad) \
            and not plain_ops_only():  # out= ops: no autograd, dual tensors, vmap or graph
        return separable_max_pool(x)
    return tf_same_max_pool(x)
