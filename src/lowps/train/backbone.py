"""Train classification backbones on 64x64 data, keeping early checkpoints (Kumar et al. 2022).

The paper's finding is that perceptual quality peaks early in training and at low accuracy, so the
run writes checkpoints from the first steps on: every checkpoint is ``step{N:07d}.safetensors``
(full model, classifier included) plus ``step{N:07d}.json`` (step, epoch, val top-1/top-5, the exact
config, sha256). ``resume.pt`` holds the optimiser state; ``--resume`` continues from it and gives
the same weights as an uninterrupted run (all randomness is derived from ``(seed, step)``).

Runs unchanged under ``torchrun --nproc_per_node K`` (DDP; gloo on CPU, nccl on CUDA; the CLI sets up the
process group with `lowps._dist.process_group_from_env`): each rank takes its slice of every global
batch, so the global batch and the schedule do not depend on K.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._dist import rank_world, require_group_if_launched
from .._io import atomic_path, write_json
from ..backbones import _TPU_ARCHS, IMAGENET_MEAN, IMAGENET_STD
from ..data.imagenet import ClassificationData, load_split
from ..inputs import affine_normalisation
from ..weights import save_checkpoint

__all__ = ["TrainConfig", "train_backbone", "evaluate"]


@dataclass
class TrainConfig:
    arch: str = "resnet6"
    data: str = ""
    out: str = "runs/resnet6"
    epochs: float = 16.0
    batch_size: int = 256
    lr: float | None = None  # default 0.1 * batch / 256 (TPU ResNet rule)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # or "step" (x0.1 at 1/3, 2/3 and 8/9 of training, as 30/60/80 of 90)
    ckpt_every: int = 250
    ckpt_steps: list[int] = field(default_factory=lambda: [0, 25, 50, 100, 150, 200])
    seed: int = 0
    crop_pad: int = 4  # random crop of the reflect-padded image; 0: no crop (the paper's "central crop", sec. 6)
    label_smoothing: float = 0.0  # Kumar et al. sec. 6: lowers PS for deep ResNets, ResNet-6 ~invariant
    image_size: int = 64
    limit_per_class: int | None = None
    eval_batch: int = 500
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    stop_after: int | None = None  # stop (with a checkpoint) at this step; --resume continues the same run
    recipe: str = "default"  # recorded; set the fields with apply_recipe()
    init: str = "tpu"  # lowps TPU ResNets: "tpu" (the TPU code's variance scaling) or "kaiming" (lowps < 0.2)
    bias_decay: bool = True  # weight decay on the classifier bias, as the TPU code (lowps < 0.2: False)


#: Training recipes. ``default``: lowps's CPU-friendly recipe (cosine, batch 256, 1 warm-up epoch), a
#: deviation from the paper. ``paper``: Kumar et al. 2022 App. M (the TPU ResNet defaults): batch 1024,
#: lr 0.1 x batch/256, SGD Nesterov 0.9, weight decay 1e-4 (not on BN), 5 warm-up epochs of 90 and
#: x0.1 steps at epochs 30/60/80 of 90. Scaled to another dataset/epoch budget by keeping the
#: *fractions* of training: warm-up = 5/90 of the epochs, steps at 1/3, 2/3 and 8/9.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {"batch_size": 256, "schedule": "cosine", "warmup_fraction": None, "warmup_epochs": 1.0},
    "paper": {"batch_size": 1024, "schedule": "step", "warmup_fraction": 5 / 90, "warmup_epochs": None},
}


def apply_recipe(cfg: TrainConfig, recipe: str, explicit: AbstractSet[str] = frozenset()) -> TrainConfig:
    """Set ``cfg``'s batch size, schedule and warm-up from ``recipe`` (fields in ``explicit`` are kept)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    r = RECIPES[recipe]
    if "batch_size" not in explicit:
        cfg.batch_size = r["batch_size"]
    if "schedule" not in explicit:
        cfg.schedule = r["schedule"]
    if "warmup_epochs" not in explicit:
        cfg.warmup_epochs = r["warmup_epochs"] if r["warmup_fraction"] is None else r["warmup_fraction"] * cfg.epochs
    cfg.recipe = recipe
    return cfg


