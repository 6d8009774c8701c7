"""Which kind of call is running: one place for the checks that decide between lowps's fast paths
(out= ops, chunk loops, custom autograd Functions, channels_last) and plain ops."""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as _fwad
from torch.utils._python_dispatch import _get_current_dispatch_mode


def graph_mode() -> bool:
    """Tracing or compiling (torch.export, torch.compile, torch.jit.trace, ONNX): one graph of plain ops,
    free of batch-size-dependent Python (chunk loops, sub-batches), so the graph is right for any batch."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing())


def forward_ad_active() -> bool:
    """Inside a ``torch.autograd.forward_ad.dual_level()``: dual tensors may flow, so only ops with
    forward-mode derivatives may run (no out= ops, no custom autograd Functions without a jvp)."""
    return _fwad._current_level >= 0


def functorch_active() -> bool:
    """Inside a torch.func transform (vmap, grad, jvp, jacfwd, ...): no out= ops, no custom Functions
    without their rules, no channels_last for batched tensors, no ``.item()`` on wrapped values."""
    return bool(torch._C._are_functorch_transforms_active())


def plain_ops_only() -> bool:
    """Where lowps's custom autograd Functions must not run: torch.func transforms and forward-mode AD
    (neither has their derivatives), tracing and compiling (one graph of plain ops)."""
    return functorch_active() or forward_ad_active() or graph_mode()


def dispatch_mode_active() -> bool:
    """Inside a Python dispatch mode (``torch.utils.flop_counter.FlopCounterMode``, fake-tensor and
    debug modes): such modes count or model the standard aten ops, so lowps's oneDNN-specific ops
    (prepacked convs) must not run there."""
    return _get_current_dispatch_mode() is not None


def batched_tensor(t: torch.Tensor) -> bool:
    """A tensor of a vmap over a backward (``torch.autograd.grad(..., is_grads_batched=True)``,
    ``torch.autograd.functional.jacobian(..., vectorize=True)``): only ops with batching rules apply,
    and its memory format cannot be queried."""
    f = torch._C._functorch
    return bool(f.is_batchedtensor(t) or f.is_legacy_batchedtensor(t) or f.is_functorch_wrapped_tensor(t))
