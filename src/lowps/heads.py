"""Distance heads: how two lists of feature maps become a distance (Kumar et al. 2022, sec. 3).

Every head maps features ``f0[l], f1[l]`` of shape (N, C_l, H_l, W_l) to per-layer distances
(N, L); the metric sums over layers. With ``u(f)`` the unit-length normalisation across channels:

* ``local`` (LPIPS eq. 1): ``mean_hw || u(f0) - u(f1) ||^2``.
* ``linear`` (LPIPS with learned weights): ``mean_hw sum_c w_c (u(f0) - u(f1))_c^2``, ``w >= 0``.
* ``meanpool``: ``(1/C) || u(mean_hw f0) - u(mean_hw f1) ||^2`` (the paper's best, PS 70.2).
* ``structure`` (lowps's default since 0.4): ``(1/(2 C HW)) sum_c || z(f0)_c - z(f1)_c ||^2 + meanpool``, with
  ``z`` each channel's map standardised over its positions (mean 0, standard deviation 1). The first
  term is ``mean_c (1 - rho_c)``, ``rho_c`` the Pearson correlation of the two maps of channel c: SSIM's
  structure term (Wang et al. 2004) on deep features, as in DISTS (Ding et al. 2020). It is blind to
  each channel's mean and scale, so the ``meanpool`` distance is added (unweighted) for colour and
  brightness. Chosen on human judgements (docs/models.md).
* ``style``: ``(1/C^2) || G0 - G1 ||_F^2`` with ``G = U U^T / (H W)`` and ``U = u(f)`` flattened to
  C x HW. The paper (sec. 8.1) leaves the 1/(HW) open; lowps divides by default (``style_norm="hw"``,
  as Gatys et al.), so a Gram entry is a mean over positions and lies in [-1, 1], independent of image
  size. ``style_norm="none"`` drops the division: each layer's distance then grows with its (H W)^2,
  so the large early maps dominate (at 64x64, stage 1 carries 96-98% of the distance instead of
  44-76%) and about 1% of 2AFC decisions flip (docs/concepts.md).

Heads always compute in float32 or wider, also under autocast: the normalisation and squared
differences lose too much in bf16/fp16.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._modes import batched_tensor, functorch_active, plain_ops_only

__all__ = ["Head", "LocalHead", "LinearHead", "MeanPoolHead", "StructureHead", "StyleHead", "HEADS", "create_head",
           "spatial_mean", "unit_normalize"]

EPS = 1e-10


def unit_normalize(f: torch.Tensor, dim: int = 1, eps: float = EPS) -> torch.Tensor:
    """``f / (sqrt(sum f^2 + eps^2) + eps)`` along ``dim``.

    Equal to LPIPS's ``f / (sqrt(sum f^2) + eps)`` to within ~1e-10 relative, but with a finite
    gradient where all channels are zero (LPIPS's sqrt has an infinite slope there and gives NaN).
    """
    return f / _norm_denominator(f, dim, eps)


def _norm_denominator(f: torch.Tensor, dim: int = 1, eps: float = EPS) -> torch.Tensor:
    # unit_normalize's denominator (kept by `_LocalLayer` for its backward)
    return torch.sqrt(f.pow(2).sum(dim, keepdim=True) + eps * eps) + eps


def _channels_last_map(f: torch.Tensor) -> bool:
    """A channels_last (not also NCHW-contiguous) feature map outside torch.func, whose batched tensors
    have no memory format: the heads then reduce its (N, H, W, C) view, so gradients keep its layout."""
    return (f.dim() == 4 and not functorch_active() and not f.is_contiguous()
            and f.is_contiguous(memory_format=torch.channels_last))


def spatial_mean(f: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``f.mean((2, 3), keepdim=True)``, with its gradient in ``f``'s memory layout.

    Mean's backward expands the incoming gradient and divides it, which materialises an NCHW tensor.
    For a channels_last feature map that gradient is then added to the next stage's channels_last
    input gradient and converted back for the conv's backward: mixed-layout elementwise loops, ~30 ms
    of a 256x256/32 loss step on an AMD EPYC (Zen 4). Reducing the (N, H, W, C) view of a channels_last
    map gives the same values (the same reduction over the same memory) and a channels_last gradient.
    """
    if _channels_last_map(f):
        return f.permute(0, 2, 3, 1).mean((1, 2), dtype=dtype)[:, :, None, None]
    return f.mean((2, 3), keepdim=True, dtype=dtype)


def _wide(f: torch.Tensor) -> torch.Tensor:
    return f if f.dtype in (torch.float32, torch.float64) else f.float()


class Head(nn.Module):
    """Base class: ``forward(f0, f1, idx) -> (N, len(idx))`` per-layer distances."""

    name: str = ""
    has_map: bool = False

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.channels = list(channels)

    def layer(self, i: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compact(self, f: torch.Tensor) -> torch.Tensor:
        """What the head reads of a feature map (``embed`` keeps only this); identity by default."""
        return f

    def layer_map(self, i: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"the {self.name!r} distance has no spatial map; use 'structure', 'local' or "
                                  "'linear'")

    def embed_layer(self, i: int, f: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s features as one vector per image, (N, D_i), whose squared Euclidean distance
        is this head's layer distance: ``layer(i, a, b) == ||embed_layer(i, a) - embed_layer(i, b)||^2``.
        Every head is such a distance, which makes all-pairs distances matrix products."""
        raise NotImplementedError

    def embed(self, f: Sequence[torch.Tensor], idx: Sequence[int]) -> torch.Tensor:
        """The selected layers' vectors concatenated: (N, sum D_i), in float32 or wider."""
        with torch.autocast(f[idx[0]].device.type, enabled=False):
            return torch.cat([self.embed_layer(i, _wide(f[i])).flatten(1) for i in idx], dim=1)

    def factor_layer(self, i: int, f: torch.Tensor) -> torch.Tensor | None:
        """For all-pairs distances: a factor ``V`` (N, C, n) with layer distance
        ``||Va^T Va||^2 + ||Vb^T Vb||^2 - 2 ||Va^T Vb||^2`` where that costs fewer multiply-adds per pair
        (n^2 C) than `embed_layer`'s vector; ``None`` (the default): use `embed_layer`."""
        return None

    def embed_parts(self, f: Sequence[torch.Tensor], idx: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`embed` split for `lowps.pairwise`: the vectors of the layers without a factor (N, D), and
        the factors (`factor_layer`) of the others."""
        with torch.autocast(f[idx[0]].device.type, enabled=False):
            dense, factors = [], []
            for i in idx:
                v = self.factor_layer(i, _wide(f[i]))
                if v is None:
                    dense.append(self.embed_layer(i, _wide(f[i])).flatten(1))
                else:
                    factors.append(v)
            n = f[idx[0]].shape[0]
            d = torch.cat(dense, dim=1) if dense else f[idx[0]].new_zeros(n, 0, dtype=_wide(f[idx[0]]).dtype)
            return d, factors

    def forward(self, f0: Sequence[torch.Tensor], f1: Sequence[torch.Tensor],
                idx: Sequence[int]) -> torch.Tensor:
        with torch.autocast(f0[idx[0]].device.type, enabled=False):
            return torch.stack([self.layer(i, _wide(self.compact(f0[i])), _wide(self.compact(f1[i]))) for i in idx],
                               dim=1)

    def maps(self, f0: Sequence[torch.Tensor], f1: Sequence[torch.Tensor], idx: Sequence[int],
             size: tuple[int, int]) -> torch.Tensor:
        """Per-layer distance maps upsampled (bilinear) to ``size``: (N, len(idx), H, W)."""
        with torch.autocast(f0[idx[0]].device.type, enabled=False):
            out = [F.interpolate(self.layer_map(i, _wide(f0[i]), _wide(f1[i])), size=size, mode="bilinear",
                                 align_corners=False) for i in idx]
        return torch.cat(out, dim=1)


class _LocalLayer(torch.autograd.Function):
    """The local/linear layer distance for a loss (features with gradients, frozen weights).

    Same forward values as the heads' ``layer_map(...).mean`` (the same ops); backward in closed form. With
    ``D = sqrt(sum_c a^2 + eps^2) + eps`` and ``G = 2 w (u(a) - u(b)) g / (H W)``, the input gradient is
    ``G / D - a sum_c(G a) / (D^2 (D - eps))``: four passes over the map, against about ten through
    autograd's graph of the normalisation, whose every op saves or allocates a map (the local head's
    forward + backward took 29 ms for 32 pairs at 128x128 against the meanpool head's 5, on an AMD EPYC
    Zen 4). Backward is made of differentiable ops with batching rules: under create_graph (gradient
    penalties, Hessians) it recomputes ``D`` and ``u(a) - u(b)`` from the inputs so that second
    derivatives are exact, and vmapped backwards (``is_grads_batched``) work.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        den_a, den_b = _norm_denominator(a), _norm_denominator(b)
        diff = a / den_a - b / den_b
        sq = diff.pow(2)
        d = (sq.sum(1, keepdim=True) if w is None else F.conv2d(sq, w)).mean((1, 2, 3))
        # Only the side(s) with gradients are kept (a loss's target features are freed, as autograd
        # through the plain ops frees them), with their denominators and u(a) - u(b).
        need_a, need_b = ctx.needs_input_grad[:2]
        ctx.save_for_backward(a if need_a else None, b if need_b else None, w, den_a if need_a else None,
                              den_b if need_b else None, diff)
        ctx.hw = a.shape[2] * a.shape[3]
        return d

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b, w, den_a, den_b, diff = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():
            # create_graph (double backward): the saved D and u(a) - u(b) carry no graph, so recompute
            # them from the saved inputs, which do (a side without gradients is a constant, recovered
            # from the other side and the saved difference); the formula below is then differentiable.
            if not need_a:
                ua = diff + b.detach() / den_b  # the forward's values, constants
            if not need_b:
                ub = a.detach() / den_a - diff
            if need_a:
                den_a = _norm_denominator(a)
                ua = a / den_a
            if need_b:
                den_b = _norm_denominator(b)
                ub = b / den_b
            diff = ua - ub
        scale = g.reshape(-1, 1, 1, 1) * (2.0 / ctx.hw)
        gd = diff * scale if w is None else diff * (scale * w.reshape(1, -1, 1, 1))  # dL/du(a); dL/du(b) = -gd

        def through_norm(f: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
            dot = (gd * f).sum(1, keepdim=True)
            return torch.addcmul(gd / den, f, dot / (den * den * (den - EPS)), value=-1)
        return (through_norm(a, den_a) if need_a else None), (-through_norm(b, den_b) if need_b else None), None


def _fused_local_applies(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None) -> bool:
    """`_LocalLayer` for gradients to the features with frozen weights, in eager calls; inference and
    transforms (vmap, forward-mode AD, tracing) keep the plain ops."""
    return (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
            and not (w is not None and w.requires_grad) and not plain_ops_only())


class LocalHead(Head):
    name, has_map = "local", True

    def layer_map(self, i: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (unit_normalize(a) - unit_normalize(b)).pow(2).sum(1, keepdim=True)

    def layer(self, i: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if _fused_local_applies(a, b, None):
            return _LocalLayer.apply(a, b, None)
        return self.layer_map(i, a, b).mean((1, 2, 3))

    def embed_layer(self, i: int, f: torch.Tensor) -> torch.Tensor:
        # mean over H W positions of a squared difference == squared norm after scaling by 1/sqrt(HW)
        return unit_normalize(f).flatten(1) / (f.shape[2] * f.shape[3]) ** 0.5


class LinearHead(LocalHead):
    """LPIPS-style learned weights: one non-negative 1x1 conv (no bias) per layer, keys ``lin{l}.weight``."""

    name = "linear"
    #: Dropout probability before each 1x1 conv while training (LPIPS uses 0.5); inactive in eval mode.
    dropout: float = 0.0

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__(channels)
        for i, c in enumerate(self.channels):
            self.add_module(f"lin{i}", nn.Conv2d(c, 1, 1, bias=False))
            nn.init.ones_(getattr(self, f"lin{i}").weight)  # ones == the 'local' head

    def layer(self, i: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w = getattr(self, f"lin{i}").weight.to(a.dtype)
        if not (self.training and self.dropout > 0) and _fused_local_applies(a, b, w):
            return _LocalLayer.apply(a, b, w)
        return self.layer_map(i, a, b).mean((1, 2, 3))

    def layer_map(self, i: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w = getattr(self, f"lin{i}").weight
        diff = (unit_normalize(a) - unit_normalize(b)).pow(2)
        if self.training and self.dropout > 0:
            diff = F.dropout(diff, self.dropout, training=True)
        return F.conv2d(diff, w.to(a.dtype))

    def embed_layer(self, i: int, f: torch.Tensor) -> torch.Tensor:
        w = getattr(self, f"lin{i}").weight.reshape(1, -1, 1, 1).to(f.dtype)
        if bool((w < 0).any()):
            raise ValueError("embeddings need linear weights >= 0 (a weighted squared norm); clamp them")
        return (unit_normalize(f) * w.sqrt()).flatten(1) / (f.shape[2] * f.shape[3]) ** 0.5

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project the weights onto w >= 0 (done after every optimiser step, as in LPIPS)."""
        for i in range(len(self.channels)):
            getattr(self, f"lin{i}").weight.clamp_(min=0)

    def check(self) -> None:
        for i in range(len(self.channels)):
            w = getattr(self, f"lin{i}").weight
            if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
                raise ValueError(f"linear head weights lin{i} must be finite and >= 0; the file is not a "
                                 "valid linear head (train with lowps train linear, which clamps them)")


class MeanPoolHead(Head):
    name = "meanpool"

    def compact(self, f: torch.Tensor) -> torch.Tensor:
        # Spatial mean, accumulated in float32 for bf16/fp16 features without a widened copy.
        return spatial_mean(f, dtype=None if f.dtype in (torch.float32, torch.float64) else torch.float32)

    def layer(self, i: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ua, ub = unit_normalize(a.mean((2, 3))), unit_normalize(b.mean((2, 3)))
        return (ua - ub).pow(2).sum(1) / a.shape[1]

    def embed_layer(self, i: int, f: torch.Tensor) -> torch.Tensor:
        return unit_normalize(spatial_mean(f).flatten(1)) / f.shape[1] ** 0.5


def standardize_positions(f: torch.Tensor, eps: float = 1e-2, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` x each channel's map minus its spatial mean, over ``sqrt(variance + eps^2)`` (N, C, H, W),
    and the spatial means (N, C, 1, 1), from one pass over ``f`` for both statistics.

    ``eps`` (in feature units; the trunks' post-ReLU features are O(1)) keeps near-constant channels
    (dead ReLUs, flat images, 1x1 maps) at ~0 instead of amplifying their rounding noise, and keeps
    the gradient finite where a map is exactly constant."""
    # two passes (mean, then the centred second moment): no cancellation when a channel's mean is large
    # against its spread. (torch.var_mean was ~10x slower on these small maps on CPU, torch 2.14.)
    mean = spatial_mean(f)
    z = f - mean
    return z * (torch.rsqrt(spatial_mean(z * z) + eps * eps) * scale), mean


class _StructureLayer(torch.autograd.Function):
    """The structure term ``||z(a) - z(b)||^2`` and the spatial means, from per-channel statistics.

    With ``c = f - mean`` the centred maps, ``V`` = mean(c^2), ``Q`` = mean((ca - cb)^2) over positions and
    ``s = (V + eps^2)^(-1/2)``, the term is ``sum_c [sa sb Q + (sa - sb)(sa Va - sb Vb)] / (2C)``: the same
    number as `standardize_positions`'s maps give, written so that near-equal maps lose nothing to
    cancellation (``Q`` is read off the difference map). Its input gradient is ``(g / (C HW)) [Aa ca +
    sa sb (ca - cb)]``, ``Aa = sa (sa - sb) + sa^3 (sb P - sa Va)``, ``P = (Va + Vb - Q) / 2`` (and the mirror
    for ``b``): two passes over the map, where autograd through the standardisation makes ~15. The whole
    loss step is ~4% faster at 64x64 and 256x256 (batch 32, Intel Xeon with AVX-512 + AMX,
    `benchmarks/bench_accel.py --backward`), and the value is closer to float64 than the standardised
    maps' (tests/test_heads.py). The means are outputs (the texture term is plain autograd on them),
    their gradient folded into the same two passes. Under create_graph the backward recomputes the
    statistics from the inputs with differentiable ops, so second derivatives are exact; under a vmapped
    backward it uses out-of-place ops. torch.func, forward-mode AD and tracing use the plain ops.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
        ma, mb = spatial_mean(a), spatial_mean(b)
        ca, cb = a - ma, b - mb
        diff = ca - cb
        d, stats = _structure_term(ca, cb, diff, eps)
        # a side's input and centred map only where it has a gradient (a loss keeps two maps, not three);
        # the other side's centred map follows from the difference where create_graph needs it
        need_a, need_b = ctx.needs_input_grad[:2]
        ctx.save_for_backward(a if need_a else None, b if need_b else None, ca if need_a else None,
                              cb if need_b else None, diff, *stats)
        ctx.eps = eps
        return d, ma.flatten(1), mb.flatten(1)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, gma: torch.Tensor | None,
                 gmb: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        a, b, ca, cb, diff, va, vb, q, sa, sb = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[:2]
        graph = torch.is_grad_enabled()
        if graph:  # create_graph: statistics again, from the inputs, through differentiable ops
            ca, cb = (a - spatial_mean(a) if need_a else cb + diff), (b - spatial_mean(b) if need_b else ca - diff)
            diff = ca - cb
            _, (va, vb, q, sa, sb) = _structure_term(ca, cb, diff, ctx.eps)
        n, c = diff.shape[2] * diff.shape[3], diff.shape[1]
        k = g.reshape(-1, 1, 1, 1) / (c * n)
        p, cross = (va + vb - q) / 2, sa * sb * k

        def grad(own: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor, v0: torch.Tensor, gm: torch.Tensor | None,
                 sign: float) -> torch.Tensor:
            coef = (s0 * (s0 - s1) + s0 ** 3 * (s1 * p - s0 * v0)) * k
            base = own.new_zeros(()) if gm is None else gm[:, :, None, None] / n
            out = torch.addcmul(base, own, coef)
            if graph or batched_tensor(out):
                return torch.addcmul(out, diff, cross, value=sign)
            return out.addcmul_(diff, cross, value=sign)
        return ((grad(ca, sa, sb, va, gma, 1.0) if need_a else None),
                (grad(cb, sb, sa, vb, gmb, -1.0) if need_b else None), None)


def _structure_term(ca: torch.Tensor, cb: torch.Tensor, diff: torch.Tensor,
                    eps: float) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`_StructureLayer`'s value (N,) from the centred maps and their difference, and its statistics."""
    va, vb, q = spatial_mean(ca.square()), spatial_mean(cb.square()), spatial_mean(diff.square())
    sa, sb = torch.rsqrt(va + eps * eps), torch.rsqrt(vb + eps * eps)
    d = (sa * sb * q + (sa - sb) * (sa * va - sb * vb)).sum((1, 2, 3)) / (2 * ca.shape[1])
    return d, (va, vb, q, sa, sb)


class StructureHead(Head):
    """Per-channel spatial correlation of the feature maps plus the ``meanpool`` distance.

    Layer distance ``mean_c (1 - rho_c) + texture_weight * meanpool``: ``rho_c`` is the Pearson
    correlation over positions of the two images' maps of channel ``c`` (computed as the squared
    difference of standardised maps, ``||z0 - z1||^2 / (2 HW)``, so the head is a squared Euclidean
    distance between per-image vectors like every other head; a pair's distance is computed from
    per-channel statistics instead, the same number in fewer passes with a closed-form gradient). The
    correlation is SSIM's structure term
    (Wang et al. 2004) applied to deep features, as DISTS does (Ding et al. 2020, eq. 7, which also has
    a texture term on channel means; lowps uses its own ``meanpool``, Kumar et al. 2022, for that part).
    The correlation ignores each channel's mean and scale (two flat images of any colours would be at
    distance 0): ``texture_weight=1`` (default, the two distances summed unweighted) keeps colour,
    brightness and contrast changes in the distance; 0 gives the correlation alone. A 1x1 map has no
    spatial structure: such a layer (ResNet-6's stage 4 for inputs under 64 px, stage 3 under 32 px) contributes
    its ``meanpool`` part only.

    Why it is lowps's default (0.4): on real human judgements of material appearance it agrees with
    people ~7 points better than ``local`` with the same trunk (docs/models.md).
    """

    name, has_map = "structure", True

    def __init__(self, channels: Sequence[int], texture_weight: float = 1.0, eps: float = 1e-2) -> None:
        super().__init__(channels)
        if not (isinstance(texture_weight, (int, float)) and math.isfinite(texture_weight) and texture_weight >= 0):
            raise ValueError(f"texture_weight must be a finite number >= 0, got {texture_weight!r}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        self.texture_weight, self.eps = float(texture_weight), float(eps)

    def _parts(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The standardised maps, scaled so that their squared difference summed over channels and
        positions is ``mean_c (1 - rho_c)``, and the texture vector (``meanpool``'s, x sqrt(weight))."""
        c, n = f.shape[1], f.shape[2] * f.shape[3]
        z, mean = standardize_positions(f, self.eps, 1 / math.sqrt(2 * c * n))
        return z, self._texture(mean.flatten(1))

    def _texture(self, mean: torch.Tensor) -> torch.Tensor:
        """The texture vector of the (N, C) channel means: ``meanpool``'s, x sqrt(texture_weight)."""
        return unit_normalize(mean) * math.sqrt(self.texture_weight / mean.shape[1])

    def layer_map(self, i: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # per position: the structure term's share (its mean over positions is the term), plus the
        # texture term spread evenly, so that the map's spatial mean is the layer distance
        (za, ta), (zb, tb) = self._parts(a), self._parts(b)
        s = (za - zb).square().sum(1, keepdim=True) * (a.shape[2] * a.shape[3])
        return s + (ta - tb).square().sum(1)[:, None, None, None]

    def layer(self, i: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if plain_ops_only():  # torch.func, forward-mode AD, tracing: the standardised maps, plain ops
            (za, ta), (zb, tb) = self._parts(a), self._parts(b)
            return torch.linalg.vector_norm(za - zb, dim=(1, 2, 3)).square() + (ta - tb).square().sum(1)
        d, ma, mb = _StructureLayer.apply(a, b, self.eps)
        return d + (self._texture(ma) - self._texture(mb)).square().sum(1)

    def embed_layer(self, i: int, f: torch.Tensor) -> torch.Tensor:
        z, t = self._parts(f)
        return torch.cat([z.flatten(1), t], dim=1)


@functools.lru_cache(maxsize=16)
def _packing(c: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upper-triangle indices of a C x C matrix and the weights (1 on the diagonal, sqrt 2 off it).
    Made outside inference mode: cached tensors made inside it could not be saved for a later backward."""
    with torch.inference_mode(False), torch.no_grad():
        rows, cols = torch.triu_indices(c, c, device=device)
        scale = torch.where(rows == cols, 1.0, math.sqrt(2.0)).to(dtype)
    return rows, cols, scale


class StyleHead(Head):
    name = "style"
    NORMS = ("hw", "none")

    def __init__(self, channels: Sequence[int], style_norm: str = "hw") -> None:
        super().__init__(channels)
        if style_norm not in self.NORMS:
            raise ValueError(f"unknown style_norm {style_norm!r}; choose 'hw' (Gram / (H W), the default) or 'none'")
        self.style_norm = style_norm

    def gram(self, f: torch.Tensor) -> torch.Tensor:
        u = unit_normalize(f).flatten(2)
        g = u @ u.transpose(1, 2)
        return g / u.shape[2] if self.style_norm == "hw" else g

    def embed_layer(self, i: int, f: torch.Tensor) -> torch.Tensor:
        # The Gram matrix / C, packed: G is symmetric, so its upper triangle with the off-diagonal entries
        # times sqrt(2) has the same squared distances as all C^2 entries, in C (C + 1) / 2 values
        # (174,560 per image for ResNet-6's four layers instead of 348,160: all-pairs matrix products
        # and embedding memory halve).
        g = self.gram(f)
        c = g.shape[-1]
        rows, cols, scale = _packing(c, g.device, g.dtype)
        return g[:, rows, cols] * (scale / c)

    def factor_layer(self, i: int, f: torch.Tensor) -> torch.Tensor | None:
        # G = U U^T has rank n (positions): when n^2 < C (C + 1) / 2 (ResNet-6's last layer at 64x64: 4
        # positions, 512 channels), all pairs' cross terms ||Ua^T Ub||^2 are one (N n) x (M n) x C product,
        # 16x fewer multiply-adds than the packed Gram vectors.
        c, n = f.shape[1], f.shape[2] * f.shape[3]
        if n * n * 2 >= c + 1:
            return None
        u = unit_normalize(f).flatten(2)
        return u / math.sqrt(n * c if self.style_norm == "hw" else c)

    #: Pairs per Gram computation are bounded so the C x C matrices stay cache-sized (floats per chunk).
    chunk_elements: int = 2 ** 18

    def layer(self, i: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        c, n = a.shape[1], a.shape[2] * a.shape[3]
        # U as (N, C, n), channels by positions; or, for a loss on channels_last maps, as its
        # (N, n, C) view: the products then hand back gradients laid out as the maps (channels_last),
        # not NCHW ones that the backbone's backward would add across layouts and convert (the
        # meanpool head's case, `spatial_mean`). Same sums up to float rounding; inference keeps (N, C, n).
        rows = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad) and _channels_last_map(a)
        if rows:
            ua, ub = (unit_normalize(f).permute(0, 2, 3, 1).flatten(1, 2) for f in (a, b))
        else:
            ua, ub = unit_normalize(a).flatten(2), unit_normalize(b).flatten(2)

        def over_channels(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (n, n) sums over channels
            return x @ y.transpose(1, 2) if rows else x.transpose(1, 2) @ y

        def over_positions(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (C, C) sums over positions
            return x.transpose(1, 2) @ y if rows else x @ y.transpose(1, 2)

        if n < c and a.device.type != "mps":  # MPS has no float64
            # Fewer positions than channels (the deep layers): G = U U^T has rank n, and
            # ||Ga - Gb||^2 = ||Ua^T Ua||^2 + ||Ub^T Ub||^2 - 2 ||Ua^T Ub||^2 needs only n x n products
            # (4x4 instead of 512x512 for ResNet-6's last layer at 64x64). The sum cancels when the
            # images are close, so it runs in float64: ~1e-13 relative instead of float32's ~1e-4.
            # Identical inputs give identical terms, hence exactly 0.
            ua, ub = ua.double(), ub.double()

            def sq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return torch.linalg.vector_norm(over_channels(x, y), dim=(1, 2)).square()

            d = (sq(ua, ua) + sq(ub, ub) - 2 * sq(ua, ub)).clamp_min(0).to(a.dtype)
        else:
            # Ga - Gb = D Ua^T + Ub D^T with D = Ua - Ub: no float32 cancellation between two nearly
            # equal Gram matrices when the images are close, and exactly 0 for identical ones.
            step = max(1, self.chunk_elements // (c * c))
            parts = []
            # split, not slices: under autograd each slice's backward would zero-fill a gradient of all pairs
            for xa, xb in zip(ua.split(step), ub.split(step)):
                diff = xa - xb
                # n (Ga - Gb) = D Ua^T + Ub D^T, the second product accumulated into the first
                xb_d = (xb.transpose(1, 2), diff) if rows else (xb, diff.transpose(1, 2))
                gram_diff = torch.baddbmm(over_positions(diff, xa), *xb_d)
                parts.append(torch.linalg.vector_norm(gram_diff, dim=(1, 2)).square())
            d = torch.cat(parts) if parts else ua.new_zeros(0)
        return d / (n * n * c * c) if self.style_norm == "hw" else d / (c * c)


HEADS: dict[str, type[Head]] = {h.name: h for h in (StructureHead, LocalHead, MeanPoolHead, StyleHead, LinearHead)}


def create_head(name: str, channels: Sequence[int], style_norm: str = "hw") -> Head:
    """Build a head by name: one of ``structure``, ``local``, ``meanpool``, ``style``, ``linear``."""
    if name not in HEADS:
        raise ValueError(f"unknown distance {name!r}; choose one of {', '.join(HEADS)}")
    if name == "style":
        return StyleHead(channels, style_norm=style_norm)
    if style_norm != "hw":
        raise ValueError(f"style_norm={style_norm!r} applies only to distance='style', not {name!r}")
    return HEADS[name](channels)