def _augment(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop (reflect-padded by ``pad``) and horizontal flip of a uint8 batch (N, 3, H, W)."""
    n, _, h, w = x.shape
    if pad:
        x = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (oy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, 3, h, x.shape[-1])
        x = x.gather(2, rows)
        cols = (ox[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, 3, h, w)
        x = x.gather(3, cols)
    else:
        x = x.float()
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    return x


_SCALE, _SHIFT = affine_normalisation((0.0, 255.0), IMAGENET_MEAN, IMAGENET_STD)  # uint8 pixel values


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x * _SCALE.to(x.device) + _SHIFT.to(x.device)).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(model: nn.Module, data: ClassificationData, device: torch.device, batch: int = 500) -> dict[str, float]:
    """Top-1/top-5 (%) of ``model`` on ``data``; sharded over DDP ranks and all-reduced."""
    rank, world = rank_world()
    was = model.training
    model.eval()
    idx = torch.arange(rank, len(data), world)
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    for i in range(0, len(idx), batch):
        j = idx[i:i + batch]
        x = _normalise(data.images[j].to(device).float())
        y = data.labels[j].to(device)
        logits = model(x)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        counts[0] += (top5[:, 0] == y).sum()
        counts[1] += (top5 == y[:, None]).any(1).sum()
        counts[2] += len(j)
    if world > 1:
        dist.all_reduce(counts)
    model.train(was)
    return {"top1": round(100 * float(counts[0] / counts[2]), 3), "top5": round(100 * float(counts[1] / counts[2]), 3)}


def resolve_device(spec: str) -> torch.device:
    """``"auto"``: this rank's GPU (``LOCAL_RANK`` under torchrun) if there is one, else the CPU."""
    if spec == "auto":
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def _lr_at(step: int, total: int, warmup: int, base: float, schedule: str) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * t))
    factor = sum(step >= total * f for f in (1 / 3, 2 / 3, 8 / 9))
    return base * 0.1 ** factor


