"""Score a folder of generated images against references (same file names), like an FID-free report.

    python examples/score_folder.py REFS GENERATED [--csv out.csv] [--weights ...]

Prints the mean, median and worst distances and writes per-image rows. With no arguments it scores
the distorted example images against copies of the reference.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import lowps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("refs", nargs="?")
    p.add_argument("generated", nargs="?")
    p.add_argument("--csv", default=None)
    p.add_argument("--weights", default=None)
    a = p.parse_args()
    tmp = None
    if a.refs is None:  # demo: every distorted example against the reference
        tmp = Path(tempfile.mkdtemp())
        images = Path(__file__).parent / "images"
        (tmp / "refs").mkdir()
        (tmp / "gen").mkdir()
        for f in images.glob("*.png"):
            if f.name != "ref.png":
                shutil.copy(images / "ref.png", tmp / "refs" / f.name)
                shutil.copy(f, tmp / "gen" / f.name)
        a.refs, a.generated = tmp / "refs", tmp / "gen"
    # the same library call as `lowps dirs REFS GENERATED`
    res = lowps.distance_folders(a.refs, a.generated, lowps.create_metric(weights=a.weights))
    for n, v in sorted(res.rows, key=lambda t: -t[1]):
        print(f"{n:24s} {v:.5f}")
    s = res.summary()
    print(f"mean {s['mean']:.5f}  median {s['median']:.5f}  worst {s['max']:.5f}  ({s['n']} images)")
    if a.csv:
        Path(a.csv).write_text("file,distance\n" + "".join(f"{n},{v:.6g}\n" for n, v in res.rows))
    if tmp:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
