"""``lowps.LPIPS``: a drop-in for the ``lpips`` package's ``LPIPS`` (Zhang et al. 2018).

Same constructor signature, same ``forward(in0, in1, retPerLayer=False, normalize=False)``, same
[-1, 1] input convention, same output shapes (N x 1 x 1 x 1, or N x 1 x H x W with ``spatial``),
and the same state-dict keys (``net.slice{k}.*``, ``lin{k}.model.1.weight``, ``scaling_layer.*``), so
``state_dict()`` files move between the two. Switching is one import::

    -import lpips
    +import lowps as lpips

Deliberate differences (docs/switching-from-lpips.md):

* ``net`` may also be any lowps backbone (``"resnet6"``, ...): the paper's metric behind LPIPS's
  signature. Its input goes [-1, 1] -> [0, 1] -> ImageNet normalisation (how the backbone was
  trained) instead of LPIPS's scaling layer.
* Linear weights load strictly: a missing or unexpected key is an error (``lpips`` silently skips
  them with ``use_dropout=False``, leaving random weights).
* Inputs are validated: wrong shapes, NaN/inf, or values outside [-1, 1] (or [0, 1] with
  ``normalize=True``) raise `lowps.InputError`.
* Gradients stay finite where all channels of a feature vector are zero (``lpips`` gives NaN);
  values differ from ``lpips`` by under 1e-10 relative.
* The trunk comes from torchvision's ``weights=`` API (no deprecation warnings) and respects
  ``LOWPS_OFFLINE``; ``verbose`` messages go to stderr.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from ._modes import graph_mode
from .heads import unit_normalize
from .inputs import RangeCheck, affine_normalisation, validate_pair

if TYPE_CHECKING:
    from .backbones import Backbone

__all__ = ["LPIPS", "LPIPS_NETS"]

# torchvision feature indices where LPIPS taps (slice k = features[start:end]).
_SLICES = {
    "alex": ("alexnet", [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)], [64, 192, 384, 256, 256], 31),
    "vgg": ("vgg16", [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)], [64, 128, 256, 512, 512], 16),
    "squeeze": ("squeezenet1_1", [(0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13)],
                [64, 128, 256, 384, 384, 512, 512], 17),
}
_SLICES["vgg16"] = _SLICES["vgg"]
LPIPS_NETS = ("alex", "vgg", "vgg16", "squeeze")
_WEIGHT_ENUMS = {"alexnet": "AlexNet_Weights", "vgg16": "VGG16_Weights", "squeezenet1_1": "SqueezeNet1_1_Weights"}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path`` (``torch.load(weights_only=True)``; a ``state_dict`` entry unwrapped)."""
    from .weights import WeightsError

    if not path.is_file():
        raise FileNotFoundError(f"pnet_path={os.fspath(path)!r}: no such file (a torchvision state dict, the whole "
                                "model or its features)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, truncated files
        raise WeightsError(f"pnet_path={os.fspath(path)!r} is not a readable PyTorch state dict ({e})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"pnet_path={os.fspath(path)!r} does not hold a state dict of tensors")
    return state


def _trunk_from_file(arch: str, path: str | os.PathLike[str]) -> nn.Sequential:
    """torchvision ``arch().features`` loaded from a local state dict: the whole torchvision file
    (``features.N.*`` and ``classifier.*`` keys) or the features alone (``features.N.*`` or ``N.*``).
    Loaded strictly: a trunk that silently kept random layers would be a different metric."""
    import torchvision.models as tvm

    from .weights import WeightsError

    state = _read_state_dict(Path(path))
    features = getattr(tvm, arch)(weights=None).features
    trunk = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not trunk:  # a features-only file saved from `model.features.state_dict()`
        trunk = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    want = features.state_dict()
    problems = [f"missing {', '.join(sorted(set(want) - set(trunk))[:4])}" if set(want) - set(trunk) else "",
                f"unexpected {', '.join(sorted(set(trunk) - set(want))[:4])}" if set(trunk) - set(want) else "",
                ", ".join(f"wrong shape {k}" for k in want if k in trunk and trunk[k].shape != want[k].shape)[:200]]
    if any(problems):
        raise WeightsError(f"pnet_path={os.fspath(path)!r} does not fit torchvision's {arch} features: "
                           + "; ".join(p for p in problems if p))
    features.load_state_dict({k: v.float() for k, v in trunk.items()})
    return features


def _torchvision_trunk(arch: str, pretrained: bool, path: str | os.PathLike[str] | None = None) -> nn.Sequential:
    """torchvision ``arch().features`` with ImageNet weights (``pretrained``; from ``path`` when
    given, else torchvision's download cache) or random init."""
    import torchvision.models as tvm

    from .weights.hub import OfflineError, offline

    if path is not None:
        return _trunk_from_file(arch, path)
    if not pretrained:
        return getattr(tvm, arch)(weights=None).features
    enum = getattr(tvm, _WEIGHT_ENUMS[arch]).IMAGENET1K_V1
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
    size = {"alexnet": "233 MB", "vgg16": "528 MB", "squeezenet1_1": "4.7 MB"}[arch]
    place = (f"download {os.path.basename(enum.url)} ({size}, from {enum.url}) on a machine with network access "
             f"and place it at {target} (or point TORCH_HOME at a folder holding "
             f"checkpoints/{os.path.basename(enum.url)})")
    if offline() and not target.is_file():
        raise OfflineError(f"LOWPS_OFFLINE is set and torchvision's {arch} ImageNet weights, which LPIPS needs, are "
                           f"not cached: {place}. (pnet_rand=True gives a randomly initialised trunk: a different, "
                           "uncalibrated metric, not LPIPS.) With a local copy of the trunk, pass pnet_path=<file> "
                           "(lowps-score: --baselines lpips-NET:FILE). Or use lowps.PerceptualDistance(), whose "
                           "weights ship with the package.")
    try:
        return getattr(tvm, arch)(weights=enum).features
    except Exception as e:  # URLError, OSError, ... from torch.hub
        raise RuntimeError(f"could not load torchvision's {arch} ImageNet weights, which LPIPS needs ({e}): {place}. "
                           "(pnet_rand=True gives a random trunk: a different, uncalibrated metric, not LPIPS.)") from e


class ScalingLayer(nn.Module):
    """LPIPS's input scaling for [-1, 1] images (v0.1)."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _SlicedTrunk(nn.Module):
    """A torchvision ``features`` stack cut into LPIPS's slices (keys ``slice{k}.{i}.*`` as in lpips)."""

    def __init__(self, features: nn.Sequential, cuts: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        for k, (a, b) in enumerate(cuts):
            s = nn.Sequential()
            for i in range(a, b):
                s.add_module(str(i), features[i])
            self.add_module(f"slice{k + 1}", s)
        self.n = len(cuts)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k in range(self.n):
            x = getattr(self, f"slice{k + 1}")(x)
            out.append(x)
        return out


class _LowpsTrunk(nn.Module):
    """A lowps backbone taking [-1, 1] input (mapped to [0, 1], then its own normalisation)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        scale, shift = affine_normalisation((-1.0, 1.0), backbone.mean, backbone.std)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x * self.scale + self.shift)


class NetLinLayer(nn.Module):
    """One LPIPS linear layer: [Dropout] + 1x1 conv without bias (keys ``model.{0,1}``)."""

    def __init__(self, chn_in: int, use_dropout: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout()] if use_dropout else []
        layers.append(nn.Conv2d(chn_in, 1, 1, stride=1, padding=0, bias=False))
        self.model = nn.Sequential(*layers)

    @property
    def conv(self) -> nn.Conv2d:
        return self.model[-1]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity with the ``lpips`` package's exact interface.

    Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric";
    with ``net`` set to a lowps backbone, Kumar et al. 2022's low-accuracy networks.

    Args:
        pretrained: load the calibrated linear layers (only with ``lpips=True``).
        net: ``"alex"``, ``"vgg"``/``"vgg16"``, ``"squeeze"``, or a lowps backbone name.
        version: ``"0.1"`` (with scaling layer) or ``"0.0"``; selects the linear weights.
        lpips: use linear layers; ``False`` sums channels and averages layers' distances.
        spatial: return a distance map N x 1 x H x W instead of N x 1 x 1 x 1.
        pnet_rand: random trunk instead of ImageNet weights.
        pnet_tune: let gradients update the trunk.
        use_dropout: dropout before the linear layers (active only in train mode).
        model_path: a linear-weights file to load instead of the registry's.
        eval_mode: start in eval mode.
        verbose: report what is loaded (to stderr).
        pnet_path: (lowps only) a local file with the trunk's ImageNet weights (torchvision's whole
            ``alexnet``/``vgg16``/``squeezenet1_1`` state dict, or its ``features`` part), for machines
            that cannot download them; loaded strictly. Only for the LPIPS nets.
    """

    def __init__(self, pretrained: bool = True, net: str = "alex", version: str = "0.1", lpips: bool = True,
                 spatial: bool = False, pnet_rand: bool = False, pnet_tune: bool = False, use_dropout: bool = True,
                 model_path: str | None = None, eval_mode: bool = True, verbose: bool = True,
                 pnet_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        if pnet_path is not None and (net not in _SLICES or pnet_rand):
            raise ValueError(f"pnet_path applies to the LPIPS nets ({', '.join(LPIPS_NETS)}) with pnet_rand=False, "
                             f"not net={net!r}, pnet_rand={pnet_rand}")
        self.pnet_path = None if pnet_path is None else os.fspath(pnet_path)
        with torch.inference_mode(False):  # never inference tensors as parameters (see PerceptualDistance)
            self._build(pretrained, net, version, lpips, spatial, pnet_rand, pnet_tune, use_dropout, model_path,
                        eval_mode, verbose)

    def _build(self, pretrained: bool, net: str, version: str, lpips: bool, spatial: bool, pnet_rand: bool,
               pnet_tune: bool, use_dropout: bool, model_path: str | None, eval_mode: bool, verbose: bool) -> None:
        if version not in ("0.0", "0.1"):
            raise ValueError(f"version must be '0.1' or '0.0', got {version!r}")
        self.pnet_type, self.pnet_tune, self.pnet_rand = net, pnet_tune, pnet_rand
        self.spatial, self.lpips, self.version = spatial, lpips, version
        self.check_inputs = True
        self._range_check = RangeCheck()
        lin_name = self._build_trunk(net, version, pnet_rand) if net in _SLICES else self._build_lowps_trunk(
            net, version, pnet_rand)
        self.L = len(self.chns)
        self.net.requires_grad_(pnet_tune)
        if lpips:
            for k, c in enumerate(self.chns):
                self.add_module(f"lin{k}", NetLinLayer(c, use_dropout=use_dropout))
            self.lins = nn.ModuleList([getattr(self, f"lin{k}") for k in range(self.L)])
            if pretrained:
                self._load_pretrained_lins(model_path if model_path is not None else lin_name, net, version, verbose)
        if verbose:
            print(f"lowps.LPIPS: {'LPIPS' if lpips else 'baseline'} [{net}], v[{version}], spatial "
                  f"[{'on' if spatial else 'off'}]", file=sys.stderr)
        if eval_mode:
            self.eval()

    def _build_trunk(self, net: str, version: str, pnet_rand: bool) -> str:
        """An LPIPS net (alex, vgg, squeeze): torchvision's trunk cut at LPIPS's taps; its lin weights' name."""
        arch, cuts, self.chns, self.min_size = _SLICES[net]
        self.scaling_layer: nn.Module | None = ScalingLayer()
        self.net: nn.Module = _SlicedTrunk(_torchvision_trunk(arch, not pnet_rand, self.pnet_path), cuts)
        return f"lpips-{'vgg' if net == 'vgg16' else net}-v{version}"

    def _build_lowps_trunk(self, net: str, version: str, pnet_rand: bool) -> str | None:
        """A lowps backbone behind LPIPS's signature; the name of a head trained on it, if one is registered."""
        from . import weights as wts

        try:
            backbone = wts.build_backbone(net, "random" if pnet_rand else None)
        except ValueError as e:
            raise ValueError(f"net={net!r}: {e}. LPIPS nets: {', '.join(LPIPS_NETS)}; lowps backbones: "
                             "lowps.list_backbones()") from e
        if version != "0.1":
            raise ValueError("version='0.0' exists only for the LPIPS nets (alex, vgg, squeeze)")
        self.chns = [layer.channels for layer in backbone.layers]
        self.min_size = backbone.min_size
        self.scaling_layer = None
        self.net = _LowpsTrunk(backbone)
        heads = [e for e in wts.list_weights(kind="head") if e.arch == backbone.arch
                 and e.base == getattr(backbone, "weights_name", None)]
        return heads[0].name if heads else None

    def _load_pretrained_lins(self, source: str | None, net: str, version: str, verbose: bool) -> None:
        if source is None:
            raise ValueError(f"no trained linear layers are registered for net={net!r} with these trunk "
                             "weights; pass model_path=<file from `lowps train linear`>, or "
                             "lpips=False for the unweighted distance, or pretrained=False for random lins")
        if verbose:
            print(f"lowps.LPIPS: net={net} v{version} lin weights from {source}", file=sys.stderr)
        self.load_lin(source)

    def load_lin(self, source: str | os.PathLike[str]) -> None:
        """Load linear weights strictly from a registry name or file (lpips ``.pth`` keys accepted)."""
        from .weights import WeightsError, load_state_dict

        state, _, _ = load_state_dict(source)
        got: dict[int, torch.Tensor] = {}
        unexpected = []
        for key, value in state.items():
            parts = key.split(".")
            if parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[-1] == "weight" \
                    and parts[1:-1] in ([], ["model", "0"], ["model", "1"]):
                got[int(parts[0][3:])] = value
            else:
                unexpected.append(key)
        missing = [f"lin{k}" for k in range(self.L) if k not in got]
        unexpected += [f"lin{k}" for k in got if k >= self.L]
        if missing or unexpected:
            raise WeightsError(f"linear weights {os.fspath(source)!r} do not fit net={self.pnet_type!r}: "
                               f"missing {missing}, unexpected {unexpected}")
        for k in range(self.L):
            conv = self._lin(k).conv
            if tuple(got[k].shape) != tuple(conv.weight.shape):
                raise WeightsError(f"lin{k}: file shape {tuple(got[k].shape)} vs model {tuple(conv.weight.shape)}")
            with torch.no_grad():
                conv.weight.copy_(got[k])

    def _lin(self, k: int) -> NetLinLayer:
        return cast(NetLinLayer, self.lins[k])

    def forward(self, in0: torch.Tensor, in1: torch.Tensor, retPerLayer: bool = False,  # noqa: N803
                normalize: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """LPIPS distance N x 1 x 1 x 1 (N x 1 x H x W with ``spatial``); ``retPerLayer`` also returns
        each layer's term. Inputs in [-1, 1], or [0, 1] with ``normalize=True``."""
        x0, x1 = self._inputs(in0, in1, normalize)
        feats0, feats1 = self._features(x0, x1)
        res = [self._layer_distance(k, feats0[k], feats1[k], tuple(x0.shape[2:])) for k in range(self.L)]
        val = res[0]
        for r in res[1:]:
            val = val + r
        return (val, res) if retPerLayer else val

    def _inputs(self, in0: torch.Tensor, in1: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated, in the trunk's dtype, mapped to [-1, 1] and through the scaling layer."""
        if in0.ndim == 4 and in1.ndim == 4 and in0.shape[0] != in1.shape[0] and 1 in (in0.shape[0], in1.shape[0]):
            # one image against a batch broadcasts, as in lpips
            n = max(in0.shape[0], in1.shape[0])
            in0, in1 = in0.expand(n, *in0.shape[1:]), in1.expand(n, *in1.shape[1:])
        x0, x1 = validate_pair(in0, in1, (0.0, 1.0) if normalize else (-1.0, 1.0), min_size=self.min_size,
                               check_values=self.check_inputs and not graph_mode(), range_check=self._range_check)
        dtype = next(self.net.parameters()).dtype
        if x0.dtype != dtype and dtype in (torch.float16, torch.bfloat16, torch.float64):
            x0, x1 = x0.to(dtype), x1.to(dtype)  # after .half()/.double(), as lpips
        if normalize:  # [0, 1] -> [-1, 1]
            x0, x1 = 2 * x0 - 1, 2 * x1 - 1
        if self.version == "0.1" and self.scaling_layer is not None:
            x0, x1 = self.scaling_layer(x0), self.scaling_layer(x1)
        return x0, x1

    def _features(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The trunk's taps for both sides: one forward of both batches, or (a loss) the side without
        gradients run without autograd, so backward covers n images instead of 2n."""
        grad0, grad1 = (torch.is_grad_enabled() and x.requires_grad for x in (x0, x1))
        if grad0 != grad1 and not self.pnet_tune:
            with torch.no_grad():
                fixed = self.net(x1 if grad0 else x0)
            tracked = self.net(x0 if grad0 else x1)
            return (tracked, fixed) if grad0 else (fixed, tracked)
        n = x0.shape[0]
        if n == 0:
            feats = self.net(x0)
            return feats, feats
        parts = [f.split(n) for f in self.net(torch.cat([x0, x1]))]
        return [p[0] for p in parts], [p[1] for p in parts]

    def _layer_distance(self, k: int, f0: torch.Tensor, f1: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """Layer ``k``'s term: squared difference of unit-normalised features, weighted by the linear
        layer (or summed over channels), then averaged over space (or upsampled with ``spatial``)."""
        wide = f0.dtype if f0.dtype in (torch.float32, torch.float64) else torch.float32
        diff = (unit_normalize(f0.to(wide)) - unit_normalize(f1.to(wide))) ** 2
        d = self._lin(k)(diff.to(self._lin(k).conv.weight.dtype)) if self.lpips else diff.sum(1, keepdim=True)
        if self.spatial:
            return F.interpolate(d, size=size, mode="bilinear", align_corners=False)
        return d.mean((2, 3), keepdim=True)
