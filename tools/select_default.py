"""Apply the model card's rule for the default checkpoint to a run's JSON files.

Rule: the earliest checkpoint whose val top-1 reaches half of the run's final top-1.
(Kumar et al. 2022: perceptual score peaks early in training, at low accuracy; ResNets peak at
15-25% ImageNet top-1, well below their final accuracy. BAPPS cannot be scored where lowps is
trained, so the rule uses accuracy relative to the run's own plateau, which transfers across
datasets with different class counts.)

    python tools/select_default.py RUN_DIR
"""
import json
import sys
from pathlib import Path


def select(run: Path) -> dict:
    records = sorted((json.loads(f.read_text()) for f in run.glob("step*.json")), key=lambda r: r["step"])
    final = records[-1]
    return next(r for r in records if r["top1"] >= final["top1"] / 2)


if __name__ == "__main__":
    run = Path(sys.argv[1])
    r = select(run)
    records = sorted((json.loads(f.read_text()) for f in run.glob("step*.json")), key=lambda r: r["step"])
    print(f"final: step {records[-1]['step']} top-1 {records[-1]['top1']}%; threshold {records[-1]['top1'] / 2:.3f}%")
    print(f"default: {r['file']} (step {r['step']}, epoch {r['epoch']}, top-1 {r['top1']}%)")
