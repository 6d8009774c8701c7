import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from lowps.data.imagenet import DataError, load_split


def _jpeg(seed):
    arr = (np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def make_tiny(root, classes=3, per_class=4, val_per_class=2):
    root.mkdir(parents=True, exist_ok=True)
    wnids = [f"n{i:08d}" for i in range(classes)]
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    with zipfile.ZipFile(root / "train-00.zip", "w") as zf:
        for c, w in enumerate(wnids):
            for k in range(per_class):
                zf.writestr(f"train/{w}/{w}_{k}.JPEG", _jpeg(c * 100 + k))
    with zipfile.ZipFile(root / "val.zip", "w") as zf:
        for c, w in enumerate(wnids):
            for k in range(val_per_class):
                zf.writestr(f"val/{w}/val_{c}_{k}.JPEG", _jpeg(10_000 + c * 100 + k))
    return root


def test_tiny_imagenet_reader(tmp_path):
    root = make_tiny(tmp_path / "tiny")
    train = load_split(f"tiny-imagenet:{root}", "train")
    assert train.images.shape == (12, 3, 64, 64) and train.images.dtype.is_floating_point is False
    assert sorted(train.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    val = load_split(f"tiny-imagenet:{root}", "val")
    assert len(val) == 6 and val.classes == train.classes
    assert len(load_split(f"tiny-imagenet:{root}", "train", limit_per_class=1)) == 3


def test_real_tiny_imagenet_val(tiny_imagenet):
    val = load_split(f"tiny-imagenet:{tiny_imagenet}", "val")
    assert len(val) == 10_100 and len(val.classes) == 202


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="must be one of"):
        load_split("tiny:/x", "train")
    with pytest.raises(DataError, match="not found"):
        load_split(f"tiny-imagenet:{tmp_path / 'missing'}", "train")
    root = make_tiny(tmp_path / "t1")
    (root / "wnids.txt").write_text("n00000000\nn00000001\nn00000002\nn00000003\n")
    with pytest.raises(DataError, match="lists 4 classes but the train archives hold 3"):
        load_split(f"tiny-imagenet:{root}", "train")
    root = make_tiny(tmp_path / "t2")
    with zipfile.ZipFile(root / "train-00.zip", "a") as zf:
        zf.writestr("train/n00000000/broken.JPEG", b"not a jpeg")
    with pytest.raises(DataError, match="train-00.zip:train/n00000000/broken.JPEG"):
        load_split(f"tiny-imagenet:{root}", "train")
    root = make_tiny(tmp_path / "t3")
    with zipfile.ZipFile(root / "train-00.zip", "a") as zf:
        zf.writestr("images/x.JPEG", _jpeg(1))
    with pytest.raises(DataError, match="not laid out"):
        load_split(f"tiny-imagenet:{root}", "train")
    root = make_tiny(tmp_path / "t4")
    (root / "val.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="val.zip"):
        load_split(f"tiny-imagenet:{root}", "val")


def test_imagenet64_npz(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [("train_data_batch_1.npz", 10), ("val_data.npz", 4)]:
        np.savez(tmp_path / name, data=rng.integers(0, 255, (n, 12288), dtype=np.uint8),
                 labels=rng.integers(1, 1001, n))
    d = load_split(f"imagenet64:{tmp_path}", "train")
    assert d.images.shape == (10, 3, 64, 64) and int(d.labels.min()) >= 0 and int(d.labels.max()) <= 999
    raw = np.load(tmp_path / "train_data_batch_1.npz")["data"]
    assert (d.images[0, 1].numpy().reshape(-1) == raw[0, 4096:8192]).all()  # G plane
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 100), np.uint8), labels=np.ones(2))
    with pytest.raises(DataError, match="12288"):
        load_split(f"imagenet64:{tmp_path}", "val")


def test_folder(tmp_path):
    for split, n in [("train", 3), ("val", 1)]:
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(np.full((80, 100, 3), k * 40, np.uint8)).save(tmp_path / split / c / f"{k}.png")
    d = load_split(f"folder:{tmp_path}", "train")
    assert d.images.shape == (6, 3, 64, 64) and d.classes == ["cat", "dog"]
