import json
import os
import sys

import torch

from lowps.cli import main
from lowps.sanity import DISTORTIONS, distort_batch, sanity_table

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
from test_imagenet import make_tiny  # noqa: E402


def test_distortions_shapes_and_identity():
    x = torch.rand(2, 3, 64, 64)
    for kind, sev in DISTORTIONS.items():
        a, b = distort_batch(x, kind, sev[0])
        assert a.shape == b.shape == (2, 3, 48, 48) and 0 <= float(b.min()) and float(b.max()) <= 1
    a, b = distort_batch(x, "shift", 2)
    assert torch.equal(a[..., 2:], b[..., :-2])  # a 2-px translation


def test_sanity_table_detects_monotonicity():
    x = torch.rand(4, 3, 64, 64)
    # L2 distance grows with every distortion on noise images, a metric that ignores input does not
    l2 = lambda a, b: (a - b).pow(2).flatten(1).mean(1)  # noqa: E731
    const = lambda a, b: torch.zeros(a.shape[0])  # noqa: E731
    t = sanity_table({"l2": l2, "const": const}, x)
    assert t["l2"]["noise"]["within"] > 0.95 and t["l2"]["blur"]["within"] > 0.95
    assert not (t["const"]["noise"]["within"] > 0.5)  # NaN (constant) or low


def test_sanity_cli(tmp_path, capsys):
    root = make_tiny(tmp_path / "tiny", classes=2, per_class=1, val_per_class=3)
    out = tmp_path / "s.json"
    assert main(["sanity", "--data", f"tiny-imagenet:{root}", "--weights", "random", "--n", "6",
                 "--json", str(out)]) == 0
    table = json.loads(out.read_text())["table"]
    assert set(table["random"]) == set(DISTORTIONS)
    assert "| random |" in capsys.readouterr().out
