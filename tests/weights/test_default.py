"""The shipped default: loads offline, matches the model card, reproduces its accuracy."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowps
from lowps.data.imagenet import load_split
from lowps.train.backbone import evaluate

ROOT = Path(__file__).resolve().parents[2]


def test_default_loads_offline_and_matches_model_card():
    code = ("import lowps; m = lowps.PerceptualDistance(); "
            "print(m.backbone.weights_name, m.backbone.weights_sha256)")
    env = dict(os.environ, LOWPS_OFFLINE="1", HF_HUB_OFFLINE="1", LOWPS_HOME="/nonexistent/lowps")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    name, sha = out.stdout.split()
    assert name == lowps.weights.default_for("resnet6").name
    card = (ROOT / "docs" / "models.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("|") and f"`{name}`" in line)
    assert re.search(r"`([0-9a-f]{64})`", row).group(1) == sha


def test_default_is_trained_not_random():
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert not torch.allclose(lowps.distance(x, y), lowps.distance(x, y, weights="random"))


@pytest.mark.slow
def test_default_classifier_reproduces_card_top1(tiny_imagenet):
    entry = lowps.weights.default_for("resnet6")
    bb = lowps.weights.build_backbone("resnet6", None)
    res = evaluate(bb.model.to(memory_format=torch.channels_last), load_split(f"tiny-imagenet:{tiny_imagenet}", "val"),
                   torch.device("cpu"))
    assert abs(res["top1"] - entry.metrics["top1"]) <= 0.5


def test_readme_main_command_works():
    r = subprocess.run([str(Path(sys.executable).parent / "lowps"), "distance", "examples/images/ref.png",
                        "examples/images/blur.png"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, LOWPS_OFFLINE="1"))
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) > 0


TRAINED = [e for e in lowps.weights.list_weights() if e.kind == "backbone" and e.embedded and e.metrics.get("top1")]


def test_every_shipped_checkpoint_is_in_the_model_card_with_its_sha256():
    card = (ROOT / "docs" / "models.md").read_text()
    assert {e.arch for e in TRAINED} >= {"resnet6"}
    for e in TRAINED:
        row = next((line for line in card.splitlines() if line.startswith("|") and f"`{e.name}`" in line), None)
        assert row is not None, f"{e.name} has no row in docs/models.md"
        assert e.sha256 in row and f"{e.metrics['top1']:.2f}" in row


@pytest.mark.slow
@pytest.mark.parametrize("entry", TRAINED, ids=[e.name for e in TRAINED])
def test_shipped_classifier_reproduces_its_top1(entry, tiny_imagenet):
    bb = lowps.weights.build_backbone(entry.arch, entry.name)
    res = evaluate(bb.model.float().to(memory_format=torch.channels_last),
                   load_split(f"tiny-imagenet:{tiny_imagenet}", "val"), torch.device("cpu"))
    assert abs(res["top1"] - entry.metrics["top1"]) <= 0.5, (entry.name, res["top1"])


def _select_default():
    import importlib.util
    spec = importlib.util.spec_from_file_location("select_default", ROOT / "tools" / "select_default.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_default_rule_records_pick_the_shipped_step():
    """docs/records: every checkpoint record the default rule reads (a re-run of the shipped run's recipe)."""
    import json
    tool = _select_default()
    path = ROOT / "docs" / "records" / "resnet6-tiny-rerun.json"
    doc = json.loads(path.read_text())
    records = tool.load_records(path)
    default = lowps.weights.default_for("resnet6")
    shipped = {e.metrics["step"]: e.metrics["top1"] for e in TRAINED if e.arch == "resnet6"}
    pick = tool.select(records)
    assert pick == doc["selected"] and pick["step"] == default.metrics["step"]
    steps = [r["step"] for r in records]
    assert steps[-1] == max(shipped) and set(range(0, steps[-1], 250)) <= set(steps)  # every checkpoint
    # the rule against either run's final accuracy: every earlier checkpoint of the records is below half
    for final in (records[-1]["top1"], shipped[max(shipped)]):
        assert all(r["top1"] < final / 2 for r in records if r["step"] < pick["step"])
        assert pick["top1"] >= final / 2 and shipped[pick["step"]] >= final / 2
    # same recipe as the shipped run: top-1 at the shipped steps within 1.5 points (observed: <= 0.93,
    # run-to-run float differences; another recipe or dataset would be off by several points)
    by_step = {r["step"]: r["top1"] for r in records}
    for step, top1 in shipped.items():
        assert abs(by_step[step] - top1) <= 1.5, (step, by_step[step], top1)
    assert doc["config"]["init"] == "kaiming" and doc["config"]["bias_decay"] is False
