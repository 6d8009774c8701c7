"""A perceptual loss in a small image-restoration loop: a tiny CNN learns to deblur.

    python examples/restoration_loss.py [--loss l1+lowps] [--weight 100] [--steps 200] [--weights random]

The pixel loss sees the network's raw output; the perceptual term sees it clamped to [0, 1]: raw
outputs within 10% of the range pass lowps's input check unchanged, but a network trained for
hundreds of steps can drift further, and a clamp keeps the gradient of every in-range pixel
(docs/losses.md). Losses: ``l2``, ``l1``, ``l1+lowps`` (``L1 + weight * lowps.distance``, default
ResNet-6 mean pool) and ``l1+lpips-rand`` (``L1 + weight * LPIPS`` on a random AlexNet trunk, the
network-free reference a user can run offline). Every ``--val-every`` steps a validation pass runs
under ``torch.inference_mode()`` on held-out patches, with the same metric object the loss uses.
Prints PSNR and the lowps distance on the held-out patches before and after training.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import lowps
from lowps.inputs import load_image
from lowps.sanity import _gaussian_blur

LOSSES = ("l2", "l1", "l1+lowps", "l1+lpips-rand")


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (x.clamp(0, 1) - y).pow(2).mean()))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--loss", default="l1+lowps", choices=LOSSES)
    p.add_argument("--weight", type=float, default=100.0,
                   help="weight of the perceptual term (lowps meanpool is ~100x smaller than LPIPS: "
                        "see docs/losses.md)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--images", default=str(Path(__file__).parent / "images"))
    p.add_argument("--weights", default=None, help="metric weights (default: the shipped default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-4)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    clean = torch.stack([load_image(f) for f in sorted(Path(a.images).glob("*.png"))])
    crops = clean.unfold(2, 64, 32).unfold(3, 64, 32).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 64, 64)
    crops = crops[torch.randperm(len(crops))]
    n_val = max(1, len(crops) // 4)  # held-out patches, never trained on
    train, val = crops[n_val:], crops[:n_val]
    blur_train, blur_val = _gaussian_blur(train, 1.5), _gaussian_blur(val, 1.5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 3, 3, padding=1))
    metric = lowps.PerceptualDistance(weights=a.weights)
    lpips_rand = lowps.LPIPS(net="alex", pnet_rand=True, verbose=False) if a.loss == "l1+lpips-rand" else None
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)

    def restore(x: torch.Tensor) -> torch.Tensor:
        return x + net(x)  # residual, raw: no clamp before the loss

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if a.loss == "l2":
            return F.mse_loss(out, target)
        loss = F.l1_loss(out, target)
        if a.loss == "l1+lowps":
            loss = loss + a.weight * metric(out.clamp(0, 1), target).mean()
        elif lpips_rand is not None:
            loss = loss + a.weight * lpips_rand(out.clamp(0, 1), target, normalize=True).mean()
        return loss

    def validate() -> tuple[float, float]:
        with torch.inference_mode():  # the same metric object as the loss: any autograd mode, any order
            out = restore(blur_val)
            return psnr(out, val), float(metric(out.clamp(0, 1), val).mean())

    before = validate()
    for step in range(1, a.steps + 1):
        loss = loss_fn(restore(blur_train), train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % a.val_every == 0 and step < a.steps:
            validate()
    after = validate()
    print(f"loss {a.loss} (weight {a.weight:g}), {a.steps} steps, {len(train)} train / {len(val)} held-out patches")
    print(f"PSNR {before[0]:.2f} -> {after[0]:.2f}; lowps {before[1]:.6g} -> {after[1]:.6g}")


if __name__ == "__main__":
    main()
