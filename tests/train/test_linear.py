import json
import os
import sys

import pytest
import torch

import lowps
from lowps.cli import main, score_main

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bapps_fixture import make_bapps  # noqa: E402

pytestmark = pytest.mark.slow


def test_learned_head_beats_untrained_on_held_out(tmp_path, capsys):
    # judges follow the noise and ignore a colour shift: learnable by re-weighting channels
    make_bapps(tmp_path / "train" / "dataset", n=100, categories=("traditional", "cnn"), split="train",
               rule="noise-only", seed=0)
    make_bapps(tmp_path / "val" / "dataset", n=100, categories=("traditional",), rule="noise-only", seed=10)
    head = tmp_path / "head.safetensors"
    assert main(["train", "linear", "--backbone", "resnet6", "--weights", "random", "--bapps-root",
                 str(tmp_path / "train"), "--epochs", "20", "--decay-epochs", "5", "--lr", "0.03",
                 "--out", str(head), "--quiet"]) == 0
    record = json.loads(head.with_suffix(".json").read_text())
    assert record["triplets"] == "200" and record["loss_per_epoch"][-1] < record["loss_per_epoch"][0]

    m = lowps.PerceptualDistance(distance="linear", weights="random", head_weights=head)
    assert all(float(getattr(m.head, f"lin{i}").weight.min()) >= 0 for i in range(4))

    scores = {}
    for hw in ("ones", str(head)):
        out = tmp_path / "score.json"
        assert score_main(["--root", str(tmp_path / "val"), "--weights", "random", "--distance", "linear",
                           "--head-weights", hw, "--json", str(out), "--quiet"]) == 0
        scores[hw] = json.loads(out.read_text())["categories"]["traditional"]["score"]
    assert scores[str(head)] > scores["ones"] + 0.03, scores


def test_head_for_another_backbone_is_rejected(tmp_path):
    make_bapps(tmp_path / "dataset", n=4, categories=("traditional",), split="train")
    head = tmp_path / "h.safetensors"
    assert main(["train", "linear", "--weights", "random", "--bapps-root", str(tmp_path), "--epochs", "1",
                 "--decay-epochs", "0", "--out", str(head), "--quiet"]) == 0
    with pytest.raises(ValueError, match="trained on 'resnet6'"):
        lowps.PerceptualDistance(backbone="resnet10", distance="linear", weights="random", head_weights=head)
    assert torch.isfinite(lowps.PerceptualDistance(distance="linear", weights="random", head_weights=head)(
        torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))).all()


def test_training_leaves_the_callers_rng_and_threads_alone(tmp_path):
    """Issue #36: train_linear seeds its own state from ``seed`` and hands back the caller's."""
    from lowps.train.linear import train_linear

    make_bapps(tmp_path / "dataset", n=4, categories=("traditional",), split="train")
    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    train_linear("resnet6", str(tmp_path), str(tmp_path / "h.safetensors"), weights="random", epochs=1,
                 decay_epochs=0, progress=False)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_num_threads() == threads
