"""torch.hub entry points: ``torch.hub.load("<repo or local checkout>", "lowps", source="local")``.

Each returns a ready :class:`lowps.PerceptualDistance` (or :class:`lowps.LPIPS`) with the weights
shipped in the repository, so it works offline.
"""
import os
import sys

dependencies = ["torch", "timm", "safetensors"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:  # a checkout that is not pip-installed
    sys.path.insert(0, _SRC)


def lowps(backbone: str = "resnet6", distance: str = "structure", weights=None, **kwargs):  # noqa: ANN001
    """The paper's network (Kumar et al. 2022) as lowps's default metric: ResNet-6 with the structure distance.

    Keyword arguments are those of ``lowps.PerceptualDistance``.
    """
    import lowps as _lowps

    return _lowps.PerceptualDistance(backbone=backbone, distance=distance, weights=weights, **kwargs)


def lpips(net: str = "alex", **kwargs):  # noqa: ANN001
    """``lowps.LPIPS``: the drop-in for ``lpips.LPIPS`` (the AlexNet/VGG trunk comes from torchvision)."""
    import lowps as _lowps

    return _lowps.LPIPS(net=net, **kwargs)
