"""Ship a training checkpoint in the package: copy it (optionally as float16) into
src/lowps/weights/files/ and register it in the manifest with its metrics from the run's JSON.

    python tools/export_checkpoint.py RUN/step0000500.safetensors --name resnet6-tiny-s500 \
        [--dtype float16] [--default]

The command that trained the run is recorded as the entry's recipe.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import manifest  # noqa: E402

TERMS = "Trained on Tiny ImageNet (a subset of ImageNet): non-commercial research and education only (ImageNet terms)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--default", action="store_true", help="make it the default for its architecture")
    a = p.parse_args()
    record = json.loads(a.checkpoint.with_suffix(".json").read_text())
    with safe_open(str(a.checkpoint), framework="pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    if a.dtype == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta.update(stored_dtype=a.dtype, lowps_name=a.name, top1=str(record["top1"]), top5=str(record["top5"]),
                source_sha256=record["sha256"])
    out = manifest.FILES / f"{a.name.replace('-', '_')}.safetensors"
    manifest.FILES.mkdir(exist_ok=True)
    save_file(state, str(out), metadata=meta)
    cfg = record["config"]
    cmd = (f"lowps train backbone --arch {cfg['arch']} --data tiny-imagenet:DIR --epochs {cfg['epochs']:g} "
           f"--batch-size {cfg['batch_size']} --ckpt-every {cfg['ckpt_every']} --seed {cfg['seed']} --out runs/{cfg['arch']}")
    data = out.read_bytes()
    entry = {"name": a.name, "arch": record["arch"], "kind": "backbone", "file": out.name,
             "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "urls": [], "embedded": True,
             "default_for": record["arch"] if a.default else None, "license": TERMS,
             "source": f"lowps training run, step {record['step']} (epoch {record['epoch']}), stored as {a.dtype}; "
                       f"original checkpoint sha256 {record['sha256']}",
             "recipe": cmd, "metrics": {"step": record["step"], "epoch": record["epoch"], "top1": record["top1"],
                                        "top5": record["top5"], "bapps_2afc": None},
             "num_classes": cfg["num_classes"], "base": None}
    if a.default:  # one default per architecture
        data_m = json.loads(manifest.MANIFEST.read_text())
        for e in data_m["weights"]:
            if e.get("default_for") == record["arch"]:
                e["default_for"] = None
        manifest.MANIFEST.write_text(json.dumps(data_m, indent=2) + "\n")
    manifest.upsert(entry)
    print(f"{a.name}: {entry['sha256']} ({len(data) / 1e6:.1f} MB, step {record['step']}, top-1 {record['top1']}%)")


if __name__ == "__main__":
    main()
