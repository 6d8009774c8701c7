"""Converter parity: a TPU-layout ResNet checkpoint written by TensorFlow, run by TensorFlow's own ops."""
import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  (torchvision must be imported before TensorFlow, or it segfaults)

import lowps
from lowps.cli import main
from lowps.weights import WeightsError

tf = pytest.importorskip("tensorflow", reason="the converter needs TensorFlow: pip install 'lowps[convert]'")

EPS = 1e-5


def _tpu_resnet_vars(rng, depth):
    """Random variables named as the TPU ResNet code names them, in its creation order."""
    names, idx = {}, {"conv": 0, "bn": 0}

    def conv(k, cin, cout):
        n = "conv2d" + (f"_{idx['conv']}" if idx["conv"] else "")
        idx["conv"] += 1
        names[f"resnet_model/{n}/kernel"] = rng.normal(0, (2 / (k * k * cin)) ** 0.5, (k, k, cin, cout)).astype(np.float32)
        return f"resnet_model/{n}/kernel"

    def bn(c):
        n = "batch_normalization" + (f"_{idx['bn']}" if idx["bn"] else "")
        idx["bn"] += 1
        p = f"resnet_model/{n}/"
        names[p + "gamma"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        names[p + "beta"] = rng.normal(0, 0.1, c).astype(np.float32)
        names[p + "moving_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
        names[p + "moving_variance"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        return p

    layers = {"stem": (conv(7, 3, 64), bn(64)), "blocks": []}
    cin = 64
    per_stage = {6: [1, 1, 1, 1], 10: [1, 1, 1, 1]}[depth]
    for s, (w, n) in enumerate(zip([64, 128, 256, 512], per_stage)):
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            proj = (conv(1, cin, w), bn(w)) if b == 0 else None
            if depth == 6:
                main_path = [(conv(3, cin, w), bn(w), stride)]
            else:
                main_path = [(conv(3, cin, w), bn(w), stride), (conv(3, w, w), bn(w), 1)]
            layers["blocks"].append((proj, main_path, stride))
            cin = w
    names["resnet_model/dense/kernel"] = rng.normal(0, 0.01, (512, 7)).astype(np.float32)
    names["resnet_model/dense/bias"] = rng.normal(0, 0.01, 7).astype(np.float32)
    names["global_step"] = np.array(3000, dtype=np.int64)
    names["resnet_model/conv2d/kernel/Momentum"] = np.zeros((7, 7, 3, 64), np.float32)  # optimizer slot: ignored
    return names, layers


def _tf_forward(v, layers, x_nhwc):
    """The TPU code's forward with TF ops: fixed padding for strided convs, SAME max-pool."""
    def conv(x, kname, stride):
        k = tf.constant(v[kname])
        if stride > 1:
            ks = k.shape[0]
            pb = (ks - 1) // 2
            x = tf.pad(x, [[0, 0], [pb, ks - 1 - pb], [pb, ks - 1 - pb], [0, 0]])
            return tf.nn.conv2d(x, k, stride, "VALID")
        return tf.nn.conv2d(x, k, 1, "SAME")

    def bn(x, p, relu=True):
        y = tf.nn.batch_normalization(x, v[p + "moving_mean"], v[p + "moving_variance"], v[p + "beta"],
                                      v[p + "gamma"], EPS)
        return tf.nn.relu(y) if relu else y

    x = bn(conv(x_nhwc, layers["stem"][0], 2), layers["stem"][1])
    x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    feats = []
    for i, (proj, main_path, stride) in enumerate(layers["blocks"]):
        shortcut = bn(conv(x, proj[0], stride), proj[1], relu=False) if proj else x
        y = x
        for j, (k, p, s) in enumerate(main_path):
            y = bn(conv(y, k, s), p, relu=j < len(main_path) - 1)
        x = tf.nn.relu(y + shortcut)
        feats.append(x)
    return feats


def _save_tf_checkpoint(prefix, variables):
    names = list(variables)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(variables[n]) for n in names])


@pytest.mark.parametrize("depth,arch", [(6, "resnet6"), (10, "resnet10")])
@pytest.mark.parametrize("size", [64, 50])
def test_converted_features_equal_tensorflow(tmp_path, depth, arch, size):
    rng = np.random.default_rng(depth)
    variables, layers = _tpu_resnet_vars(rng, depth)
    prefix = tmp_path / "model.ckpt-3000"
    _save_tf_checkpoint(prefix, variables)
    out = tmp_path / f"{arch}.safetensors"
    assert main(["weights", "convert", "--from-tf", str(prefix), "--arch", arch, "--out", str(out)]) == 0

    x = rng.uniform(-2, 2, (2, size, size, 3)).astype(np.float32)
    tf_feats = [f.numpy() for f in _tf_forward(variables, layers, tf.constant(x))]
    bb = lowps.weights.build_backbone(arch, out)
    with torch.no_grad():
        pt_feats = bb(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    for a, b in zip(tf_feats, pt_feats):
        b = b.permute(0, 2, 3, 1).numpy()
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(a).max())
    assert bb.model.fc.out_features == 7
    meta = lowps.weights.load_state_dict(out)[1]
    assert meta["step"] == "3000" and meta["arch"] == arch


def test_wrong_arch_is_an_error(tmp_path):
    variables, _ = _tpu_resnet_vars(np.random.default_rng(0), 6)
    prefix = tmp_path / "model.ckpt-1"
    _save_tf_checkpoint(prefix, variables)
    from lowps.weights.convert_tf import convert_tf_checkpoint
    with pytest.raises(WeightsError, match="needs"):
        convert_tf_checkpoint(prefix, "resnet50", tmp_path / "x.safetensors")


def test_missing_checkpoint_is_an_error(tmp_path):
    from lowps.weights.convert_tf import convert_tf_checkpoint
    with pytest.raises(WeightsError, match="cannot read"):
        convert_tf_checkpoint(tmp_path / "nope.ckpt-1", "resnet6", tmp_path / "x.safetensors")
