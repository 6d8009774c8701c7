"""lowps.folders: the library function behind `lowps dirs` and examples/score_folder.py."""
import numpy as np
import pytest
import torch
from PIL import Image

import lowps
from lowps.folders import distance_folders, images_in, readable_images
from lowps.inputs import InputError, load_image


def _write(d, names, seed, size=32):
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / n)


def test_distances_equal_the_metric_on_each_pair(tmp_path):
    _write(tmp_path / "a", ["x.png", "y.png", "z.png", "only_a.png"], 0)
    _write(tmp_path / "b", ["x.png", "y.png", "z.png", "only_b.png"], 1)
    _write(tmp_path / "a", ["big.png"], 2, size=48)  # another size: its own batch
    _write(tmp_path / "b", ["big.png"], 3, size=48)
    seen = []
    m = lowps.create_metric()
    res = distance_folders(tmp_path / "a", tmp_path / "b", m, batch_size=2, on_unpaired=seen.append)
    assert [n for n, _ in res.rows] == ["big.png", "x.png", "y.png", "z.png"]
    assert res.unpaired == ["only_a.png", "only_b.png"] and seen == [res.unpaired]
    for name, d in res.rows:
        ref = float(m(load_image(tmp_path / "a" / name), load_image(tmp_path / "b" / name)))
        # batches of 1 vs 2: oneDNN may pick other kernels, ~1e-6 relative (docs/performance.md)
        assert d == pytest.approx(ref, rel=1e-4)
    s = res.summary()
    assert s["n"] == 4 and s["max"] == max(d for _, d in res.rows)


def test_errors_and_skipping(tmp_path):
    _write(tmp_path / "a", ["x.png", "y.png"], 0)
    _write(tmp_path / "b", ["x.png"], 1, size=40)
    (tmp_path / "b" / "y.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="x.png.*resize one"):
        distance_folders(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "x.png").unlink()
    with pytest.raises(InputError, match="skip_bad=True"):
        distance_folders(tmp_path / "a", tmp_path / "b")
    skipped = []
    res = distance_folders(tmp_path / "a", tmp_path / "b", skip_bad=True, on_skip=lambda p, e: skipped.append(p.name))
    assert res.rows == [] and skipped == ["y.png"] and res.skipped[0].endswith("y.png")
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert readable_images(images_in(tmp_path / "b"), skip_bad=True) == []
    with pytest.raises(ValueError, match="no file names in common"):
        distance_folders(tmp_path / "a", tmp_path / "c" if (tmp_path / "c").mkdir() is None else None)
    with pytest.raises(ValueError, match="not a directory"):
        images_in(tmp_path / "missing")


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    _write(tmp_path, ["b.png", ".hidden.png"], 0)
    (tmp_path / "notes.txt").write_text("x")
    assert [f.name for f in images_in(tmp_path)] == ["b.png"]
    assert torch.is_tensor(lowps.distance_folders(tmp_path, tmp_path).distances)
