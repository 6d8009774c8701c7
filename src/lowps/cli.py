"""Command-line interface: ``lowps`` (distance, weights, train) and ``lowps-score``.

Every command calls the library; none reimplements it.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser", "score_main"]


_DISTANCES = ["meanpool", "local", "style", "linear"]


def _metric_args(p: argparse.ArgumentParser, several_distances: bool = False, precision: bool = True) -> None:
    """The metric's options, shared by every command that builds one."""
    p.add_argument("--backbone", default="resnet6", help="lowps backbone or timm model name (default: resnet6)")
    if several_distances:
        p.add_argument("--distance", nargs="+", default=["meanpool"], choices=_DISTANCES,
                       help="one or more distance heads, each scored (default: meanpool)")
    else:
        p.add_argument("--distance", default="meanpool", choices=_DISTANCES, help="distance head (default: meanpool)")
    p.add_argument("--weights", default=None,
                   help="backbone weights: registry name, file, URL, 'random' or 'timm' "
                        "(default: the backbone's default)")
    p.add_argument("--head-weights", default=None, help="linear head weights (for --distance linear)")
    p.add_argument("--layers", default=None, help="comma-separated layer names or indices (default: all)")
    if not precision:
        return
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="backbone precision; bf16 is faster on GPUs and on CPUs with AVX-512 BF16/AMX (elsewhere "
                        "lowps warns and runs fp32), distances move by a few percent (default: fp32)")
    p.add_argument("--force-precision", action="store_true",
                   help="run --precision even on a CPU that only emulates it (slow)")


def _batch_args(p: argparse.ArgumentParser, batch: int) -> None:
    """Options shared by the commands that run the metric over many files."""
    _metric_args(p)
    p.add_argument("--batch-size", type=_positive_int, default=batch, help=f"images per metric call (default: {batch})")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--out", default=None, help="CSV (default: stdout) or .json file, written atomically")
    p.add_argument("--skip-bad", action="store_true",
                   help="report unreadable images on stderr and go on without them (default: stop at the first)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _num(v: float) -> str:
    """6 significant digits: a true 1.9e-7 prints as 1.9e-07, not 0.000000."""
    return f"{float(v):.6g}"


#: Python argument names in library errors -> the CLI flags a CLI user types.
_FLAG_NAMES = [("head_weights=", "--head-weights "), ("force_precision=True", "--force-precision"),
               ("weights=", "--weights "), ("backbone=", "--backbone "), ("distance=", "--distance "),
               ("layers=", "--layers "), ("precision=", "--precision "), ("batch_size", "--batch-size")]


def _cli_message(e: BaseException) -> str:
    import re

    msg = str(e)
    if "Original Traceback" in msg:  # re-raised from a DataLoader worker: keep the original message only
        last = [line for line in msg.strip().splitlines() if line.strip()][-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    for py, flag in _FLAG_NAMES:
        msg = re.sub(r"(?<![\w-])" + re.escape(py), flag, msg)
    return msg


def _layers(s: str | None) -> list[str | int] | None:
    if not s:
        return None
    return [int(v) if v.lstrip("-").isdigit() else v for v in s.split(",")]


def _cmd_distance(a: argparse.Namespace) -> int:
    from .functional import distance

    d = distance(a.img0, a.img1, backbone=a.backbone, distance=a.distance, weights=a.weights,
                 layers=_layers(a.layers), head_weights=a.head_weights, per_layer=a.per_layer, precision=a.precision,
                 force_precision=a.force_precision)
    if a.per_layer:
        total, per = d
        print(_num(total[0]))
        for name, v in per.items():
            print(f"  {name}: {_num(v[0])}")
    else:
        print(_num(d[0]))
    return 0


def _images_in(d: str) -> list:
    from pathlib import Path

    from .inputs import IMAGE_EXTENSIONS

    p = Path(d)
    if not p.is_dir():
        raise ValueError(f"not a directory: {p}")
    return sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))


