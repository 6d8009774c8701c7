"""The TensorFlow checkpoint reader (no TensorFlow) against TensorFlow's own reader, byte for byte."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  (torchvision must be imported before TensorFlow, or it segfaults)

from lowps.weights import WeightsError
from lowps.weights.tf_checkpoint import TFCheckpoint, read_tf_checkpoint
from tf_fixtures import save_tf_checkpoint, tpu_resnet_vars

tf = pytest.importorskip("tensorflow", reason="the reader is checked against TensorFlow: pip install 'lowps[convert]'")

TF_TO_TORCH = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
               "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


def _variables(rng):
    return {
        "a": tf.Variable(rng.random((3, 4)).astype(np.float32)),
        "b": tf.Variable(rng.random(5).astype(np.float16)),
        "c": tf.Variable(tf.cast(rng.random((2, 3)), tf.bfloat16)),
        "empty": tf.Variable(np.zeros((0, 4), np.float32)),
        "scalar": tf.Variable(np.int64(7)),
        "i32": tf.Variable(rng.integers(-5, 5, (4,)).astype(np.int32)),
        "flag": tf.Variable(np.array([True, False])),
        **{f"big{k}": tf.Variable(rng.random((100, 100))) for k in range(3)},  # float64, 80 kB each
    }


def _bytes(x):
    """Raw bytes of a TF (numpy/ml_dtypes) or torch array, for exact comparison."""
    if isinstance(x, torch.Tensor):
        return x.view(torch.uint16).numpy().tobytes() if x.dtype == torch.bfloat16 else x.numpy().tobytes()
    return np.asarray(x).tobytes()


def _write(tmp_path, shards):
    """One checkpoint written by TensorFlow, in ``shards`` data files: several single-shard saves
    merged by TensorFlow's MergeV2Checkpoints (what a sharded Saver does with one save per device)."""
    variables = {k: v for k, v in _variables(np.random.default_rng(0)).items()}
    if shards == 1:
        return tf.train.Checkpoint(**variables).write(str(tmp_path / "ckpt"))
    names = sorted(variables)
    parts = []
    for k in range(shards):
        part = str(tmp_path / f"part-{k}")
        mine = names[k::shards]
        tf.raw_ops.SaveV2(prefix=part, tensor_names=mine, shape_and_slices=[""] * len(mine),
                          tensors=[variables[n].read_value() for n in mine])
        parts.append(part)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=str(tmp_path / "ckpt"))
    return str(tmp_path / "ckpt")


@pytest.mark.parametrize("shards", [1, 3])
def test_equal_to_tensorflow_byte_for_byte(tmp_path, shards):
    prefix = _write(tmp_path, shards)
    ours, theirs = TFCheckpoint(prefix), tf.train.load_checkpoint(prefix)
    assert ours.num_shards == shards and len(ours.data_files) == shards
    dtypes = theirs.get_variable_to_dtype_map()
    assert set(ours.tensors) == set(dtypes)
    numeric = [k for k, d in dtypes.items() if d != tf.string]
    assert len(numeric) >= 10
    for k in numeric:
        got, want = ours.get_tensor(k), theirs.get_tensor(k)
        assert tuple(got.shape) == np.shape(want), k
        assert got.dtype == TF_TO_TORCH[dtypes[k].name], k
        assert _bytes(got) == _bytes(want), k
    string = [k for k, d in dtypes.items() if d == tf.string]
    if string:  # the object graph of tf.train.Checkpoint
        with pytest.raises(WeightsError, match="dtype string"):
            ours.get_tensor(string[0])


def _resnet6_checkpoint(tmp_path):
    variables, _ = tpu_resnet_vars(np.random.default_rng(6), 6)
    prefix = tmp_path / "model.ckpt-3000"
    save_tf_checkpoint(prefix, variables)
    return prefix


def test_resnet6_without_tensorflow_equals_tensorflow_reading(tmp_path):
    """The paper's case: a TF-written ResNet-6 checkpoint converted in a process where TensorFlow
    cannot be imported equals the state dict built from TensorFlow's own reader."""
    import timm

    from lowps.weights import load_state_dict
    from lowps.weights.convert_tf import state_dict_from_tf_arrays

    prefix = _resnet6_checkpoint(tmp_path)
    out = tmp_path / "r6.safetensors"
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "from lowps.weights.convert_tf import convert_tf_checkpoint\n"
            f"convert_tf_checkpoint({str(prefix)!r}, 'resnet6', {str(out)!r})\n"
            "assert not any(m.startswith('tensorflow') for m, v in sys.modules.items() if v is not None)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    reader = tf.train.load_checkpoint(str(prefix))
    arrays = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
    model = timm.create_model("resnet6", num_classes=7)
    want = state_dict_from_tf_arrays(model, arrays)
    got = load_state_dict(out)[0]
    assert set(want) <= set(got)
    for k, v in want.items():
        assert torch.equal(got[k], v.float()), k


def test_corrupt_and_truncated_files_are_weights_errors(tmp_path):
    prefix = _resnet6_checkpoint(tmp_path)
    index, data = Path(f"{prefix}.index"), Path(f"{prefix}.data-00000-of-00001")
    good_index, good_data = index.read_bytes(), data.read_bytes()
    name = "resnet_model/conv2d_1/kernel"
    assert TFCheckpoint(prefix).get_tensor(name).shape == (1, 1, 64, 64)

    data.write_bytes(good_data[:100] + bytes([good_data[100] ^ 0xFF]) + good_data[101:])  # a flipped byte
    with pytest.raises(WeightsError, match="CRC32C"):
        read_tf_checkpoint(prefix)
    data.write_bytes(good_data[: len(good_data) // 2])  # truncated data
    with pytest.raises(WeightsError, match="past the end|CRC32C"):
        read_tf_checkpoint(prefix)
    data.unlink()
    with pytest.raises(WeightsError, match="missing"):
        read_tf_checkpoint(prefix)
    data.write_bytes(good_data)

    index.write_bytes(good_index[:-1])  # truncated index: the footer's magic is gone
    with pytest.raises(WeightsError, match="magic|truncated"):
        TFCheckpoint(prefix)
    index.write_bytes(good_index[:20])
    with pytest.raises(WeightsError, match="too short"):
        TFCheckpoint(prefix)
    index.write_bytes(bytes([good_index[0] ^ 0xFF]) + good_index[1:])  # a flipped byte in a block
    with pytest.raises(WeightsError, match="CRC32C"):
        TFCheckpoint(prefix)
    index.write_bytes(b"")
    with pytest.raises(WeightsError):
        TFCheckpoint(prefix)
    index.unlink()
    with pytest.raises(WeightsError, match="cannot read"):
        TFCheckpoint(prefix)
    index.write_bytes(good_index)
    assert TFCheckpoint(f"{prefix}.index").prefix == str(prefix)  # the .index path is accepted too
    assert os.path.basename(TFCheckpoint(data).prefix) == "model.ckpt-3000"
