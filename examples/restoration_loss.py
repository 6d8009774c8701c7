"""A perceptual loss in a small image-restoration loop: a tiny CNN learns to deblur.

    python examples/restoration_loss.py [--steps 200] [--images examples/images] [--weights random]

The loss is ``L1 + 0.5 * lowps distance`` (default ResNet-6, mean-pool head). Prints the L1 and the
lowps distance of the restored images to the clean ones before and after training.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import lowps
from lowps.inputs import load_image
from lowps.sanity import _gaussian_blur


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--images", default=str(Path(__file__).parent / "images"))
    p.add_argument("--weights", default=None, help="metric weights (default: the shipped default)")
    a = p.parse_args()
    torch.manual_seed(0)
    clean = torch.stack([load_image(f) for f in sorted(Path(a.images).glob("*.png"))])
    crops = clean.unfold(2, 64, 32).unfold(3, 64, 32).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 64, 64)
    blurred = _gaussian_blur(crops, 1.5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 3, 3, padding=1))
    metric = lowps.PerceptualDistance(weights=a.weights)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def restore(x: torch.Tensor) -> torch.Tensor:
        return (x + net(x)).clamp(0, 1)  # residual: start from the input

    with torch.no_grad():
        before = (F.l1_loss(restore(blurred), crops).item(), metric(restore(blurred), crops).mean().item())
    for step in range(a.steps):
        out = restore(blurred)
        loss = F.l1_loss(out, crops) + 0.5 * metric(out, crops).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = (F.l1_loss(restore(blurred), crops).item(), metric(restore(blurred), crops).mean().item())
    print(f"L1 {before[0]:.4f} -> {after[0]:.4f}; lowps {before[1]:.5f} -> {after[1]:.5f} ({a.steps} steps)")


if __name__ == "__main__":
    main()
