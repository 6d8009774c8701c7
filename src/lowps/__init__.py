"""lowps: perceptual image distance from low-accuracy ImageNet networks.

Kumar, Houlsby, Kalchbrenner, Cubuk. "Do better ImageNet classifiers assess perceptual similarity
better?" TMLR 2022. The public surface:

* `PerceptualDistance`: the metric as an ``nn.Module`` (backbone -> feature taps -> head);
* `MetricConfig` / `create_metric`: the metric's options as one typed, hashable object, and the factory;
* `distance`: the functional form with a cached module;
* `pairwise` / `nearest`: all-pairs distances and retrieval as matrix products;
* `distance_folders`: distances between same-named images in two folders;
* `LPIPS`: a drop-in for ``lpips.LPIPS`` (same signature and numbers), with the helpers
  ``lpips`` exports (``im2tensor``, ``load_image``, ``tensor2im``, ``psnr``, ...), so
  ``import lowps as lpips`` runs lpips's scripts;
* `lowps.weights`: the weights registry, downloads and checkpoint loading;
* `lowps.backbones` / `lowps.heads`: the building blocks.

Attributes load on first use (PEP 562), so ``import lowps`` and the CLIs' ``--help`` do not pay for
timm and torchvision. lowps's models join timm's registry as soon as timm is imported, before or
after lowps, so ``timm.create_model("resnet6")`` works in any order.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

__version__ = "0.4.0"

#: public name -> the submodule that defines it
_ATTRS = {
    "PerceptualDistance": "metric", "distance": "functional", "get_metric": "functional", "pairwise": "allpairs",
    "nearest": "allpairs", "list_backbones": "backbones", "MetricConfig": "config", "create_metric": "config",
    "distance_folders": "folders", "HEADS": "heads", "InputError": "inputs",
    "InputRangeWarning": "inputs",
    "LPIPS": "lpips_compat",
    **{name: "lpips_utils" for name in ("dssim", "im2tensor", "l2", "load_image", "normalize_tensor", "np2tensor",
                                        "psnr", "rgb2lab", "tensor2im", "tensor2np", "tensor2tensorlab",
                                        "tensor2vec", "tensorlab2tensor", "voc_ap")},
}
# No submodule may share a name with an attribute above (importing it would rebind the package attribute).
_SUBMODULES = ("accel", "backbones", "heads", "weights", "scoring", "inputs", "metric", "functional", "allpairs",
               "data", "train", "lpips_compat", "lpips_utils", "sanity", "config", "folders", "export",
               "agreement")

__all__ = ["PerceptualDistance", "MetricConfig", "create_metric", "distance_folders", "LPIPS", "distance",
           "get_metric", "pairwise", "nearest", "list_backbones", "HEADS",
           "InputError", "InputRangeWarning", "backbones", "heads", "weights", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _ATTRS:
        value = getattr(importlib.import_module(f".{_ATTRS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'lowps' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # the public surface only: not the helpers this module imports for itself (sys, importlib, typing names)
    return sorted(set(__all__) | set(_ATTRS) | set(_SUBMODULES))


# -- timm registry: register lowps's models whenever timm is (or has been) imported ----------------

def _register_models() -> None:
    importlib.import_module(".backbones", __name__)


class _AfterTimm(importlib.abc.MetaPathFinder):
    """Runs `_register_models` right after ``import timm`` finishes (a post-import hook)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # find the real spec with the other finders, once
        try:
            spec = importlib.util.find_spec("timm")
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        real_exec = loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            real_exec(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_models()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "timm" in sys.modules:
    _register_models()
elif not any(isinstance(f, _AfterTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTimm())
