"""The metric module: backbone -> feature taps -> distance head (Kumar et al. 2022)."""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._modes import forward_ad_active, functorch_active, graph_mode
from .accel.probe import native_low_precision
from .backbones import Backbone
from .config import PRECISIONS, MetricConfig, WeightsSpec
from .heads import Head, LinearHead, create_head
from .inputs import ImageLike, InputError, RangeCheck, affine_normalisation, to_tensor, validate_batch, validate_pair

__all__ = ["PerceptualDistance", "WeightsSpec", "MetricConfig"]

_PRECISIONS = dict(zip(PRECISIONS, (torch.float32, torch.bfloat16, torch.float16)))


_WARNED: set[str] = set()
_CHUNK_DEPRECATED = ("PerceptualDistance.chunk_pixels is deprecated (lowps 0.3) and will be removed: it is an "
                     "internal memory bound")
_MALLOC_DEPRECATED = ("PerceptualDistance.raise_malloc_thresholds is deprecated (lowps 0.3): call "
                      "lowps.accel.tune_allocator() once, where lowps is the only model in the process; setting it "
                      "True does that now")


def _nonfinite_to_nan(*xs: torch.Tensor) -> torch.Tensor:
    """(N,) zeros, NaN where an image holds NaN/inf: added to distances when value checks are off.

    oneDNN's fused conv + ReLU maps NaN to 0, so a NaN pixel would otherwise vanish inside the trunk
    and give a finite, wrong distance. ``sum * 0`` is exactly 0 for finite images and NaN otherwise:
    one reduction, no host sync (what ``check_inputs=False`` saves is the check's sync, not this)."""
    out = xs[0].detach().flatten(1).sum(1) * 0
    for x in xs[1:]:
        out = out + x.detach().flatten(1).sum(1) * 0
    return out.to(torch.float64 if xs[0].dtype == torch.float64 else torch.float32)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class PerceptualDistance(nn.Module):
    """Perceptual distance between image pairs from a (low-accuracy) ImageNet backbone.

    Kumar et al. 2022, "Do better ImageNet classifiers assess perceptual similarity better?" (TMLR):
    shallow or early-stopped ResNets agree with human 2AFC judgements best, and the ``meanpool``
    distance over their reduction-stage features reaches PS 70.2 on BAPPS.

    Args:
        backbone: a lowps backbone (``"resnet6"``, ``"resnet10"``, ``"resnet18_tpu"``,
            ``"resnet50_tpu"``, ``"resnet200_tpu"``, ``"vit_base_patch8_64"``, ``"vit_large_patch4_64"``)
            or any timm model name (optionally prefixed ``"timm:"``).
        distance: ``"structure"`` (the default since lowps 0.4: per-channel spatial correlation of the
            feature maps plus ``meanpool``, chosen by agreement with human judgements, docs/models.md),
            ``"local"`` (LPIPS eq. 1; the default in 0.3), ``"meanpool"`` (the paper's best on BAPPS,
            the default before 0.3), ``"style"`` or ``"linear"``.
        weights: backbone weights: ``None`` for the backbone's default (for ``resnet6`` the
            checkpoint shipped inside the package), ``"random"`` for a seeded random init, a
            registry name, a file path or a URL (see `lowps.weights`).
        layers: layer names (``"stage1"``..., ``"block0"``...) or indices to use; ``None`` for all.
        input_range: the value range of input tensors, ``(0, 1)`` (default) or ``(-1, 1)``.
        head_weights: for ``distance="linear"``: a file/registry name of trained linear weights, or
            ``"ones"`` for the untrained start (equal to ``local``). Required for ``"linear"``.
        precision: ``"fp32"`` (default, exact), or ``"bf16"`` / ``"fp16"`` to run the backbone in
            that dtype while input normalisation and the distance heads stay float32. bf16 is
            faster only where the hardware has it (GPUs; CPUs with AMX; AMD CPUs with AVX-512 BF16): on other
            CPUs lowps warns once and runs fp32 (``self.precision`` says what runs), unless
            ``force_precision=True``. Distances move by a few percent (bounded in
            ``tests/test_metric.py``), so keep one precision within one experiment.
        force_precision: run ``precision`` even where it is emulated (slow) on this CPU.
        style_norm: for ``distance="style"``: ``"hw"`` (default) divides each Gram matrix by H x W,
            ``"none"`` does not (the paper leaves it open, sec. 8.1; what changes: docs/concepts.md).
        check_inputs: check every batch for NaN/inf (an error) and for values outside
            ``input_range``: on the first call, data that clearly uses another convention ([0, 255],
            [-1, 1]) is an error; otherwise values beyond a 10% overshoot are taken as they are with one
            `lowps.InputRangeWarning` per metric object, so a loss never stops a training run. One
            reduction per call; skipped under tracing/compiling (torch.export, torch.compile).
        accelerate: ``"auto"`` (default): the trunk in its fast inference form (`lowps.accel`:
            BatchNorm folded, CPU fast paths swapped in); ``"none"``: the reference network as the
            paper defines it, slower, with the same distances within float rounding (tested).

    ``forward(img0, img1)`` returns a tensor of shape (N,). The module starts in eval mode with
    frozen parameters; gradients flow to the inputs, so it can be used as a loss.
    """

    _scale: torch.Tensor  # buffers: the affine map from input_range to the trunk's normalised input
    _shift: torch.Tensor

    def __init__(self, backbone: str = "resnet6", distance: str = "structure", weights: WeightsSpec = None,
                 layers: Sequence[str | int] | None = None,
                 input_range: tuple[float, float] | str = (0.0, 1.0),
                 head_weights: WeightsSpec = None, check_inputs: bool = True,
                 precision: str = "fp32", force_precision: bool = False, style_norm: str = "hw",
                 accelerate: str = "auto") -> None:
        super().__init__()
        #: The options this metric was built from (`lowps.MetricConfig`): a cache key and a record.
        self.config = MetricConfig(backbone=backbone, distance=distance, weights=weights,
                                   layers=layers,  # type: ignore[arg-type]  # normalised to a tuple
                                   input_range=input_range,  # type: ignore[arg-type]  # parsed from "lo,hi"
                                   head_weights=head_weights, check_inputs=check_inputs,
                                   precision=precision, force_precision=force_precision, style_norm=style_norm,
                                   accelerate=accelerate)
        # Built outside inference mode whatever the caller's mode: parameters and buffers made under
        # torch.inference_mode() are inference tensors that no later autograd call may use.
        with torch.inference_mode(False):
            self._build(self.config)

    @classmethod
    def from_config(cls, config: MetricConfig) -> PerceptualDistance:
        """Build from a `MetricConfig` (``lowps.create_metric`` also applies device and dtype)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})

    def _build(self, cfg: MetricConfig) -> None:
        from . import weights as wts  # late import: weights imports backbones

        backbone, distance, weights, layers = cfg.backbone, cfg.distance, cfg.weights, cfg.layers
        head_weights, precision = cfg.head_weights, cfg.precision
        self.input_range = cfg.input_range
        self.requested_precision, self.force_precision = precision, cfg.force_precision
        self.precision = "fp32"  # what the trunk runs in; set by _set_trunk_precision below
        self.check_inputs = cfg.check_inputs
        self._range_check = RangeCheck()  # first call: convention errors; later: one warning, never a stop
        self.backbone: Backbone = wts.build_backbone(backbone, weights)
        self.head: Head = create_head(distance, [layer.channels for layer in self.backbone.layers],
                                      style_norm=cfg.style_norm)
        if isinstance(self.head, LinearHead):
            if head_weights is None:
                raise ValueError("distance='linear' needs trained weights: pass head_weights=<file or registry "
                                 "name> (train them with `lowps train linear`), or head_weights='ones' for the "
                                 "untrained start, which equals distance='local'")
            if head_weights != "ones":
                wts.load_head(self.head, head_weights, arch=self.backbone.arch)
        elif head_weights is not None:
            raise ValueError(f"head_weights only applies to distance='linear', not {distance!r}")
        self.layer_idx = self._select(layers)
        self.layer_names = [self.backbone.layers[i].name for i in self.layer_idx]
        reductions = [self.backbone.layers[i].reduction for i in self.layer_idx]
        all_reductions = [layer.reduction for layer in self.backbone.layers if layer.reduction]
        known = [r for r in reductions if r is not None]
        if len(known) < len(reductions) or not all_reductions:
            self.min_size = self.backbone.min_size
        else:
            # the backbone's measured minimum applies to its deepest tap; shallower taps need proportionally less
            deepest = max(known)
            self.min_size = max(deepest // 2, -(-self.backbone.min_size * deepest // max(all_reductions)))

        scale, shift = affine_normalisation(self.input_range, self.backbone.mean, self.backbone.std)
        self.register_buffer("_scale", scale, persistent=False)
        self.register_buffer("_shift", shift, persistent=False)
        self.requires_grad_(False)
        self.eval()
        # The trunk's fast inference form (lowps.accel: BatchNorm folded, ResNet-6's shortcuts merged,
        # CPU fast paths; the metric never trains its trunk): results within float rounding of the
        # reference network (accelerate="none"). channels_last convolutions either way.
        if cfg.accelerate == "auto":
            self.backbone.reparameterize()
        if self.backbone.kind != "cls":
            self.backbone.to(memory_format=torch.channels_last)
        self._set_trunk_precision()

    @property
    def device(self) -> torch.device:
        """The device the metric runs on (inputs must be there)."""
        return self._scale.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype tensor inputs must have (float32 unless the module was cast with ``.to(dtype)``)."""
        return self._scale.dtype

    def _set_trunk_precision(self) -> None:
        """Cast the trunk to the requested precision where this device runs it natively (else fp32)."""
        req, dev = self.requested_precision, self._scale.device
        self._trunk_device_type = dev.type
        if req == "fp32":
            return
        eff = req if self.force_precision or native_low_precision(req, dev) else "fp32"
        if eff != req and req not in _WARNED:
            _WARNED.add(req)
            warnings.warn(f"precision={req!r}: this CPU has no fast native {req} convolutions, where a {req} trunk "
                          f"runs slower than fp32; running fp32 instead. Pass force_precision=True "
                          f"(CLI: --force-precision) to run {req} anyway.", RuntimeWarning, stacklevel=3)
        trunk_dtype = next(self.backbone.parameters()).dtype
        if trunk_dtype in (torch.float32, *(_PRECISIONS[p] for p in ("bf16", "fp16"))):
            self.backbone.to(_PRECISIONS[eff])
        self.precision = eff

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PerceptualDistance:
        out = super()._apply(fn, recurse)
        # Moved to another kind of device (e.g. .cuda() after building on a CPU without bf16): decide again.
        if getattr(self, "_trunk_device_type", None) not in (None, self._scale.device.type):
            self._set_trunk_precision()
        return out

    def _select(self, layers: Sequence[str | int] | None) -> list[int]:
        names = self.backbone.layer_names
        if layers is None:
            return list(range(len(names)))
        if isinstance(layers, (str, int)):
            layers = [layers]
        if len(layers) == 0:
            raise ValueError(f"layers=[] selects nothing; pass None for all layers or some of: {', '.join(names)}")
        idx = []
        for layer in layers:
            if isinstance(layer, int) and not isinstance(layer, bool) and -len(names) <= layer < len(names):
                idx.append(layer % len(names))
            elif isinstance(layer, str) and layer in names:
                idx.append(names.index(layer))
            else:
                raise ValueError(f"unknown layer {layer!r} for backbone {self.backbone.arch!r}; valid layers: "
                                 f"{', '.join(names)} (or their indices 0..{len(names) - 1})")
        if len(set(idx)) != len(idx):
            raise ValueError(f"layers {list(layers)} name a layer twice")
        return sorted(idx)

    # -- internals -----------------------------------------------------------------------------
    def _prepare(self, img0: ImageLike, img1: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
        x0, x1 = to_tensor(img0, self.input_range), to_tensor(img1, self.input_range)
        bb = self.backbone
        # value checks read values (data-dependent): skipped while tracing/compiling/exporting
        x0, x1 = validate_pair(x0, x1, self.input_range, min_size=self.min_size, fixed_size=bb.fixed_size,
                               multiple_of=bb.multiple_of, check_values=self.check_inputs and not graph_mode(),
                               range_check=self._range_check)
        dev, dtype = self._scale.device, self._scale.dtype
        if x0.device != dev:
            if x0.device.type == "cpu" and not isinstance(img0, torch.Tensor):
                x0, x1 = x0.to(dev), x1.to(dev)  # images read from files/PIL follow the module
            else:
                raise ValueError(f"inputs are on {x0.device} but the metric is on {dev}; move one of them")
        if x0.dtype != dtype:
            if isinstance(img0, torch.Tensor) and isinstance(img1, torch.Tensor):
                raise ValueError(f"inputs are {x0.dtype} but the metric is {dtype}; call metric.to({x0.dtype}) "
                                 f"or cast the inputs (for mixed precision use torch.autocast)")
            x0, x1 = x0.to(dtype), x1.to(dtype)
        return x0, x1

    #: Pixels (images x H x W) per backbone call. Larger batches run in chunks of pairs: results are
    #: identical (every sample is independent in eval mode), but activations stay small enough for
    #: the allocator to reuse memory instead of page-faulting fresh blocks (docs/performance.md).
    _chunk_pixels: int = 2 ** 19

    @property
    def chunk_pixels(self) -> int:
        """Deprecated (0.3): an internal memory bound, no longer part of the API."""
        warnings.warn(_CHUNK_DEPRECATED, DeprecationWarning, stacklevel=2)
        return self._chunk_pixels

    @chunk_pixels.setter
    def chunk_pixels(self, value: int) -> None:
        warnings.warn(_CHUNK_DEPRECATED, DeprecationWarning, stacklevel=2)
        self._chunk_pixels = value

    @property
    def raise_malloc_thresholds(self) -> bool:
        """Deprecated (0.3): call ``lowps.accel.tune_allocator()`` once instead."""
        warnings.warn(_MALLOC_DEPRECATED, DeprecationWarning, stacklevel=2)
        return False

    @raise_malloc_thresholds.setter
    def raise_malloc_thresholds(self, value: bool) -> None:
        warnings.warn(_MALLOC_DEPRECATED, DeprecationWarning, stacklevel=2)
        if value:
            from .accel import tune_allocator

            tune_allocator()

    def _normalize(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate batches and map them into the backbone's normalised input, in its dtype/layout."""
        dtype = next(self.backbone.parameters()).dtype  # float32, bf16/fp16 (precision), or float64
        functorch = functorch_active()  # torch.func (vmap, jacfwd, grad, ...)
        # vmap has no channels_last for its batched (one dim higher) tensors: NCHW under torch.func
        fmt = torch.channels_last if self.backbone.kind != "cls" and not functorch else torch.contiguous_format
        # out= has no autograd, no forward-mode AD (dual tensors: torch.autograd.forward_ad) and no vmap rule
        if graph_mode() or forward_ad_active() or functorch \
                or (torch.is_grad_enabled() and any(x.requires_grad for x in xs)):
            x = xs[0] if len(xs) == 1 else torch.cat(list(xs))
            return (x * self._scale + self._shift).to(dtype=dtype, memory_format=fmt)
        # One pass per batch writing straight into the trunk's input (no cat/scale/shift/cast temporaries).
        shape = (sum(x.shape[0] for x in xs), *xs[0].shape[1:])
        out = torch.empty(shape, dtype=dtype, device=xs[0].device, memory_format=fmt)
        start = 0
        for x in xs:
            torch.addcmul(self._shift, x, self._scale, out=out[start:start + x.shape[0]])
            start += x.shape[0]
        return out

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features of a batch in ``input_range`` (all layers, not only the selected ones)."""
        return self.backbone(self._normalize([x]))

    def _chunks(self, x: torch.Tensor, images_per_item: int = 2) -> tuple[torch.Tensor, ...]:
        """``x`` in batches of at most ``chunk_pixels`` input pixels (an item is a pair or one image).

        ``split`` views, not slices: under autograd a split's backward is one concatenation of the
        chunks' gradients, while each slice's backward zero-fills a gradient of the whole batch and
        adds it up (a 256x256/32 loss step spent ~65 ms of ~880 there on an AMD EPYC)."""
        n, (h, w) = x.shape[0], x.shape[-2:]
        if graph_mode() or n == 0:
            # export/compile/trace: one graph for any batch size, no chunk loop; an empty batch gives
            # empty results of the right shape
            return (x,)
        return x.split(max(1, self._chunk_pixels // (images_per_item * h * w)))

    def _pair_features(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n = x0.shape[0]
        if graph_mode():  # two forwards: no batch-size-dependent split baked into a traced graph
            return self.backbone(self._normalize([x0])), self.backbone(self._normalize([x1]))
        if n == 0:
            empty = self.backbone(self._normalize([x0]))
            return empty, empty
        grad0, grad1 = (torch.is_grad_enabled() and x.requires_grad for x in (x0, x1))
        if grad0 != grad1:
            # A loss: gradients for one side only (the network output, not the target). Run the other
            # side without autograd, so backward covers n images instead of 2n (half the backward
            # convolutions) and the target's forward takes the inference fast paths.
            with torch.no_grad():
                fixed = self.backbone(self._normalize([x1 if grad0 else x0]))
            tracked = self.backbone(self._normalize([x0 if grad0 else x1]))
            return (tracked, fixed) if grad0 else (fixed, tracked)
        if 2 * x0.shape[-2] * x0.shape[-1] > self._chunk_pixels and n == 1:
            # One pair above the bound (large images): one image per forward halves the peak.
            return self.backbone(self._normalize([x0])), self.backbone(self._normalize([x1]))
        # One forward for both images: one kernel launch sequence, better batching on CPU and GPU.
        # split (not two slices): its backward is one concatenation, not two zero-filled full-size grads.
        parts = [f.split(n) for f in self.backbone(self._normalize([x0, x1]))]
        return [p[0] for p in parts], [p[1] for p in parts]

    # -- public --------------------------------------------------------------------------------
    def forward(self, img0: ImageLike, img1: ImageLike,
                per_layer: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Distance per pair, shape (N,); with ``per_layer=True`` also ``{layer name: (N,)}``."""
        x0, x1 = self._prepare(img0, img1)
        per = _cat([self.head(*self._pair_features(a, b), self.layer_idx)
                    for a, b in zip(self._chunks(x0), self._chunks(x1))])
        if not self.check_inputs:
            per = per + _nonfinite_to_nan(x0, x1)[:, None]
        total = per.sum(1)
        if per_layer:
            return total, {name: per[:, k] for k, name in enumerate(self.layer_names)}
        return total

    def spatial(self, img0: ImageLike, img1: ImageLike,
                per_layer: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Spatial distance map (N, 1, H, W) at the input size (``local`` and ``linear`` only).

        Each layer's map is upsampled bilinearly to the input size and the maps are summed, as in
        LPIPS's ``spatial=True``; its spatial mean approximates ``forward``.
        """
        if not self.head.has_map:
            raise ValueError(f"distance={self.head.name!r} has no spatial map; use distance='structure', 'local' or "
                             "'linear'")
        x0, x1 = self._prepare(img0, img1)
        size = (int(x0.shape[-2]), int(x0.shape[-1]))
        maps = _cat([self.head.maps(*self._pair_features(a, b), self.layer_idx, size)
                     for a, b in zip(self._chunks(x0), self._chunks(x1))])
        if not self.check_inputs:
            maps = maps + _nonfinite_to_nan(x0, x1)[:, None, None, None].to(maps.dtype)
        total = maps.sum(1, keepdim=True)
        if per_layer:
            return total, {name: maps[:, k:k + 1] for k, name in enumerate(self.layer_names)}
        return total

    def embed(self, img: ImageLike) -> torch.Tensor:
        """One vector per image, (N, D), whose squared Euclidean distances are this metric's distances.

        Every head is a squared Euclidean distance between per-image vectors (meanpool: the unit-length
        pooled features of each layer scaled by 1/sqrt(C); local/linear: the unit-normalised maps
        scaled by sqrt(w)/sqrt(HW); style: the Gram matrices / C, packed as their upper triangles with
        the off-diagonal entries times sqrt(2)), so
        ``metric(x, y) == ((metric.embed(x) - metric.embed(y)) ** 2).sum(1)`` up to float rounding, and
        all-pairs distances are matrix products (`lowps.pairwise`, `lowps.nearest`).
        For a fixed reference compared with many images, embed it once (`distance_features`).
        ``D`` depends on the input size for every head but ``meanpool``.
        """
        x = self._embed_input(img)
        if x.shape[0] == 0:
            dim = self.embedding_dim((int(x.shape[-2]), int(x.shape[-1])))
            return torch.zeros(0, dim, dtype=self._head_dtype(), device=x.device)
        out = _cat([self.head.embed(self.features(c), self.layer_idx) for c in self._chunks(x, images_per_item=1)])
        return out if self.check_inputs else out + _nonfinite_to_nan(x)[:, None].to(out.dtype)

    def _embed_input(self, img: ImageLike) -> torch.Tensor:
        x = to_tensor(img, self.input_range)
        bb = self.backbone
        x = validate_batch(x, self.input_range, min_size=self.min_size, fixed_size=bb.fixed_size,
                           multiple_of=bb.multiple_of, check_values=self.check_inputs and not graph_mode(),
                           range_check=self._range_check)
        self._range_check.first_call = False
        if x.device != self._scale.device or x.dtype != self._scale.dtype:
            x = self._prepare(x, x)[0]
        return x

    def embed_parts(self, img: ImageLike) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`embed` split for all-pairs products (`lowps.pairwise`): vectors (N, D) of the layers whose
        distance is cheapest as a vector, and factors (N, C, n) of the others (`Head.factor_layer`:
        the style head's low-rank Gram matrices). Non-empty batches only."""
        x = self._embed_input(img)
        if x.shape[0] == 0:
            raise InputError("embed_parts needs at least one image")
        parts = [self.head.embed_parts(self.features(c), self.layer_idx) for c in self._chunks(x, images_per_item=1)]
        return _cat([d for d, _ in parts]), [_cat([fs[k] for _, fs in parts]) for k in range(len(parts[0][1]))]

    def _head_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def embedding_dim(self, size: tuple[int, int] = (64, 64)) -> int:
        """Length of `embed`'s vectors for ``size`` (H, W) inputs."""
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
            raise InputError(f"size must be (H, W), two ints, got {size!r}")
        if min(size) < self.min_size:
            raise InputError(f"size {tuple(size)}: every side must be at least {self.min_size} px for this metric's "
                             "layers")
        with torch.no_grad():
            x = torch.full((1, 3, *size), 0.5, dtype=self.dtype, device=self.device)
            x = x * (self.input_range[1] - self.input_range[0]) + self.input_range[0]
            return int(self.head.embed(self.features(x), self.layer_idx).shape[1])

    def distance_features(self, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
        """Distances (N,) between `embed` outputs of two batches; a batch of 1 broadcasts."""
        for name, f in (("f0", f0), ("f1", f1)):
            if not isinstance(f, torch.Tensor) or f.ndim != 2:
                raise InputError(f"{name} must be the (N, D) tensor that metric.embed() returns, got "
                                 f"{type(f).__name__}{tuple(f.shape) if isinstance(f, torch.Tensor) else ''}")
        if f0.shape[1] != f1.shape[1]:
            raise InputError(f"embeddings of length {f0.shape[1]} and {f1.shape[1]} do not match: embed both batches "
                             "with this metric (same head, layers) at one image size")
        if f0.shape[0] != f1.shape[0] and 1 not in (f0.shape[0], f1.shape[0]):
            raise InputError(f"embedded batches of {f0.shape[0]} and {f1.shape[0]} images: give equal batches, or one "
                             "image to compare against all (use lowps.pairwise for every pair)")
        return (f0 - f1).pow(2).sum(1)

    def train(self, mode: bool = True) -> PerceptualDistance:
        # BatchNorm stays in eval mode: a metric must not depend on the batch it is called with.
        super().train(mode)
        self.backbone.eval()
        return self

    def extra_repr(self) -> str:
        return (f"distance={self.head.name!r}, layers={self.layer_names}, input_range={self.input_range}, "
                f"weights={getattr(self.backbone, 'weights_name', None)!r}"
                + (f", precision={self.precision!r}" if self.requested_precision != "fp32" else ""))
