"""Save a spatial distance heatmap: where do two images differ perceptually?

    python examples/heatmap.py [IMG0 IMG1] [--out heatmap.png] [--weights ...]

Uses the ``local`` head's spatial map (N x 1 x H x W at the input size) and writes the two images
and the map side by side.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import lowps
from lowps.inputs import load_image

IMAGES = Path(__file__).parent / "images"


def colormap(m: np.ndarray) -> np.ndarray:
    """Map [0, 1] to a dark-blue -> yellow ramp (no matplotlib needed)."""
    m = m[..., None]
    lo, hi = np.array([20, 20, 80]), np.array([250, 230, 40])
    return (lo + (hi - lo) * m).astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("img0", nargs="?", default=str(IMAGES / "ref.png"))
    p.add_argument("img1", nargs="?", default=str(IMAGES / "jpeg.png"))
    p.add_argument("--out", default="heatmap.png")
    p.add_argument("--weights", default=None)
    a = p.parse_args()
    x0, x1 = load_image(a.img0), load_image(a.img1)
    metric = lowps.PerceptualDistance(distance="local", weights=a.weights)
    with torch.no_grad():
        smap = metric.spatial(x0, x1)[0, 0].numpy()
    norm = (smap - smap.min()) / (smap.max() - smap.min() + 1e-12)
    to_u8 = lambda t: (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    Image.fromarray(np.concatenate([to_u8(x0), to_u8(x1), colormap(norm)], axis=1)).save(a.out)
    print(f"wrote {a.out}: mean map {smap.mean():.5f}, distance {float(metric(x0, x1)):.5f}")


if __name__ == "__main__":
    main()
