"""``lowps weights list|download|verify|path|convert``: the weights registry."""
from __future__ import annotations

import argparse
import json
import sys


def _list_remote(a: argparse.Namespace) -> int:
    from ..weights.gcs import catalogue

    if a.remote != "kumar2022":
        raise ValueError(f"--remote {a.remote}: the only remote catalogue is kumar2022 (the paper's bucket)")
    cat = catalogue()
    if a.json:
        print(json.dumps([{"name": f"kumar2022:{c.short}", "arch": c.arch, "step": c.step, "uri": c.uri}
                          for c in cat], indent=1))
        return 0
    print(f"{'name':36s} {'backbone':20s} {'step':>8s}  object")
    for c in cat:
        print(f"{'kumar2022:' + c.short:36s} {c.arch:20s} {c.step:8d}  {c.uri}")
    print(f"{len(cat)} checkpoints; use as weights=NAME with backbone=BACKBONE", file=sys.stderr)
    return 0


def _list(a: argparse.Namespace) -> int:
    from .. import weights

    if a.remote:
        return _list_remote(a)
    entries = weights.list_weights()
    status = {e.name: "embedded" if e.embedded else ("cached" if e.local_path().is_file() else "remote")
              for e in entries}
    if a.json:
        print(json.dumps([{"name": e.name, "arch": e.arch, "kind": e.kind, "status": status[e.name],
                           "size": e.size, "sha256": e.sha256, "urls": list(e.urls or []),
                           "default_for": e.default_for, "metrics": e.metrics} for e in entries], indent=1))
        return 0
    print(f"{'name':32s} {'arch':14s} {'kind':8s} {'status':8s} {'size':>10s}  {'top-1':>7s}  default for"
          + ("  sha256 / source" if a.long else ""))
    for e in entries:
        top1 = e.metrics.get("top1")
        line = (f"{e.name:32s} {e.arch:14s} {e.kind:8s} {status[e.name]:8s} {e.size / 1e6:7.1f} MB  "
                f"{(f'{top1}%' if top1 is not None else '-'):>7s}  {e.default_for or '-'}")
        if a.long:
            line += f"  {e.sha256}  {', '.join(e.urls) if e.urls else 'in the package'}"
        print(line)
    return 0


def _download(a: argparse.Namespace) -> int:
    from .. import weights

    if not a.name.startswith(("gs://", "kumar2022:")):
        print(weights.download(a.name, progress=not a.quiet))
        return 0
    from ..weights.gcs import fetch_checkpoint, resolve_short_name

    arch = a.arch or (resolve_short_name(a.name).arch if a.name.startswith("kumar2022:") else None)
    if arch is None:
        raise ValueError("a gs:// checkpoint needs --arch (resnet6, resnet50_tpu, resnet200_tpu, ...)")
    print(fetch_checkpoint(a.name, arch, progress=not a.quiet))
    return 0


def _path(a: argparse.Namespace) -> int:
    from .. import weights

    print(weights.path(a.name))
    return 0


def _verify(a: argparse.Namespace) -> int:
    from .. import weights

    print(f"{weights.verify(a.name)}  OK")
    return 0


def _cmd_convert(a: argparse.Namespace) -> int:
    from ..weights.convert_tf import convert_tf_checkpoint

    sha = convert_tf_checkpoint(a.from_tf, a.arch, a.out, num_classes=a.num_classes)
    print(f"wrote {a.out} (sha256 {sha})")
    return 0


#: Architectures `lowps weights convert` reads (lowps.weights.convert_tf's name maps).
CONVERTIBLE = ("resnet6", "resnet6_w50", "resnet6_w25", "resnet10", "resnet18_tpu", "resnet50_tpu", "resnet200_tpu",
               "resnet50", "resnet200", "resnet18")


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("weights", help="list, download, verify, locate or convert weights")
    wsub = w.add_subparsers(dest="action", required=True)
    for action, text, func in [("list", "registered weights", _list), ("download", "fetch into the cache", _download),
                               ("verify", "check the sha256", _verify), ("path", "print the local path", _path)]:
        s = wsub.add_parser(action, help=text)
        if action != "list":
            extra = "; or gs://BUCKET/PATH/model.ckpt-N, kumar2022:ARCH@STEP" if action == "download" else ""
            s.add_argument("name", help="registry name (see `lowps weights list`)" + extra)
        else:
            s.add_argument("--long", action="store_true", help="also show each file's sha256 and source")
            s.add_argument("--json", action="store_true", help="print the registry as JSON")
            s.add_argument("--remote", default=None, metavar="CATALOGUE",
                           help="list a remote catalogue instead: kumar2022 (the paper's checkpoints, "
                           "gs://gresearch/perceptual_similarity)")
        if action == "download":
            s.add_argument("--arch", default=None, help="for gs:// checkpoints: the backbone they are for")
        s.add_argument("--quiet", action="store_true", help="no progress bar")
        s.set_defaults(func=func)
    c = wsub.add_parser("convert", help="convert a TF checkpoint of the paper's TPU ResNet code to safetensors")
    c.add_argument("--from-tf", required=True, metavar="CKPT_PREFIX", help="checkpoint prefix, e.g. model.ckpt-1000")
    c.add_argument("--arch", required=True, choices=CONVERTIBLE, help="the checkpoint's architecture")
    c.add_argument("--out", required=True, help="output .safetensors file")
    c.add_argument("--num-classes", type=int, default=None, help="classifier size (default: read from the checkpoint)")
    c.set_defaults(func=_cmd_convert)
