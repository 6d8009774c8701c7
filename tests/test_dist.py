"""lowps._dist: one rank/world helper; library functions refuse to run N times under torchrun without a group."""
import pytest

from lowps._dist import process_group_from_env, rank_world, require_group_if_launched


def test_single_process_defaults(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_world() == (0, 1)
    require_group_if_launched("x")  # not launched by torchrun: fine
    with process_group_from_env("cpu") as rw:
        assert rw == (0, 1)


def test_launched_without_a_group_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2.*process_group_from_env"):
        require_group_if_launched("train_backbone")
    from lowps.train.backbone import TrainConfig, train_backbone
    with pytest.raises(RuntimeError, match="train_backbone"):
        train_backbone(TrainConfig(data="folder:" + str(tmp_path), out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
