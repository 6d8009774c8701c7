"""Add or update an entry of src/lowps/weights/manifest.json from a weights file (sha256 and size computed).

    python tools/manifest.py FILE --name NAME --arch ARCH [--kind backbone|head] [--embed]
        [--default-for ARCH] [--url URL ...] [--license L] [--source S] [--recipe R]
        [--metrics JSON] [--num-classes N] [--base NAME]

With --embed the file is copied into src/lowps/weights/files/ and shipped in the wheel.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "src" / "lowps" / "weights" / "manifest.json"
FILES = MANIFEST.parent / "files"


def upsert(entry: dict) -> None:
    data = json.loads(MANIFEST.read_text())
    data["weights"] = [e for e in data["weights"] if e["name"] != entry["name"]] + [entry]
    data["weights"].sort(key=lambda e: (e["kind"], e["arch"], e["name"]))
    MANIFEST.write_text(json.dumps(data, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--kind", default="backbone", choices=["backbone", "head"])
    p.add_argument("--embed", action="store_true")
    p.add_argument("--default-for", default=None)
    p.add_argument("--url", action="append", default=[])
    p.add_argument("--license", default="")
    p.add_argument("--source", default="")
    p.add_argument("--recipe", default="")
    p.add_argument("--metrics", default="{}")
    p.add_argument("--num-classes", type=int, default=0)
    p.add_argument("--base", default=None)
    a = p.parse_args()
    data = a.file.read_bytes()
    entry = {"name": a.name, "arch": a.arch, "kind": a.kind, "file": a.file.name,
             "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "urls": a.url,
             "embedded": a.embed, "default_for": a.default_for, "license": a.license, "source": a.source,
             "recipe": a.recipe, "metrics": json.loads(a.metrics), "num_classes": a.num_classes, "base": a.base}
    if a.embed:
        FILES.mkdir(exist_ok=True)
        if a.file.resolve() != (FILES / a.file.name).resolve():
            shutil.copyfile(a.file, FILES / a.file.name)
    upsert(entry)
    print(f"{a.name}: {entry['sha256']} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
