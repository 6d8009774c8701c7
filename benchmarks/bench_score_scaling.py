"""Scaling of ``lowps-score`` over a large pair list: one process against ``torchrun`` with K.

    python benchmarks/bench_score_scaling.py --make-fixture 3000 [--nproc 1 2] [--json FILE]
    python benchmarks/bench_score_scaling.py --root BAPPS/dataset [--nproc 1 2 4] [--device cuda]

Each run is the real CLI in a fresh process (imports, weights, dataset scan and PNG decoding
included), with the machine's cores split evenly between the processes (``OMP_NUM_THREADS``).
The script checks that every run wrote the same per-category scores, so speed never comes from
skipped work. ``--make-fixture N`` writes N 2AFC triplets per category (traditional, cnn) in BAPPS's
layout into a temporary folder (``tests/bapps_fixture.py``; BAPPS itself is not downloadable here).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_score(root: Path, nproc: int, cores: int, out: Path, extra: list[str]) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // nproc)))
    args = ["-m", "lowps.cli.score", "--root", str(root), "--quiet", "--json", str(out), *extra]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", "29533", *args]
    else:
        cmd = [sys.executable, *args]
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"run with {nproc} process(es) failed:\n{r.stderr[-3000:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", type=Path, help="a BAPPS 'dataset' folder")
    src.add_argument("--make-fixture", type=int, metavar="N", help="generate N triplets per category")
    p.add_argument("--nproc", nargs="+", type=int, default=[1, 2])
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="cores to split between processes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="lowps-scaling-") as tmp:
        root = a.root
        if root is None:
            sys.path.insert(0, str(HERE.parent / "tests"))
            from bapps_fixture import make_bapps

            root = make_bapps(Path(tmp) / "dataset", n=a.make_fixture)
        extra = ["--batch-size", str(a.batch_size), "--device", a.device]
        rows, reports = [], []
        for k in a.nproc:
            out = Path(tmp) / f"score-{k}.json"
            wall = run_score(root, k, a.cores, out, extra)
            report = json.loads(out.read_text())
            reports.append(report["categories"])
            n = sum(c["n"] for c in report["categories"].values())
            rows.append({"nproc": k, "threads_per_proc": max(1, a.cores // k), "triplets": n, "wall_s": wall,
                         "triplets_per_s": n / wall})
        same = all(r == reports[0] for r in reports)
    print(f"# lowps-score scaling, {a.device}, {a.cores} cores, {datetime.date.today()}; "
          f"identical per-category results: {same}")
    print(f"{'processes':>9}{'threads/proc':>14}{'triplets':>10}{'wall s':>9}{'triplets/s':>12}{'speed-up':>10}")
    for r in rows:
        r["speedup"] = rows[0]["wall_s"] / r["wall_s"]
        print(f"{r['nproc']:>9}{r['threads_per_proc']:>14}{r['triplets']:>10}{r['wall_s']:>9.1f}"
              f"{r['triplets_per_s']:>12.1f}{r['speedup']:>10.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"identical": same, "rows": rows}, indent=1))
    if not same:
        sys.exit("runs disagree: per-category results differ between process counts")


if __name__ == "__main__":
    main()
