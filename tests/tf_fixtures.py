"""TensorFlow checkpoints of the TPU ResNet layout, for the converter, reader and Cloud Storage tests."""
import numpy as np


def tpu_resnet_vars(rng, depth):
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


def save_tf_checkpoint(prefix, variables):
    """Write ``variables`` with TensorFlow's own SaveV2 op (one shard); import torchvision before calling
    (importing it after TensorFlow segfaults)."""
    import tensorflow as tf

    names = list(variables)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(variables[n]) for n in names])
