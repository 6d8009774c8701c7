"""ResNets as in the TPU ResNet code used by Kumar et al. 2022 (ResNet-6, -10, -18, -50, -200).

This is the reference network, in plain PyTorch modules. It differs from torchvision/timm ResNets
in three ways that matter for converted checkpoints and for reproducing the paper:

* every stage's first block has a projection shortcut (conv1x1 + BN), stage 1 included;
* the stem max-pool uses TensorFlow "SAME" padding (0 before / 1 after for even sizes), not
  PyTorch's symmetric ``padding=1``;
* ResNet-6 is built from *single-conv* residual blocks: ``ReLU(BN(conv3x3(x)) + BN(conv1x1(x)))``.

``forward_intermediates`` gives the outputs of the four reduction stages, the feature contract
`lowps.backbones` builds on; `lowps.backbones.tpu_registry` registers the depths in timm. The CPU
fast paths of the metric are not here: `lowps.accel` swaps modules of a loaded, frozen network for
faster equivalents.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models._features import feature_take_indices
from torch import nn

__all__ = ["TPUResNet", "SingleConvBlock", "BasicBlock", "Bottleneck", "TFSameMaxPool", "tf_same_max_pool",
           "tf_variance_scaling_"]

# TF batch-norm decay 0.9 == PyTorch momentum 0.1; eps as in the TPU code's BN (1e-5).
_BN_MOMENTUM = 0.1
_BN_EPS = 1e-5
# TF's truncated normal keeps |x| < 2 std; rescaling by this factor restores the intended std.
_TRUNC_STD = 0.87962566103423978


def tf_same_max_pool(x: torch.Tensor) -> torch.Tensor:
    """Max-pool 3x3/2 with TensorFlow "SAME" padding: extra padding goes after, padded cells never win.

    TF pads ``total = max((ceil(n/2) - 1) * 2 + 3 - n, 0)`` cells, ``total // 2`` before. For even
    ``n`` that is 0 before / 1 after, which PyTorch's ``ceil_mode`` gives with no padding; for odd
    ``n`` it is 1 / 1, PyTorch's symmetric ``padding=1``. Both ignore padded cells, as TF does.
    """
    h, w = x.shape[-2:]
    return F.max_pool2d(x, 3, 2, padding=(h % 2, w % 2), ceil_mode=True)


class TFSameMaxPool(nn.Module):
    """`tf_same_max_pool` as a module (the stem's pool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tf_same_max_pool(x)


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


def _bn(channels: int, zero_init: bool = False) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
    if zero_init:  # TPU code: last BN of each residual branch starts at gamma = 0
        nn.init.zeros_(bn.weight)
    return bn


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    # TF "fixed padding" for stride > 1 and "SAME" for stride 1 both equal symmetric (k-1)//2 for odd k.
    return nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=False)


def _shortcut(cin: int, cout: int, stride: int, project: bool) -> nn.Module:
    return nn.Sequential(_conv(cin, cout, 1, stride), _bn(cout)) if project else nn.Identity()


class SingleConvBlock(nn.Module):
    """ResNet-6's block: one 3x3 conv on the main path, a projection on the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, project: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, cout, 3, stride), _bn(cout, zero_init=True)
        self.shortcut = _shortcut(cin, cout, stride, project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)) + self.shortcut(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, project: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, cout, 3, stride), _bn(cout)
        self.conv2, self.bn2 = _conv(cout, cout, 3), _bn(cout, zero_init=True)
        self.shortcut = _shortcut(cin, cout, stride, project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, cout: int, stride: int, project: bool) -> None:
        super().__init__()
        mid = cout // self.expansion
        self.conv1, self.bn1 = _conv(cin, mid, 1), _bn(mid)
        self.conv2, self.bn2 = _conv(mid, mid, 3, stride), _bn(mid)  # stride on the 3x3, as in TPU code
        self.conv3, self.bn3 = _conv(mid, cout, 1), _bn(cout, zero_init=True)
        self.shortcut = _shortcut(cin, cout, stride, project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


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
        if block not in _BLOCKS:
            raise ValueError(f"unknown block {block!r}; expected one of {sorted(_BLOCKS)}")
        if not 0 < width <= 4:
            raise ValueError(f"width must be a channel multiplier in (0, 4], got {width}")
        if init not in ("tpu", "kaiming"):
            raise ValueError(f"unknown init {init!r}; choose 'tpu' (the TPU ResNet code's) or 'kaiming'")
        block_cls, expansion = _BLOCKS[block]
        widths = [max(1, round(c * width)) for c in self.widths]
        # stem: conv 7x7/2 -> BN -> ReLU -> max-pool 3x3/2 (TF "SAME")
        self.conv1, self.bn1, self.act1, self.pool = _conv(in_chans, widths[0], 7, 2), _bn(widths[0]), nn.ReLU(), \
            TFSameMaxPool()
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
            for j, block in enumerate(stage.children()):
                p = f"stages.{i}.{j}."
                if isinstance(block.shortcut, nn.Sequential):
                    pairs.append((p + "shortcut.0", p + "shortcut.1"))
                n = {SingleConvBlock: 1, BasicBlock: 2, Bottleneck: 3}[type(block)]
                pairs += [(p + f"conv{k}", p + f"bn{k}") for k in range(1, n + 1)]
        return pairs

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act1(self.bn1(self.conv1(x))))

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
        take, max_index = feature_take_indices(len(self.stages), indices if indices is None or isinstance(
            indices, int) else list(indices))
        x = self.forward_stem(x)
        feats = []
        stages = self.stages if not stop_early and not intermediates_only else self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                feats.append(x)
        return feats if intermediates_only else (x, feats)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 4, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's API: drop stages after the last of ``indices`` (and the classifier); returns the indices."""
        take, max_index = feature_take_indices(len(self.stages), indices if isinstance(indices, int) else list(indices))
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
