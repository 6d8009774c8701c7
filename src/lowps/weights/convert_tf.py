"""Convert the paper's released TensorFlow checkpoints (TPU ResNet code) to lowps safetensors.

Kumar et al. 2022 released ResNet-6, -50 and -200 checkpoints every 1000 steps in the public bucket
``gs://gresearch/perceptual_similarity``. They come from the TPU ResNet code, whose ``tf.layers``
variables are named by creation order: ``conv2d/kernel``, ``conv2d_1/kernel``, ...,
``batch_normalization{,_N}/{gamma,beta,moving_mean,moving_variance}`` and ``dense/{kernel,bias}``
(optionally under a scope prefix such as ``resnet_model/``). Creation order is: stem conv + BN, then
per block the projection shortcut (conv + BN, first block of every stage) followed by the main-path
convs and BNs, then the classifier. Kernels are HWIO (TF) and become OIHW (PyTorch).

The checkpoint is read without TensorFlow (`lowps.weights.tf_checkpoint`); the ``convert`` extra
(TensorFlow) is only needed by the tests that check the reader against TensorFlow's own.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import cast

import numpy as np
import timm
import torch
from torch import nn

from ..backbones.resnet_tpu import TPUResNet
from . import WeightsError, _strict_load, save_checkpoint

__all__ = ["convert_tf_checkpoint", "tf_creation_order", "state_dict_from_tf_arrays"]

_ARCH_ALIASES = {"resnet50": "resnet50_tpu", "resnet200": "resnet200_tpu", "resnet18": "resnet18_tpu"}
_LAYER_RE = re.compile(r"^(?:(?P<scope>.*)/)?(?P<kind>conv2d|batch_normalization|dense)(?:_(?P<idx>\d+))?/"
                       r"(?P<var>kernel|bias|gamma|beta|moving_mean|moving_variance)$")


def tf_creation_order(model: TPUResNet) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) modules of ``model`` in the order the TPU code creates its variables."""
    return [(cast(nn.Conv2d, model.get_submodule(c)), cast(nn.BatchNorm2d, model.get_submodule(b)))
            for c, b in model.conv_bn_pairs()]


def state_dict_from_tf_arrays(model: TPUResNet, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map TF variable arrays (name -> value) onto ``model``'s state-dict keys; strict about counts and shapes."""
    convs: dict[int, np.ndarray] = {}
    bns: dict[int, dict[str, np.ndarray]] = {}
    dense: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        m = _LAYER_RE.match(name)
        if m is None:
            continue  # optimizer slots, global_step, EMA shadows...
        idx = int(m["idx"] or 0)
        if m["kind"] == "conv2d" and m["var"] == "kernel":
            convs[idx] = value
        elif m["kind"] == "batch_normalization":
            bns.setdefault(idx, {})[m["var"]] = value
        elif m["kind"] == "dense":
            dense[m["var"]] = value
    order = tf_creation_order(model)
    if len(convs) != len(order) or len(bns) != len(order):
        raise WeightsError(f"the checkpoint has {len(convs)} conv2d and {len(bns)} batch_normalization layers; "
                           f"{type(model).__name__} with this depth needs {len(order)} of each. Check --arch")
    names = {id(mod): key for key, mod in model.named_modules()}
    out: dict[str, torch.Tensor] = {}
    for k, (conv, bn) in enumerate(order):
        kernel = torch.from_numpy(np.ascontiguousarray(convs[sorted(convs)[k]].transpose(3, 2, 0, 1)))
        if tuple(kernel.shape) != tuple(conv.weight.shape):
            raise WeightsError(f"conv2d #{k}: kernel {tuple(kernel.shape)} (OIHW) does not fit "
                               f"{names[id(conv)]} {tuple(conv.weight.shape)}; check --arch")
        out[f"{names[id(conv)]}.weight"] = kernel
        b = bns[sorted(bns)[k]]
        missing = {"gamma", "beta", "moving_mean", "moving_variance"} - set(b)
        if missing:
            raise WeightsError(f"batch_normalization #{k} lacks {sorted(missing)}")
        prefix = names[id(bn)]
        for tf_key, pt_key in [("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                               ("moving_variance", "running_var")]:
            t = torch.from_numpy(np.ascontiguousarray(b[tf_key])).float()
            if t.shape != bn.weight.shape:
                raise WeightsError(f"batch_normalization #{k}/{tf_key}: shape {tuple(t.shape)} does not fit {prefix}")
            out[f"{prefix}.{pt_key}"] = t
    if isinstance(model.fc, nn.Linear):
        if set(dense) != {"kernel", "bias"}:
            raise WeightsError("the checkpoint has no dense/kernel and dense/bias; pass --num-classes 0")
        out["fc.weight"] = torch.from_numpy(np.ascontiguousarray(dense["kernel"].T)).float()
        out["fc.bias"] = torch.from_numpy(np.ascontiguousarray(dense["bias"])).float()
    return out


def convert_tf_checkpoint(prefix: str | os.PathLike[str], arch: str, out: str | os.PathLike[str],
                          num_classes: int | None = None) -> str:
    """Read TF checkpoint ``prefix`` (e.g. ``.../model.ckpt-1000``), write ``out`` (safetensors); return sha256.

    The checkpoint is read by `lowps.weights.tf_checkpoint` (no TensorFlow needed); every tensor's
    CRC32C is checked."""
    from .tf_checkpoint import TFCheckpoint

    arch = _ARCH_ALIASES.get(arch, arch)
    reader = TFCheckpoint(prefix)
    names = [name for name in reader.tensors if _LAYER_RE.match(name)]
    arrays = {name: reader.get_tensor(name).float().numpy() for name in names}
    if num_classes is None:
        dense_bias = [v for k, v in arrays.items() if k.endswith("dense/bias")]
        # The TPU code uses 1001 classes (index 0 = background) for ImageNet; keep what the file has.
        num_classes = int(dense_bias[0].shape[0]) if dense_bias else 0
    model = timm.create_model(arch, num_classes=num_classes)
    if not isinstance(model, TPUResNet):
        raise WeightsError(f"--arch must be a TPU-style ResNet (resnet6, resnet10, resnet18_tpu, resnet50_tpu, "
                           f"resnet200_tpu), got {arch!r}")
    state = state_dict_from_tf_arrays(model, arrays)
    _strict_load(model, state, f"converted checkpoint {reader.prefix}")
    step = int(reader.get_tensor("global_step")) if "global_step" in reader.tensors else -1
    return save_checkpoint(Path(out), model, arch=arch, num_classes=num_classes, step=step,
                           source=f"tf:{Path(reader.prefix).name}")