def _param_groups(model: nn.Module, wd: float, bias_decay: bool = True) -> list[dict]:
    # As the TPU ResNet code: weight decay on every trainable variable except BatchNorm's gamma/beta
    # (its loss adds L2 for all variables whose name lacks "batch_normalization"), so the classifier's
    # bias is decayed too. bias_decay=False: no decay on any 1-d parameter (lowps < 0.2's recipe).
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)}
    if not bias_decay:
        bn_params |= {id(p) for p in model.parameters() if p.ndim <= 1}
    decay = [p for p in model.parameters() if id(p) not in bn_params]
    no_decay = [p for p in model.parameters() if id(p) in bn_params]
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def train_backbone(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train per ``cfg``; returns the output directory. See the module docstring.

    The caller's global RNG state and thread count are restored on return (the run seeds its own
    state from ``cfg.seed``; ``cfg.threads`` applies to the run only)."""
    threads = torch.get_num_threads()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            return _train_backbone(cfg, resume)
    finally:
        torch.set_num_threads(threads)


def _check_config(cfg: TrainConfig) -> None:
    """Numbers that would train nothing, or nonsense, are refused with the flag named."""
    import math

    def finite(name: str, v: float) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not finite("epochs", cfg.epochs) or cfg.epochs <= 0:
        raise ValueError(f"--epochs must be a positive number of epochs, got {cfg.epochs}")
    if not finite("weight_decay", cfg.weight_decay) or cfg.weight_decay < 0:
        raise ValueError(f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    if cfg.lr is not None and (not finite("lr", cfg.lr) or not 0 < cfg.lr <= 10):
        raise ValueError(f"--lr must be a finite learning rate in (0, 10], got {cfg.lr}")
    if isinstance(cfg.crop_pad, bool) or not isinstance(cfg.crop_pad, int) or cfg.crop_pad < 0:
        raise ValueError(f"--crop-pad must be an integer >= 0 (0: no random crop), got {cfg.crop_pad!r}")
    if not finite("label_smoothing", cfg.label_smoothing) or not 0 <= cfg.label_smoothing < 1:
        raise ValueError(f"--label-smoothing must lie in [0, 1), got {cfg.label_smoothing}")
    if not finite("warmup_epochs", cfg.warmup_epochs) or cfg.warmup_epochs < 0:
        raise ValueError(f"--warmup-epochs must be >= 0, got {cfg.warmup_epochs}")


def _init_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """timm.create_model's ``init`` argument: lowps's TPU ResNets take one; timm models use their own."""
    if cfg.init == "tpu":
        return {}
    if cfg.arch not in _TPU_ARCHS:
        raise ValueError(f"init={cfg.init!r} applies to lowps's TPU ResNets ({', '.join(_TPU_ARCHS)}), "
                         f"not {cfg.arch!r}; leave it at 'tpu' for timm models (they use their own init)")
    return {"init": cfg.init}


def _splits(cfg: TrainConfig) -> tuple[ClassificationData, ClassificationData]:
    """The training and validation splits of ``cfg.data``, decoded, with one class list."""
    train = load_split(cfg.data, "train", cfg.image_size, cfg.limit_per_class)
    val = load_split(cfg.data, "val", cfg.image_size)
    if len(val.classes) != len(train.classes) or val.classes != train.classes:
        raise ValueError(f"train and val of {cfg.data} have different class lists")
    return train, val


def _resume(out: Path, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> int:
    """Load ``out/resume.pt`` into the model and optimizer; the step to continue from (0 without one)."""
    path = out / "resume.pt"
    if not path.is_file():
        warnings.warn(f"nothing to resume in {out} (no resume.pt); training starts from step 0", stacklevel=3)
        return 0
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        return int(state["step"])
    except Exception as e:  # unpickling errors, EOF, missing keys, another architecture
        raise ValueError(f"cannot resume from {path}: it is empty, corrupt or from another run "
                         f"({type(e).__name__}: {str(e)[:200]}). Delete it to start again, or drop --resume") from e


def _train_backbone(cfg: TrainConfig, resume: bool = False) -> Path:
    require_group_if_launched("train_backbone")
    _check_config(cfg)
    init_kwargs = _init_kwargs(cfg)  # checked before any data is read
    rank, world = rank_world()
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by the {world} processes")
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    train, val = _splits(cfg)
    num_classes = len(train.classes)

    torch.manual_seed(cfg.seed)
    model = timm.create_model(cfg.arch, num_classes=num_classes, **init_kwargs)
    model = model.to(device).to(memory_format=torch.channels_last)
    base_lr = cfg.lr if cfg.lr is not None else 0.1 * cfg.batch_size / 256
    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay, cfg.bias_decay), lr=base_lr, momentum=cfg.momentum,
                          nesterov=True)
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images of "
                         f"{cfg.data}; use a smaller batch")
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    start = _resume(out, model, opt, device) if resume else 0
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    config = asdict(cfg) | {"base_lr": base_lr, "total_steps": total, "steps_per_epoch": steps_per_epoch,
                            "num_classes": num_classes, "world_size": world, "train_images": len(train),
                            "val_images": len(val), "torch": torch.__version__, "timm": timm.__version__}
    keep = set(cfg.ckpt_steps) | set(range(0, total + 1, cfg.ckpt_every)) | {total}

    def checkpoint(step: int) -> None:
        metrics = evaluate(model, val, device, cfg.eval_batch)
        if rank != 0:
            return
        name = f"step{step:07d}"
        sha = save_checkpoint(out / f"{name}.safetensors", model, arch=cfg.arch, num_classes=num_classes,
                              step=step, data=train.source)
        record = {"arch": cfg.arch, "step": step, "epoch": round(step / steps_per_epoch, 4), **metrics,
                  "sha256": sha, "file": f"{name}.safetensors", "config": config}
        write_json(out / f"{name}.json", record)
        with atomic_path(out / "resume.pt") as tmp:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
        if bar is not None:
            bar.write(f"step {step}: val top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}%")

    bar = tqdm(total=total, initial=start, disable=not cfg.progress or rank != 0, desc=cfg.arch)
    if start == 0 and 0 in keep:
        checkpoint(0)
    model.train()
    per_rank = cfg.batch_size // world
    loss_avg = acc_avg = None
    t0 = time.time()
    for step in range(start, total):
        epoch, pos = divmod(step, steps_per_epoch)
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        batch = perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size][rank * per_rank:(rank + 1) * per_rank]
        gen = torch.Generator().manual_seed(cfg.seed * 1000003 + step * 31 + rank)
        x = _normalise(_augment(train.images[batch], cfg.crop_pad, gen).to(device))
        y = train.labels[batch].to(device)
        lr = _lr_at(step, total, warmup, base_lr, cfg.schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        logits = ddp(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower --lr")
        acc = float((logits.argmax(1) == y).float().mean())
        lv = float(loss.detach())
        loss_avg = lv if loss_avg is None else 0.98 * loss_avg + 0.02 * lv
        acc_avg = acc if acc_avg is None else 0.98 * acc_avg + 0.02 * acc
        bar.update(1)
        bar.set_postfix(loss=f"{loss_avg:.3f}", acc=f"{100 * acc_avg:.1f}", lr=f"{lr:.3g}",
                        ips=f"{(step + 1 - start) * cfg.batch_size / (time.time() - t0):.0f}")
        if step + 1 in keep or step + 1 == cfg.stop_after:
            checkpoint(step + 1)
        if step + 1 == cfg.stop_after:
            break
    bar.close()
    return out
