"""``lowps train backbone|linear`` and ``lowps eval``: training and classification accuracy."""
from __future__ import annotations

import argparse
import json

from ._common import non_negative_int, positive_int


def _cmd_train_backbone(a: argparse.Namespace) -> int:
    from .._dist import process_group_from_env
    from ..train.backbone import TrainConfig, apply_recipe, resolve_device, train_backbone

    cfg = TrainConfig(arch=a.arch, data=a.data, out=a.out, epochs=a.epochs, lr=a.lr,
                      weight_decay=a.weight_decay, ckpt_every=a.ckpt_every, seed=a.seed,
                      limit_per_class=a.limit_per_class, device=a.device, threads=a.threads, progress=not a.quiet,
                      stop_after=a.stop_after, init=a.init, bias_decay=not a.no_bias_decay,
                      crop_pad=a.crop_pad, label_smoothing=a.label_smoothing)
    explicit = {k for k in ("batch_size", "schedule", "warmup_epochs") if getattr(a, k) is not None}
    for k in explicit:
        setattr(cfg, k, getattr(a, k))
    apply_recipe(cfg, a.recipe, explicit)
    if a.ckpt_steps is not None:
        cfg.ckpt_steps = [int(s) for s in a.ckpt_steps.split(",") if s]
    with process_group_from_env(resolve_device(a.device)) as (rank, _):
        out = train_backbone(cfg, resume=a.resume)
    if rank == 0:
        print(out)
    return 0


def _cmd_train_linear(a: argparse.Namespace) -> int:
    from ..train.linear import train_linear

    print(train_linear(a.backbone, a.bapps_root, a.out, weights=a.weights, split=a.split, categories=a.categories,
                       epochs=a.epochs, decay_epochs=a.decay_epochs, lr=a.lr, batch_size=a.batch_size,
                       device=a.device, seed=a.seed, progress=not a.quiet))
    return 0


def _cmd_eval_backbone(a: argparse.Namespace) -> int:
    import torch

    from ..data.imagenet import load_split
    from ..train.backbone import evaluate
    from ..weights import build_backbone

    bb = build_backbone(a.arch, a.weights)
    val = load_split(a.data, "val")
    if getattr(bb.model, "num_classes", 0) != len(val.classes):
        raise ValueError(f"weights {a.weights} carry {getattr(bb.model, 'num_classes', 0)} classes but "
                         f"{a.data} has {len(val.classes)}")
    res = evaluate(bb.model.to(memory_format=torch.channels_last), val, torch.device("cpu"))
    print(json.dumps({"weights": bb.weights_name, "sha256": bb.weights_sha256, **res}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
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
    tb.add_argument("--batch-size", type=positive_int, default=None, help="default: from --recipe (256 / 1024)")
    tb.add_argument("--lr", type=float, default=None, help="default 0.1 x batch/256")
    tb.add_argument("--weight-decay", type=float, default=1e-4, help="L2 on all but BatchNorm (default: 1e-4)")
    tb.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up (default: from --recipe)")
    tb.add_argument("--schedule", choices=["cosine", "step"], default=None, help="default: from --recipe")
    tb.add_argument("--ckpt-every", type=positive_int, default=250, metavar="STEPS",
                    help="save a checkpoint every N steps (default: 250)")
    tb.add_argument("--ckpt-steps", default=None,
                    help="extra checkpoint steps, comma-separated (default 0,25,50,100,150,200)")
    tb.add_argument("--seed", type=int, default=0, help="seed for init, data order and augmentation")
    tb.add_argument("--crop-pad", type=non_negative_int, default=4, metavar="PX",
                    help="random crops of the image reflect-padded by PX (default 4); 0: no crop, flips only "
                    "(the paper's central-crop variant, Kumar et al. sec. 6)")
    tb.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (default 0)")
    tb.add_argument("--limit-per-class", type=positive_int, default=None,
                    help="use at most N training images per class")
    tb.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, ...")
    tb.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    tb.add_argument("--out", required=True, help="run folder: checkpoints, JSON records, resume.pt")
    tb.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt")
    tb.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                    help="stop at this step with a checkpoint (continue later with --resume)")
    tb.add_argument("--init", choices=["tpu", "kaiming"], default="tpu",
                    help="TPU ResNets' initialisation: tpu (the TPU code's truncated-normal variance scaling, "
                         "default) or kaiming (fan-out normal, as lowps < 0.2's shipped runs)")
    tb.add_argument("--no-bias-decay", action="store_true",
                    help="no weight decay on the classifier bias (as lowps < 0.2's shipped runs; the TPU code "
                         "decays it)")
    tb.add_argument("--quiet", action="store_true", help="no progress bar")
    tb.set_defaults(func=_cmd_train_backbone)

    tl = tsub.add_parser("linear", help="learn an LPIPS-style linear head on BAPPS 2AFC judgements")
    tl.add_argument("--backbone", default="resnet6", help="backbone whose features the head weights (default: resnet6)")
    tl.add_argument("--weights", default=None, help="backbone weights (default: the backbone's default)")
    tl.add_argument("--bapps-root", default=None, help="BAPPS 'dataset' directory (default: the downloaded copy)")
    tl.add_argument("--split", default="train", choices=["train", "val"], help="BAPPS split (default: train)")
    tl.add_argument("--categories", nargs="+", default=None, help="BAPPS categories (default: all in the split)")
    tl.add_argument("--epochs", type=positive_int, default=5, help="epochs at the full rate (LPIPS: 5)")
    tl.add_argument("--decay-epochs", type=non_negative_int, default=5, help="epochs of linear decay (LPIPS: 5)")
    tl.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (LPIPS: 1e-4)")
    tl.add_argument("--batch-size", type=positive_int, default=50, help="triplets per step (LPIPS: 50)")
    tl.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    tl.add_argument("--seed", type=int, default=0, help="seed for data order and the Dist2Logit init")
    tl.add_argument("--out", required=True, help="output .safetensors (a .json record is written beside it)")
    tl.add_argument("--quiet", action="store_true", help="no progress bar")
    tl.set_defaults(func=_cmd_train_linear)

    e = sub.add_parser("eval", help="classification accuracy of a checkpoint on a validation split")
    e.add_argument("--arch", default="resnet6", help="architecture of the checkpoint (default: resnet6)")
    e.add_argument("--weights", default=None, help="checkpoint: registry name or file (default: the arch's default)")
    e.add_argument("--data", required=True, help="a data spec with a val split, e.g. tiny-imagenet:DIR")
    e.set_defaults(func=_cmd_eval_backbone)
