"""Print a benchmark JSON (bench_distance, bench_pairwise, bench_accel) as the markdown table
docs/performance.md shows.

    python benchmarks/table.py benchmarks/results/cpu-intel-amx-2core-inference-2026-12-05.json [--batches 32]
"""
from __future__ import annotations

import argparse
import json


def _fmt(v: object, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="only these batch sizes (bench_distance)")
    a = p.parse_args()
    with open(a.json) as f:
        d = json.load(f)
    rows = d["rows"]
    if rows and "variant" in rows[0]:  # bench_accel
        print(f"<!-- {d['header'].lstrip('# ')} -->")
        print("| variant | ms | x LPIPS-alex | / auto |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['ms']:.1f} | {r['x_alex']:.2f} | {r['vs_auto']:.2f} |")
    elif rows and "head" in rows[0]:  # bench_pairwise
        print("| head | N | embed s | pairwise s | pairwise / embed |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['head']} | {r['n']} | {r['embed_s']:.2f} | {r['pairwise_s']:.2f} | {r['ratio']:.2f} |")
    else:  # bench_distance
        m = d["meta"]
        print(f"<!-- {m['cpu']}, {m['threads']} threads, torch {m['torch']}, {m['date']}, {m['mode']} -->")
        roof = any("fraction_of_peak" in r for r in rows)
        print("| metric | size | batch | pairs/s | x LPIPS-alex |" + (" % of conv peak |" if roof else "")
              + "\n|---|---|---|---|---|" + ("---|" if roof else ""))
        for r in rows:
            if a.batches and r["batch"] not in a.batches:
                continue
            frac = r.get("fraction_of_peak")
            print(f"| {r['metric']} | {r['size']} | {r['batch']} | {r['pairs_per_s']:.1f} | {r['ratio_to_alex']:.2f} |"
                  + (f" {_fmt(None if frac is None else 100 * frac, '.0f')} |" if roof else ""))


if __name__ == "__main__":
    main()