def _write_rows(path: str | None, header: list[str], rows: list[list], as_json: object | None = None) -> None:
    """CSV (numbers with 6 significant digits) to stdout or ``path``; ``.json`` paths get ``as_json``
    (numbers as numbers), or one object per row. Files are written atomically."""
    import csv

    from ._io import write_json, write_text_atomic

    if path and path.endswith(".json"):
        write_json(path, as_json if as_json is not None else [dict(zip(header, r)) for r in rows])
        return
    text_rows = [[_num(v) if isinstance(v, float) else v for v in r] for r in rows]

    def write(f) -> None:  # type: ignore[no-untyped-def]
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(text_rows)
    if path:
        write_text_atomic(path, write)
    else:
        write(sys.stdout)


def _load_or_skip(path, skip: bool, bad: list):  # type: ignore[no-untyped-def]
    from .inputs import InputError, load_image

    try:
        return load_image(path)
    except InputError as e:
        if not skip:
            raise InputError(f"{e} (pass --skip-bad to go on without unreadable images)") from e
        print(f"lowps: skipped {path}: {e}", file=sys.stderr)
        bad.append(str(path))
        return None


def _cmd_dirs(a: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from .functional import get_metric

    files0 = {f.name: f for f in _images_in(a.dir0)}
    files1 = {f.name: f for f in _images_in(a.dir1)}
    common = sorted(set(files0) & set(files1))
    if not common:
        raise ValueError(f"no file names in common between {a.dir0} and {a.dir1}")
    missing = sorted(set(files0) ^ set(files1))
    if missing:
        print(f"lowps dirs: {len(missing)} files have no partner and are skipped (e.g. {missing[:3]})", file=sys.stderr)
    m = get_metric(a.backbone, a.distance, a.weights, _layers(a.layers), head_weights=a.head_weights, device=a.device,
                   precision=a.precision, force_precision=a.force_precision)
    rows: list[list] = []
    batch: list = []
    bad: list[str] = []

    def flush() -> None:
        if not batch:
            return
        with torch.inference_mode():
            d = m(torch.stack([x for _, x, _ in batch]), torch.stack([y for _, _, y in batch]))
        rows.extend([name, float(v)] for (name, _, _), v in zip(batch, d))
        batch.clear()

    for name in tqdm(common, disable=a.quiet, desc="pairs"):
        x, y = _load_or_skip(files0[name], a.skip_bad, bad), _load_or_skip(files1[name], a.skip_bad, bad)
        if x is None or y is None:
            continue
        if x.shape != y.shape:
            raise ValueError(f"{name}: {tuple(x.shape[1:])} in {a.dir0} but {tuple(y.shape[1:])} in {a.dir1}")
        if batch and (x.shape != batch[0][1].shape or len(batch) == a.batch_size):
            flush()
        batch.append((name, x.to(a.device), y.to(a.device)))
    flush()
    if bad:
        print(f"lowps dirs: {len(bad)} unreadable image(s) skipped", file=sys.stderr)
    _write_rows(a.out, ["file", "distance"], rows)
    return 0


def _cmd_allpairs(a: argparse.Namespace) -> int:
    from .allpairs import pairwise
    from .functional import get_metric

    files = _images_in(a.dir)
    other = _images_in(a.other) if a.other else None
    if not files or (other is not None and not other):
        raise ValueError("no images found")
    bad: list[str] = []
    files = [f for f in files if _load_or_skip(f, a.skip_bad, bad) is not None]
    if other is not None:
        other = [f for f in other if _load_or_skip(f, a.skip_bad, bad) is not None]
    if not files or (other is not None and not other):
        raise ValueError("no readable images left")
    m = get_metric(a.backbone, a.distance, a.weights, _layers(a.layers), head_weights=a.head_weights, device=a.device,
                   precision=a.precision, force_precision=a.force_precision)
    mat = pairwise(files, other, metric=m, batch_size=a.batch_size, progress=not a.quiet)
    cols = [f.name for f in (other or files)]
    rows = [[f.name] + [float(v) for v in row] for f, row in zip(files, mat)]
    _write_rows(a.out, ["file"] + cols, rows,
                as_json={"rows": [f.name for f in files], "cols": cols, "distances": mat.tolist(), "skipped": bad})
    return 0


def _cmd_weights(a: argparse.Namespace) -> int:
    from . import weights

    if a.action == "list":
        entries = weights.list()
        status = {e.name: "embedded" if e.embedded else ("cached" if e.local_path().is_file() else "remote")
                  for e in entries}
        if a.json:
            print(json.dumps([{"name": e.name, "arch": e.arch, "kind": e.kind, "status": status[e.name],
                               "size": e.size, "sha256": e.sha256, "urls": builtins_list(e.urls),
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
    if not a.name:
        raise SystemExit(f"lowps weights {a.action} needs a NAME (see `lowps weights list`)")
    if a.action == "download":
        print(weights.download(a.name, progress=not a.quiet))
    elif a.action == "path":
        print(weights.path(a.name))
    elif a.action == "verify":
        print(f"{weights.verify(a.name)}  OK")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from .export import export_metric
    from .metric import PerceptualDistance

    m = PerceptualDistance(a.backbone, a.distance, weights=a.weights, layers=_layers(a.layers),
                           head_weights=a.head_weights)
    size = tuple(int(v) for v in a.size.split("x")) if "x" in a.size else (int(a.size), int(a.size))
    print(export_metric(m, a.out, a.format, size=size, batch=a.batch))  # type: ignore[arg-type]
    return 0


def _cmd_convert(a: argparse.Namespace) -> int:
    from .weights.convert_tf import convert_tf_checkpoint

    sha = convert_tf_checkpoint(a.from_tf, a.arch, a.out, num_classes=a.num_classes)
    print(f"wrote {a.out} (sha256 {sha})")
    return 0


def _cmd_train_backbone(a: argparse.Namespace) -> int:
    from .train.backbone import TrainConfig, apply_recipe, train_backbone

    cfg = TrainConfig(arch=a.arch, data=a.data, out=a.out, epochs=a.epochs, lr=a.lr,
                      weight_decay=a.weight_decay, ckpt_every=a.ckpt_every, seed=a.seed,
                      limit_per_class=a.limit_per_class, device=a.device, threads=a.threads, progress=not a.quiet,
                      stop_after=a.stop_after)
    explicit = {k for k in ("batch_size", "schedule", "warmup_epochs") if getattr(a, k) is not None}
    for k in explicit:
        setattr(cfg, k, getattr(a, k))
    apply_recipe(cfg, a.recipe, explicit)
    if a.ckpt_steps is not None:
        cfg.ckpt_steps = [int(s) for s in a.ckpt_steps.split(",") if s]
    out = train_backbone(cfg, resume=a.resume)
    print(out)
    return 0


def _cmd_train_linear(a: argparse.Namespace) -> int:
    from .train.linear import train_linear

    print(train_linear(a.backbone, a.bapps_root, a.out, weights=a.weights, split=a.split, categories=a.categories,
                       epochs=a.epochs, decay_epochs=a.decay_epochs, lr=a.lr, batch_size=a.batch_size,
                       device=a.device, seed=a.seed, progress=not a.quiet))
    return 0


def _cmd_sanity(a: argparse.Namespace) -> int:
    import torch

    from .data.imagenet import load_split
    from .metric import PerceptualDistance
    from .sanity import format_sanity, sanity_table

    val = load_split(a.data, "val")
    pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(a.seed))[:a.n]
    metrics = {w: PerceptualDistance(a.backbone, a.distance, weights=None if w == "default" else w)
               for w in a.weights}
    table = sanity_table(metrics, val.images[pick], seed=a.seed)
    print(format_sanity(table))
    if a.json:
        from ._io import write_json

        write_json(a.json, {"data": a.data, "n": len(pick), "seed": a.seed, "backbone": a.backbone,
                            "distance": a.distance, "table": table})
    return 0


def _cmd_eval_backbone(a: argparse.Namespace) -> int:
    import torch

    from .data.imagenet import load_split
    from .train.backbone import evaluate
    from .weights import build_backbone

    bb = build_backbone(a.arch, a.weights)
    val = load_split(a.data, "val")
    if getattr(bb.model, "num_classes", 0) != len(val.classes):
        raise SystemExit(f"weights {a.weights} carry {getattr(bb.model, 'num_classes', 0)} classes but "
                         f"{a.data} has {len(val.classes)}")
    res = evaluate(bb.model.to(memory_format=torch.channels_last), val, torch.device("cpu"))
    print(json.dumps({"weights": bb.weights_name, "sha256": bb.weights_sha256, **res}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowps", description="Perceptual image distance from low-accuracy ImageNet "
                                "networks (Kumar et al. 2022).")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("distance", help="distance between two image files")
    d.add_argument("img0")
    d.add_argument("img1")
    _metric_args(d)
    d.add_argument("--per-layer", action="store_true", help="also print each layer's distance")
    d.set_defaults(func=_cmd_distance)

    dd = sub.add_parser("dirs", help="distances between same-named images in two directories")
    dd.add_argument("dir0")
    dd.add_argument("dir1")
    _batch_args(dd, 32)
    dd.set_defaults(func=_cmd_dirs)

    ap = sub.add_parser("allpairs", help="N x N (or N x M with --other) distance matrix of a directory's images")
    ap.add_argument("dir")
    ap.add_argument("--other", default=None, help="a second directory: rows from DIR, columns from OTHER")
    _batch_args(ap, 64)
    ap.set_defaults(func=_cmd_allpairs)

    ex = sub.add_parser("export", help="write the metric as ONNX, TorchScript or a torch.export program")
    ex.add_argument("--format", required=True, choices=["onnx", "torchscript", "pt2"], help="file format")
    ex.add_argument("--out", required=True, help="output file")
    ex.add_argument("--size", default="64", help="input size, N or HxW (fixed in the graph; default: 64)")
    ex.add_argument("--batch", type=_positive_int, default=None,
                    help="fixed batch size (default: dynamic for onnx/pt2; torchscript traces any batch)")
    _metric_args(ex, precision=False)  # the exported graph is fp32
    ex.set_defaults(func=_cmd_export)

    w = sub.add_parser("weights", help="list, download, verify, locate or convert weights")
    wsub = w.add_subparsers(dest="action", required=True)
    for action, text in [("list", "registered weights"), ("download", "fetch into the cache"),
                         ("verify", "check the sha256"), ("path", "print the local path")]:
        s = wsub.add_parser(action, help=text)
        if action != "list":
            s.add_argument("name", help="registry name (see `lowps weights list`)")
        else:
            s.set_defaults(name=None)
            s.add_argument("--long", action="store_true", help="also show each file's sha256 and source")
            s.add_argument("--json", action="store_true", help="print the registry as JSON")
        s.add_argument("--quiet", action="store_true", help="no progress bar")
        s.set_defaults(func=_cmd_weights)
    c = wsub.add_parser("convert", help="convert a TF checkpoint of the paper's TPU ResNet code to safetensors")
    c.add_argument("--from-tf", required=True, metavar="CKPT_PREFIX", help="checkpoint prefix, e.g. model.ckpt-1000")
    c.add_argument("--arch", required=True, help="the checkpoint's architecture",
                   choices=["resnet6", "resnet10", "resnet18_tpu", "resnet50_tpu",
                                                     "resnet200_tpu", "resnet50", "resnet200", "resnet18"])
    c.add_argument("--out", required=True, help="output .safetensors file")
    c.add_argument("--num-classes", type=int, default=None, help="classifier size (default: read from the checkpoint)")
    c.set_defaults(func=_cmd_convert)

    t = sub.add_parser("train", help="train backbones or linear heads")
    tsub = t.add_subparsers(dest="what", required=True)
    tb = tsub.add_parser("backbone", help="train a classification backbone, keeping early checkpoints")
    tb.add_argument("--arch", default="resnet6", help="backbone to train (default: resnet6)")
    tb.add_argument("--data", required=True, help="tiny-imagenet:DIR | imagenet64:DIR | folder:DIR")
    tb.add_argument("--recipe", default="default", choices=["default", "paper"],
                    help="default: cosine, batch 256, 1 warm-up epoch (lowps's CPU recipe, a deviation from the "
                         "paper); paper: Kumar et al. App. M (batch 1024, 5/90 of the epochs warm-up, x0.1 at 1/3, "
                         "2/3, 8/9 of training); the flags below override either")
    tb.add_argument("--epochs", type=float, default=16, help="epochs to train (default: 16)")
    tb.add_argument("--batch-size", type=_positive_int, default=None, help="default: from --recipe (256 / 1024)")
    tb.add_argument("--lr", type=float, default=None, help="default 0.1 x batch/256")
    tb.add_argument("--weight-decay", type=float, default=1e-4, help="L2 on all but BatchNorm (default: 1e-4)")
    tb.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up (default: from --recipe)")
    tb.add_argument("--schedule", choices=["cosine", "step"], default=None, help="default: from --recipe")
    tb.add_argument("--ckpt-every", type=int, default=250, metavar="STEPS",
                    help="save a checkpoint every N steps (default: 250)")
    tb.add_argument("--ckpt-steps", default=None,
                    help="extra checkpoint steps, comma-separated (default 0,25,50,100,150,200)")
    tb.add_argument("--seed", type=int, default=0, help="seed for init, data order and augmentation")
    tb.add_argument("--limit-per-class", type=int, default=None, help="use at most N training images per class")
    tb.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, ...")
    tb.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    tb.add_argument("--out", required=True, help="run folder: checkpoints, JSON records, resume.pt")
    tb.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt")
    tb.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                    help="stop at this step with a checkpoint (continue later with --resume)")
    tb.add_argument("--quiet", action="store_true", help="no progress bar")
    tb.set_defaults(func=_cmd_train_backbone)

    tl = tsub.add_parser("linear", help="learn an LPIPS-style linear head on BAPPS 2AFC judgements")
    tl.add_argument("--backbone", default="resnet6", help="backbone whose features the head weights (default: resnet6)")
    tl.add_argument("--weights", default=None, help="backbone weights (default: the backbone's default)")
    tl.add_argument("--bapps-root", default=None, help="BAPPS 'dataset' directory (default: the downloaded copy)")
    tl.add_argument("--split", default="train", choices=["train", "val"], help="BAPPS split (default: train)")
    tl.add_argument("--categories", nargs="+", default=None, help="BAPPS categories (default: all in the split)")
    tl.add_argument("--epochs", type=int, default=5, help="epochs at the full rate (LPIPS: 5)")
    tl.add_argument("--decay-epochs", type=int, default=5, help="epochs of linear decay (LPIPS: 5)")
    tl.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (LPIPS: 1e-4)")
    tl.add_argument("--batch-size", type=_positive_int, default=50, help="triplets per step (LPIPS: 50)")
    tl.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    tl.add_argument("--seed", type=int, default=0, help="seed for data order and the Dist2Logit init")
    tl.add_argument("--out", required=True, help="output .safetensors (a .json record is written beside it)")
    tl.add_argument("--quiet", action="store_true", help="no progress bar")
    tl.set_defaults(func=_cmd_train_linear)

    sn = sub.add_parser("sanity", help="Spearman(severity, distance) for five distortions on natural patches")
    sn.add_argument("--data", required=True, help="a data spec with a val split, e.g. tiny-imagenet:DIR")
    sn.add_argument("--backbone", default="resnet6", help="backbone (default: resnet6)")
    sn.add_argument("--distance", default="meanpool", choices=["meanpool", "local", "style"],
                    help="distance head (default: meanpool)")
    sn.add_argument("--weights", nargs="+", default=["default", "random"],
                    help="weights to compare ('default' = the backbone's default)")
    sn.add_argument("--n", type=_positive_int, default=500, help="natural patches to distort (default: 500)")
    sn.add_argument("--seed", type=int, default=0, help="seed for the patch pick and the noise")
    sn.add_argument("--json", default=None, help="also write the table as JSON")
    sn.set_defaults(func=_cmd_sanity)

    e = sub.add_parser("eval", help="classification accuracy of a checkpoint on a validation split")
    e.add_argument("--arch", default="resnet6", help="architecture of the checkpoint (default: resnet6)")
    e.add_argument("--weights", default=None, help="checkpoint: registry name or file (default: the arch's default)")
    e.add_argument("--data", required=True, help="a data spec with a val split, e.g. tiny-imagenet:DIR")
    e.set_defaults(func=_cmd_eval_backbone)
    return p


def builtins_list(x):  # type: ignore[no-untyped-def]
    return [*x] if x else []


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"lowps: error: {_cli_message(e)}", file=sys.stderr)
        return 2


DATASETS = ("bapps", "2afc", "nights", "tid2013", "kadid10k", "pipal", "mos")


def _int_at_least(minimum: int):  # type: ignore[no-untyped-def]
    """An argparse type: an integer >= ``minimum`` (argparse reports anything else as a usage error)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {v}")
        return v
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowps-score", description="Score perceptual metrics against human "
                                "judgements: BAPPS 2AFC/JND, any 2AFC CSV, NIGHTS, TID2013, KADID-10k, PIPAL or "
                                "any MOS CSV (docs/benchmarks.md).")
    p.add_argument("--dataset", default="bapps", choices=DATASETS, help="which judgement set (default: bapps)")
    p.add_argument("--root", default=None, help="the dataset's folder (BAPPS: its 'dataset' directory, default "
                   "the downloaded copy)")
    p.add_argument("--csv", default=None, help="with --dataset 2afc (ref,p0,p1,h[,category]) or mos "
                   "(ref,dist,mos[,category]): the CSV; paths are relative to its folder")
    direction = p.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher_is_better", action="store_true", default=None,
                           help="--dataset mos: the score rises with quality (MOS; the default)")
    direction.add_argument("--lower-is-better", dest="higher_is_better", action="store_false",
                           help="--dataset mos: the score falls with quality (DMOS)")
    p.add_argument("--nights-split", default="test", choices=["train", "val", "test"], help="NIGHTS split")
    p.add_argument("--min-votes", type=int, default=6, help="NIGHTS: keep triplets with at least this many "
                   "votes (6: DreamSim's unanimous set)")
    p.add_argument("--resize", type=_positive_int, default=None, metavar="N",
                   help="scale images so the shorter side is N px (default: native size; BAPPS is always 64)")
    p.add_argument("--bootstrap", type=_non_negative_int, default=1000, metavar="N",
                   help="resamples of reference images for 95%% CIs (0: none; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--download", action="store_true", help="download and extract BAPPS into the cache, then exit")
    p.add_argument("--subset", default="val", choices=["val", "train", "jnd", "all"], help="with --download")
    p.add_argument("--split", default="val", choices=["val", "train"], help="BAPPS split")
    p.add_argument("--categories", nargs="+", default=None, help="BAPPS: default every category present")
    p.add_argument("--mode", default="2afc", choices=["2afc", "jnd"], help="BAPPS: 2AFC or JND")
    p.add_argument("--metric", default="lowps", help="lowps (default) or a baseline: " + ", ".join(_baselines()))
    p.add_argument("--baselines", default="", metavar="LIST",
                   help="comma-separated baselines scored in the same run, e.g. l2,psnr,ssim,lpips-alex")
    _metric_args(p, several_distances=True)
    p.add_argument("--per-layer", action="store_true", help="BAPPS: also score each layer alone (layer-wise PS)")
    p.add_argument("--batch-size", type=_positive_int, default=50, help="images per metric call")
    p.add_argument("--workers", type=_non_negative_int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--json", default=None, metavar="FILE", help="write the full report as strict JSON (atomically)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="bar chart (with 95%% CIs where computed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _baselines() -> tuple[str, ...]:
    from .scoring import BASELINES

    return BASELINES


def _read_records(a: argparse.Namespace) -> tuple[list, str]:
    from .data import judgements as J

    if a.dataset in ("2afc", "mos"):
        if not a.csv:
            raise ValueError(f"--dataset {a.dataset} needs --csv FILE (see docs/benchmarks.md for the columns)")
        return J.READERS[a.dataset][1](a.csv), str(a.csv)
    if a.csv:
        raise ValueError(f"--csv applies to --dataset 2afc or mos, not {a.dataset}; use --root DIR")
    if not a.root:
        raise ValueError(f"--dataset {a.dataset} needs --root DIR, the dataset's folder (see docs/benchmarks.md)")
    if a.dataset == "nights":
        return J.read_nights(a.root, split=a.nights_split, min_votes=a.min_votes), str(a.root)
    return J.READERS[a.dataset][1](a.root), str(a.root)


def score_main(argv: Sequence[str] | None = None) -> int:
    """``lowps-score``: runs unchanged under ``torchrun`` (rank 0 prints and writes)."""
    import os

    p = build_score_parser()
    a = p.parse_args(argv)
    if a.higher_is_better is not None and a.dataset != "mos":
        p.error("--higher-is-better/--lower-is-better apply to --dataset mos (the named MOS sets know their direction)")
    try:
        if a.download:
            from .data.bapps import download_bapps

            print(download_bapps(a.subset, progress=not a.quiet))
            return 0
        import torch.distributed as dist

        from ._io import write_json
        from .evaluate import build_scorer, evaluate_bapps, evaluate_judgements, format_comparison, plot_comparison

        names = [a.metric] + [b.strip() for b in a.baselines.split(",") if b.strip()]
        for n in names:
            if n != "lowps" and n not in _baselines():
                raise ValueError(f"unknown metric {n!r}; choose lowps or one of {', '.join(_baselines())}")
        if a.dataset == "bapps" and a.resize is not None:
            raise ValueError("--resize does not apply to BAPPS (its patches are 64x64, as the paper scores them)")
        if a.precision != "fp32" and a.metric != "lowps":
            raise ValueError(f"precision={a.precision!r} applies to lowps metrics only; baselines run in float32 "
                             f"(drop --precision for --metric {a.metric})")
        records, source = (None, "") if a.dataset == "bapps" else _read_records(a)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if a.device.startswith("cuda") else "gloo")
        scorers = []
        for n in dict.fromkeys(names):
            heads = a.distance if n == "lowps" else [None]
            for head in heads:
                scorers.append(build_scorer(n, a.backbone, head or "meanpool", a.weights, a.head_weights,
                                            _layers(a.layers), a.device, per_layer=a.per_layer,
                                            precision=a.precision if n == "lowps" else "fp32",
                                            force_precision=a.force_precision))
        reports = []
        for scorer in scorers:
            if a.dataset == "bapps":
                reports.append(evaluate_bapps(a.root, scorer, a.mode, a.split, a.categories, a.batch_size, a.device,
                                              a.workers, progress=not a.quiet))
            else:
                direction = True if a.dataset == "mos" and a.higher_is_better is None else a.higher_is_better
                if a.dataset != "mos":
                    from .data.judgements import MOS_DIRECTION
                    direction = MOS_DIRECTION.get(a.dataset, True)
                reports.append(evaluate_judgements(a.dataset, records, scorer, higher_is_better=direction,
                                                   resize=a.resize, bootstrap=a.bootstrap, seed=a.seed,
                                                   batch_size=a.batch_size, device=a.device, num_workers=a.workers,
                                                   progress=not a.quiet, source=source))
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank()
            dist.barrier()
            dist.destroy_process_group()  # gloo aborts at interpreter exit if the group is left open
            if rank != 0:
                return 0
        print(format_comparison(reports))
        if a.json:
            write_json(a.json, reports[0] if len(reports) == 1 else
                       {"dataset": a.dataset, "reports": reports})
        if a.plot:
            plot_comparison(reports, a.plot)
        return 0
    except (ValueError, FileNotFoundError, RuntimeError, ImportError, OSError) as e:
        print(f"lowps-score: error: {_cli_message(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
