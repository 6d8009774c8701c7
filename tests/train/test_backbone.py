import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import lowps
from conftest import free_port
from lowps.cli import main

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from test_imagenet import make_tiny  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny", classes=4, per_class=16, val_per_class=4)


def _train(data, out, *extra):
    return main(["train", "backbone", "--arch", "resnet6", "--data", f"tiny-imagenet:{data}", "--epochs", "2",
                 "--batch-size", "16", "--ckpt-every", "4", "--ckpt-steps", "0,1", "--out", str(out), "--quiet",
                 "--threads", "1", *extra])


def test_train_writes_checkpoints_with_json(data, tmp_path):
    assert _train(data, tmp_path / "run") == 0
    steps = sorted(p.stem for p in (tmp_path / "run").glob("step*.json"))
    assert steps == ["step0000000", "step0000001", "step0000004", "step0000008"]
    rec = json.loads((tmp_path / "run" / "step0000008.json").read_text())
    assert rec["step"] == 8 and rec["epoch"] == 2.0 and 0 <= rec["top1"] <= rec["top5"] <= 100
    assert rec["config"]["arch"] == "resnet6" and rec["config"]["num_classes"] == 4
    assert lowps.weights.verify(tmp_path / "run" / "step0000008.safetensors") == rec["sha256"]
    # a checkpoint is usable as metric weights, and `lowps eval` reproduces its top-1
    m = lowps.PerceptualDistance(weights=tmp_path / "run" / "step0000008.safetensors")
    assert m.backbone.model.fc.out_features == 4
    out = subprocess.run([sys.executable, "-m", "lowps.cli", "eval", "--arch", "resnet6", "--weights",
                          str(tmp_path / "run" / "step0000008.safetensors"), "--data", f"tiny-imagenet:{data}"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["top1"] == pytest.approx(rec["top1"], abs=1e-6)


def test_training_leaves_the_callers_rng_and_threads_alone(data, tmp_path):
    """Issue #36: train_backbone (here with threads=1) seeds its own state and restores the caller's."""
    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    assert _train(data, tmp_path / "run", "--stop-after", "1") == 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_num_threads() == threads


def test_interrupted_run_resumes_identically(data, tmp_path):
    assert _train(data, tmp_path / "full") == 0
    assert _train(data, tmp_path / "part", "--stop-after", "3") == 0
    assert not (tmp_path / "part" / "step0000008.safetensors").exists()
    assert _train(data, tmp_path / "part", "--resume") == 0
    a = load_file(tmp_path / "full" / "step0000008.safetensors")
    b = load_file(tmp_path / "part" / "step0000008.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_or_with_a_damaged_resume_file(tmp_path):
    from lowps.train.backbone import _resume

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="nothing to resume.*step 0"):
        assert _resume(tmp_path, model, opt, torch.device("cpu")) == 0
    (tmp_path / "resume.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot resume from .*resume.pt.*drop --resume"):
        _resume(tmp_path, model, opt, torch.device("cpu"))
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": 7}, tmp_path / "resume.pt")
    assert _resume(tmp_path, model, opt, torch.device("cpu")) == 7


def test_torchrun_two_cpu_processes(data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "lowps.cli", "train", "backbone", "--arch", "resnet6", "--data", f"tiny-imagenet:{data}",
           "--epochs", "1", "--batch-size", "16", "--ckpt-every", "2", "--ckpt-steps", "0",
           "--out", str(tmp_path / "ddp"), "--quiet", "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path / "ddp" / "step0000004.json").read_text())
    assert rec["config"]["world_size"] == 2 and rec["step"] == 4
