"""A merged single-conv block (`lowps.accel.fuse.ConvReLU`) as `FastConvReLU`: the same
``relu(conv(x))`` through faster CPU kernels.

* **Prepacked weights** (``packed``): CPU float32 convs run as one oneDNN conv + ReLU op on a copy
  of the weight kept in oneDNN's blocked layout (the op inductor's CPU freezing emits); ``F.conv2d``
  reorders the weight on every call (3.5 ms of an 87 ms 64x64/32 loss step on an AMD EPYC). The
  copy is remade when the weight or the input size changes; it is neither pickled nor deep-copied.
* **Small maps NCHW** (``small_map_nchw``): maps of at most ``small_map_pixels`` pixels convolved
  NCHW where oneDNN's channels_last kernels are slow on them (`lowps.accel.probe.small_map_nchw_pays`).
* **Loss path** (a tracked input, frozen weights): `LossConvReLU` keeps only the output (the ReLU's
  mask) and computes the input gradient by one matrix product for maps of at most
  ``gemm_grad_pixels`` (``loss_input_grad="gemm"``; "auto": `lowps.accel.probe.gemm_grad_pays`), or
  by oneDNN's backward-data kernel (the packed transposed conv where the weights are packed).

Values and input gradients equal `ConvReLU`'s up to float rounding (tests/accel/test_conv.py).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .._modes import batched_tensor, dispatch_mode_active, graph_mode, plain_ops_only
from . import probe
from .grad import gemm_input_grad, grad_in_forward_layout, is_fake, onednn_input_grad, transposed_conv_grad

__all__ = ["FastConvReLU", "LossConvReLU"]


class LossConvReLU(torch.autograd.Function):
    """``relu(conv2d(x, weight, bias))`` of a merged single-conv block for a tracked input with frozen
    weights. Forward: the block's prepacked oneDNN conv (``packed``, `FastConvReLU._packed_conv_relu`)
    or its plain conv. Input gradient: one matrix product (``gemm``, `gemm_input_grad`) or oneDNN's
    backward-data kernel, the one plain autograd runs. Keeps only the output (the ReLU's mask; a
    feature the head reads anyway), as autograd does. Double backward works: under ``create_graph``
    backward is made of differentiable ops of the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, block: FastConvReLU, gemm: bool, packed: bool) -> torch.Tensor:
        y = block._packed_conv_relu(x) if packed else block._conv(x).relu_()
        conv = block.conv
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
            return transposed_conv_grad(grad, weight, ctx.size, ctx.stride, ctx.padding), None, None, None
        if ctx.gemm:
            return gemm_input_grad(grad, weight, ctx.size, ctx.stride, ctx.padding), None, None, None
        fmt = torch.channels_last if grad.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        if ctx.block is not None and fmt == torch.channels_last:  # the packed transposed conv (same kernel)
            return ctx.block._packed_input_grad(grad, ctx.size), None, None, None
        return onednn_input_grad(grad, weight, ctx.size, ctx.stride, ctx.padding, fmt), None, None, None


