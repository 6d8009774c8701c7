"""Learn LPIPS-style linear heads on BAPPS 2AFC (Zhang et al. 2018 protocol, over any lowps backbone).

The frozen backbone's unit-normalised feature differences are weighted per channel by ``w >= 0``
(`lowps.heads.LinearHead`). A small "Dist2Logit" network maps ``(d0, d1)`` to the
probability that raters chose ``p1``, trained with binary cross-entropy against the judge ``h``.
Adam (lr 1e-4, beta1 0.5), ``epochs`` at the full rate then ``decay_epochs`` of linear decay, batch
50; the weights are clamped to ``w >= 0`` after every step. lowps starts the weights at 1 (the
unweighted ``local`` distance) rather than at random, so training can only be compared against a
meaningful start.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from .._io import atomic_path, write_json
from ..config import MetricConfig, create_metric
from ..data.bapps import TwoAFCSet, find_root, list_categories
from ..heads import LinearHead
from ..weights.hub import sha256_file

__all__ = ["Dist2Logit", "train_linear", "lr_factor"]


class Dist2Logit(nn.Module):
    """P(raters chose p1) from (d0, d1, d0 - d1, d0/(d1+eps), d1/(d0+eps)), as in LPIPS training."""

    def __init__(self, hidden: int = 32, eps: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.net = nn.Sequential(nn.Linear(5, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        x = torch.stack([d0, d1, d0 - d1, d0 / (d1 + self.eps), d1 / (d0 + self.eps)], dim=1)
        return self.net(x).squeeze(1)  # logits; BCE-with-logits is the stable form of sigmoid + BCE


def lr_factor(epoch: int, epochs: int, decay_epochs: int) -> float:
    """The learning-rate factor of 0-based ``epoch``, exactly as LPIPS's train script schedules it.

    lpips ``train.py`` calls ``update_learning_rate`` at the end of every 1-based epoch > ``nepoch``,
    lowering the rate by ``lr / nepoch_decay`` each time: epochs 1..nepoch+1 run at the full rate, then
    (for 5 + 5) 0.8, 0.6, 0.4, 0.2 of it.
    """
    return 1.0 if epoch <= epochs else max(0.0, 1 - (epoch - epochs) / decay_epochs)


def train_linear(backbone: str, bapps_root: str | None, out: str, weights: str | None = None,
                 split: str = "train", categories: list[str] | None = None, epochs: int = 5,
                 decay_epochs: int = 5, lr: float = 1e-4, beta1: float = 0.5, batch_size: int = 50,
                 device: str = "cpu", seed: int = 0, num_workers: int = 0, progress: bool = True) -> Path:
    """Train a linear head for ``backbone`` on BAPPS ``split``; write ``out`` (safetensors) and ``out``.json.

    The caller's global RNG state is restored on return (the run seeds its own from ``seed``)."""
    import math

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"--epochs must be a positive int, got {epochs}")
    if isinstance(decay_epochs, bool) or not isinstance(decay_epochs, int) or decay_epochs < 0:
        raise ValueError(f"--decay-epochs must be an int >= 0, got {decay_epochs}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and 0 < lr <= 10):
        raise ValueError(f"--lr must be a finite learning rate in (0, 10], got {lr}")
    if Path(out).suffix != ".safetensors":
        raise ValueError(f"--out {out}: the head is written as safetensors; give a file name ending in .safetensors")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _train_linear(backbone, bapps_root, out, weights, split, categories, epochs, decay_epochs, lr, beta1,
                             batch_size, device, seed, num_workers, progress)


def _train_linear(backbone: str, bapps_root: str | None, out: str, weights: str | None, split: str,
                  categories: list[str] | None, epochs: int, decay_epochs: int, lr: float, beta1: float,
                  batch_size: int, device: str, seed: int, num_workers: int, progress: bool) -> Path:
    root = find_root(bapps_root)
    cats = categories or list_categories(root, "2afc", split)
    data: ConcatDataset = ConcatDataset([TwoAFCSet(root, c, split) for c in cats])
    metric = create_metric(MetricConfig(backbone, "linear", weights=weights, head_weights="ones"), device=device)
    head: LinearHead = metric.head  # type: ignore[assignment]
    head.requires_grad_(True)
    head.dropout = 0.5  # LPIPS's NetLinLayer: Dropout(0.5) before each 1x1 conv, active in train mode only
    head.train()
    rank_net = Dist2Logit().to(device)
    params = list(head.parameters()) + list(rank_net.parameters())
    opt = torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999))
    total = epochs + decay_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(e, epochs, decay_epochs))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed))
    loss_fn = nn.BCEWithLogitsLoss()
    history = []
    bar = tqdm(total=total * len(loader), disable=not progress, desc=f"linear head {metric.backbone.arch}")
    for epoch in range(total):
        running = 0.0
        for ref, p0, p1, judge in loader:
            ref, p0, p1 = ref.to(device), p0.to(device), p1.to(device)
            d0, d1 = metric(ref, p0), metric(ref, p1)
            loss = loss_fn(rank_net(d0, d1), judge.to(device).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            head.clamp_()  # LPIPS protocol: project onto w >= 0 after every step
            running += float(loss.detach()) * len(judge)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.4f}")
        sched.step()
        history.append(running / len(data))
    bar.close()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    meta = {"arch": metric.backbone.arch, "kind": "linear-head", "base": str(metric.backbone.weights_name),
            "base_sha256": str(metric.backbone.weights_sha256), "layers": ",".join(metric.layer_names),
            "protocol": f"2AFC BCE, Adam lr {lr} beta1 {beta1}, {epochs}+{decay_epochs} epochs, batch {batch_size}",
            "bapps_split": split, "categories": ",".join(cats), "triplets": str(len(data))}
    with atomic_path(out_path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    record = dict(meta, sha256=sha256_file(out_path), loss_per_epoch=history)
    write_json(out_path.with_suffix(".json"), record)
    return out_path
