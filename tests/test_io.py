"""lowps._io.atomic_path: the one way outputs (JSON, CSV, checkpoints, resume states) are written."""
import pytest
import torch

from lowps._io import OutputError, atomic_path, write_json
from lowps.weights import save_checkpoint


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "x.json"
    write_json(out, {"a": 1})
    with pytest.raises(KeyboardInterrupt), atomic_path(out) as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert out.read_text().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    m = torch.nn.Linear(2, 2)
    p = tmp_path / "c.safetensors"
    sha = save_checkpoint(p, m)
    import safetensors.torch

    def broken(state, path, metadata=None):
        open(path, "wb").write(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OutputError, match="No space left"):
        save_checkpoint(p, m)
    from lowps.weights.hub import sha256_file
    assert sha256_file(p) == sha and [f.name for f in tmp_path.iterdir()] == ["c.safetensors"]
    with pytest.raises(OutputError, match="is a directory"):
        save_checkpoint(tmp_path, m)