class FastConvReLU(nn.Module):
    """``relu(conv(x))`` of a merged single-conv block through the fast paths in the module docstring.

    Args:
        conv: the merged conv (3x3, with bias).
        packed: run CPU float32 calls on a prepacked weight (`probe.packed_ops_work` permitting).
        small_map_nchw: True/False, or ``None``: `probe.small_map_nchw_pays`.
        loss_input_grad: ``"gemm"``, ``"autograd"`` or ``"auto"`` (`probe.gemm_grad_pays`).
    """

    def __init__(self, conv: nn.Conv2d, packed: bool = True, small_map_nchw: bool | None = None,
                 loss_input_grad: str = "auto", small_map_pixels: int = 64, gemm_grad_pixels: int = 16) -> None:
        super().__init__()
        if loss_input_grad not in ("auto", "gemm", "autograd"):
            raise ValueError(f"loss_input_grad={loss_input_grad!r}: choose 'auto', 'gemm' or 'autograd'")
        self.conv = conv
        self.packed_weights, self.small_map_nchw, self.loss_input_grad = packed, small_map_nchw, loss_input_grad
        self.small_map_pixels, self.gemm_grad_pixels = small_map_pixels, gemm_grad_pixels
        self._nchw_key: tuple | None = None
        self.register_buffer("_nchw_weight", torch.empty(0), persistent=False)
        # the weight in oneDNN's layouts, by use ("conv", "grad"): (key, packed tensor) (`_packed_weight`)
        self._packed: dict[str, tuple[tuple, torch.Tensor]] = {}
        self._refresh_nchw_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_in_forward_layout(self._forward(x))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        gemm, packed = self._gemm_grad_applies(x), self._packed_applies(x)
        if gemm or (packed and torch.is_grad_enabled() and x.requires_grad):
            return cast(torch.Tensor, LossConvReLU.apply(x, self, gemm, packed))
        if packed:
            return self._packed_conv_relu(x)
        return self._conv(x).relu_()

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """The merged block's conv (no ReLU): NCHW for small maps on CPUs where that is faster."""
        if self._small_map_nchw(x):
            return self._conv_small_map(x)
        return self.conv(x)

    def _gemm_grad_applies(self, x: torch.Tensor) -> bool:
        mode = self.loss_input_grad
        if mode not in ("auto", "gemm", "autograd"):
            raise ValueError(f"loss_input_grad={mode!r}: choose 'auto', 'gemm' or 'autograd'")
        conv = self.conv
        if mode == "autograd" or not (torch.is_grad_enabled() and x.requires_grad) or x.device.type != "cpu" \
                or x.shape[-2] * x.shape[-1] > self.gemm_grad_pixels or x.shape[0] == 0:
            return False
        if mode == "auto" and not probe.gemm_grad_pays():
            return False
        return (_frozen_square_conv(conv) and x.dtype in (torch.float32, torch.float64)
                and conv.weight.dtype == x.dtype and not torch.is_autocast_enabled(x.device.type)
                and not plain_ops_only() and not is_fake(conv.weight))

    def _small_map_nchw(self, x: torch.Tensor, packed_eligible: bool | None = None) -> bool:
        """Whether this call's conv runs NCHW (``packed_eligible``: `_packed_eligible(x)`, if known)."""
        if not (x.device.type == "cpu" and x.shape[-2] * x.shape[-1] <= self.small_map_pixels
                and not self.conv.weight.requires_grad):
            return False
        if self.small_map_nchw is not None:
            return self.small_map_nchw
        return probe.small_map_nchw_pays(self._packed_eligible(x) if packed_eligible is None else packed_eligible)

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
        conv = self.conv
        if not self.packed_weights or x.device.type != "cpu" or x.dtype != torch.float32 \
                or conv.weight.dtype != torch.float32 or x.dim() != 4 or x.shape[0] == 0:
            return False
        if torch.is_grad_enabled() and (conv.weight.requires_grad
                                        or (conv.bias is not None and conv.bias.requires_grad)):
            return False
        return (not torch.is_autocast_enabled("cpu") and not plain_ops_only() and not dispatch_mode_active()
                and not is_fake(conv.weight)
                and not is_fake(x) and x.is_contiguous(memory_format=torch.channels_last)
                and probe.packed_ops_work())

    def _packed_conv_relu(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(conv(x))`` as ``torch.ops.mkldnn._convolution_pointwise`` (the op inductor's CPU
        freezing emits) with a prepacked weight: the weight is reordered into oneDNN's layout once per
        weight version and input size (the layout may depend on it), not on every call."""
        conv = self.conv
        packed = self._packed_weight("conv", (tuple(x.shape[-2:]),),
                                     lambda w: torch.ops.mkldnn._reorder_convolution_weight(
                                         w, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
                                         list(x.shape)))
        bias = None if conv.bias is None else conv.bias.detach()
        return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, list(conv.padding), list(conv.stride),
                                                       list(conv.dilation), conv.groups, "relu", [], "")

    def _packed_input_grad(self, grad: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The input gradient of ``conv`` at input ``size`` as oneDNN's transposed conv
        (``torch.ops.mkldnn._convolution_transpose_pointwise``) on a prepacked copy of the weight: the
        kernel backward-data runs, without reordering the weight on every call."""
        conv = self.conv
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
                hit = (key, pack(self.conv.weight.detach()))
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
        # non-persistent buffer made on construction and after every ``.to()``; it is remade
        # if the weight was edited in place (version) or replaced. Same math: equal to float rounding.
        tracing = graph_mode() or is_fake(self.conv.weight)
        if not tracing and self._nchw_key != self._weight_key():  # export/compile: use the buffer as it is
            self._refresh_nchw_weight()
        return F.conv2d(x.contiguous(), self._nchw_weight, self.conv.bias, self.conv.stride, self.conv.padding)

    def _weight_key(self) -> tuple:
        w = self.conv.weight
        version = -1 if w.is_inference() else w._version  # inference tensors carry no version counter
        return (w.data_ptr(), version, w.dtype, w.device, tuple(w.shape))

    def _refresh_nchw_weight(self) -> None:
        # Made outside inference mode and without autograd history, whatever mode the caller is in: an
        # inference tensor cached during a `torch.inference_mode()` call could never be used by a later
        # autograd call (it cannot be saved for backward), and a graph-carrying copy would leak graphs.
        with torch.inference_mode(False), torch.no_grad():
            self._nchw_weight = self.conv.weight.detach().clone(memory_format=torch.contiguous_format)
        self._nchw_key = self._weight_key()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FastConvReLU:
        # `.to(device/dtype/memory_format)`, `.cuda()`, `.half()` ...: keep the NCHW copy NCHW and current.
        out = super()._apply(fn, recurse)
        self._packed = {}
        self._refresh_nchw_weight()
        return out


def _frozen_square_conv(conv: nn.Conv2d) -> bool:
    """A conv `gemm_input_grad` handles: frozen weights and bias, one group, no dilation, the same
    kernel size, stride and padding along both axes."""
    return (not conv.weight.requires_grad and not (conv.bias is not None and conv.bias.requires_grad)
            and conv.groups == 1 and tuple(conv.dilation) == (1, 1) and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.stride[0] == conv.stride[1] and conv.padding[0] == conv.padding[1])
