"""lowps: perceptual image distance from low-accuracy ImageNet networks.

Kumar, Houlsby, Kalchbrenner, Cubuk. "Do better ImageNet classifiers assess perceptual similarity
better?" TMLR 2022. The public surface:

* :class:`PerceptualDistance`: the metric as an ``nn.Module`` (backbone -> feature taps -> head);
* :func:`distance`: the functional form with a cached module;
* :class:`LPIPS`: a drop-in for ``lpips.LPIPS`` (same signature and numbers), with the helpers
  ``lpips`` exports (``im2tensor``, ``load_image``, ``tensor2im``, ``psnr``, ...), so
  ``import lowps as lpips`` runs lpips's scripts;
* :mod:`lowps.weights`: the weights registry, downloads and checkpoint loading;
* :mod:`lowps.backbones` / :mod:`lowps.heads`: the building blocks.
"""
from __future__ import annotations

from . import backbones, heads, weights
from .backbones import list_backbones
from .functional import distance, get_metric
from .heads import HEADS
from .inputs import InputError
from .lpips_compat import LPIPS
from .lpips_utils import (dssim, im2tensor, l2, load_image, normalize_tensor, np2tensor, psnr, rgb2lab,  # noqa: F401
                          tensor2im, tensor2np, tensor2tensorlab, tensor2vec, tensorlab2tensor, voc_ap)
from .metric import PerceptualDistance
from .pairwise import nearest, pairwise

__version__ = "0.1.0"

__all__ = ["PerceptualDistance", "LPIPS", "distance", "get_metric", "pairwise", "nearest", "list_backbones", "HEADS", "InputError",
           "backbones", "heads", "weights", "__version__"]
