"""Apply the model card's rule for the default checkpoint to a run's JSON records.

Rule: the earliest checkpoint whose val top-1 reaches half of the run's final top-1.
(Kumar et al. 2022: perceptual score peaks early in training, at low accuracy; ResNets peak at
15-25% ImageNet top-1, well below their final accuracy. BAPPS cannot be scored where lowps is
trained, so the rule uses accuracy relative to the run's own plateau, which transfers across
datasets with different class counts.)

    python tools/select_default.py RUN_DIR                     # the run folder of `lowps train backbone`
    python tools/select_default.py RUN_DIR --records OUT.json  # also write every record the rule read
    python tools/select_default.py RECORDS.json                # re-apply the rule to a records file

The records file lists (step, epoch, top-1, top-5, sha256) of every checkpoint of the run, the
threshold and the checkpoint the rule picked, so a reader can check the choice without the run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("step", "epoch", "top1", "top5", "sha256")


def load_records(src: Path) -> list[dict]:
    """A run folder's ``step*.json`` records, or the ``records`` list of a file this tool wrote; by step."""
    if src.is_dir():
        records = [json.loads(f.read_text()) for f in src.glob("step*.json")]
    else:
        records = json.loads(src.read_text())["records"]
    if not records:
        raise SystemExit(f"no checkpoint records in {src}")
    return sorted(({k: r[k] for k in KEYS if k in r} for r in records), key=lambda r: r["step"])


def select(records: list[dict]) -> dict:
    """The earliest record whose top-1 reaches half of the final (last) record's top-1."""
    final = records[-1]
    return next(r for r in records if r["top1"] >= final["top1"] / 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="a run folder, or a records JSON written by --records")
    p.add_argument("--records", type=Path, default=None, help="write the records, threshold and pick as JSON")
    p.add_argument("--note", default="", help="free text stored in the records file (what run this is)")
    a = p.parse_args()
    records = load_records(a.source)
    pick = select(records)
    final = records[-1]
    print(f"final: step {final['step']} top-1 {final['top1']}%; threshold {final['top1'] / 2:.3f}%")
    print(f"default: step {pick['step']} (epoch {pick['epoch']}, top-1 {pick['top1']}%)")
    if a.records:
        config = {}
        if a.source.is_dir():
            first = next(iter(sorted(a.source.glob("step*.json"))))
            config = json.loads(first.read_text()).get("config", {})
            config.pop("out", None)  # a local path
        doc = {"rule": "earliest checkpoint with val top-1 >= final top-1 / 2", "note": a.note, "config": config,
               "threshold": final["top1"] / 2, "selected": pick, "records": records}
        a.records.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {a.records}")


if __name__ == "__main__":
    main()
