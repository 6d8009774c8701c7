"""Converter parity: a TPU-layout ResNet checkpoint written by TensorFlow, run by TensorFlow's own ops."""
import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  (torchvision must be imported before TensorFlow, or it segfaults)

import lowps
from lowps.cli import main
from lowps.weights import WeightsError
from tf_fixtures import save_tf_checkpoint, tpu_resnet_vars  # noqa: E402

tf = pytest.importorskip("tensorflow", reason="the converter needs TensorFlow: pip install 'lowps[convert]'")

EPS = 1e-5


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


@pytest.mark.parametrize("depth,arch", [(6, "resnet6"), (10, "resnet10")])
@pytest.mark.parametrize("size", [64, 50])
def test_converted_features_equal_tensorflow(tmp_path, depth, arch, size):
    rng = np.random.default_rng(depth)
    variables, layers = tpu_resnet_vars(rng, depth)
    prefix = tmp_path / "model.ckpt-3000"
    save_tf_checkpoint(prefix, variables)
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
    variables, _ = tpu_resnet_vars(np.random.default_rng(0), 6)
    prefix = tmp_path / "model.ckpt-1"
    save_tf_checkpoint(prefix, variables)
    from lowps.weights.convert_tf import convert_tf_checkpoint
    with pytest.raises(WeightsError, match="needs"):
        convert_tf_checkpoint(prefix, "resnet50", tmp_path / "x.safetensors")


def test_missing_checkpoint_is_an_error(tmp_path):
    from lowps.weights.convert_tf import convert_tf_checkpoint
    with pytest.raises(WeightsError, match="cannot read"):
        convert_tf_checkpoint(tmp_path / "nope.ckpt-1", "resnet6", tmp_path / "x.safetensors")
