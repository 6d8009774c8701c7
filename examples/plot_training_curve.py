"""Plot top-1 against training step from a `lowps train backbone` run's JSON files.

    python examples/plot_training_curve.py RUN_DIR [--out curve.png] [--bapps-root DIR]

With --bapps-root, each checkpoint is also scored on BAPPS 2AFC val (mean-pool head) and the
perceptual score is drawn on a second axis: the paper's early peak becomes visible.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--out", default="curve.png")
    p.add_argument("--bapps-root", default=None)
    p.add_argument("--categories", nargs="+", default=None)
    a = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = sorted((json.loads(f.read_text()) for f in Path(a.run).glob("step*.json")), key=lambda r: r["step"])
    if not records:
        raise SystemExit(f"no step*.json files in {a.run}")
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["top1"] for r in records], "o-", label="val top-1 (%)")
    ax.set_xscale("symlog", linthresh=100)
    ax.set_xlabel("training step")
    ax.set_ylabel("top-1 (%)")
    if a.bapps_root:
        from lowps.agreement import build_scorer, score_bapps

        ps = []
        for r in records:
            scorer = build_scorer("lowps", backbone=r["arch"], weights=str(Path(a.run) / r["file"]))
            rep = score_bapps(a.bapps_root, scorer, categories=a.categories, progress=False)
            ps.append(100 * rep["summary"].get("all", sum(c["score"] for c in rep["categories"].values())
                                               / len(rep["categories"])))
        ax2 = ax.twinx()
        ax2.plot(steps, ps, "s--", color="C1", label="BAPPS 2AFC (%)")
        ax2.set_ylabel("2AFC (%)")
    ax.set_title(f"{records[0]['arch']}: {Path(a.run).name}")
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out} ({len(records)} checkpoints, final top-1 {records[-1]['top1']:.2f}%)")


if __name__ == "__main__":
    main()
