"""Write BAPPS-layout trees of any size (the real dataset cannot be downloaded here).

Patches come from Tiny ImageNet val (../shared/data) when present, else from procedural textures.
``judge`` follows a rule the caller picks: "severity" (raters prefer the less distorted patch) or
"noise-only" (raters see only the noise part of a noise + colour-shift distortion; learnable by a
linear head, not matched by the unweighted one).

    python tests/bapps_fixture.py OUT --n 40 [--categories traditional cnn ...] [--jnd]
"""
from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

TINY_VAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tiny-imagenet" / "val.zip"


def natural_patches(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """n uint8 patches (n, size, size, 3)."""
    rng = np.random.default_rng(seed)
    if TINY_VAL.is_file():
        with zipfile.ZipFile(TINY_VAL) as zf:
            names = sorted(m for m in zf.namelist() if m.endswith(".JPEG"))
            pick = rng.choice(len(names), n, replace=n > len(names))
            out = [np.asarray(Image.open(io.BytesIO(zf.read(names[i]))).convert("RGB").resize((size, size)))
                   for i in pick]
        return np.stack(out)
    # procedural: smooth random fields plus edges, so distortions are visible at several scales
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = np.zeros((size, size, 3))
        for _ in range(6):
            fx, fy, ph = rng.uniform(1, 12, 2).tolist() + [rng.uniform(0, 6.3)]
            img += rng.uniform(0.2, 1, 3) * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)[..., None]
        img = (img - img.min()) / (img.max() - img.min() + 1e-9)
        out.append((img * 255).astype(np.uint8))
    return np.stack(out)


def distort(img: np.ndarray, kind: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float64) / 255
    if kind == "blur":
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(float(0.3 + 2.5 * severity))))
    if kind == "noise":
        x = x + rng.normal(0, 0.02 + 0.25 * severity, x.shape)
    elif kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(95 - 90 * severity))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    elif kind == "color":
        x = x + severity * 0.3 * rng.uniform(-1, 1, 3)
    else:
        raise ValueError(kind)
    return (x.clip(0, 1) * 255).round().astype(np.uint8)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_2afc(root: Path, category: str, n: int, split: str = "val", seed: int = 0, rule: str = "severity",
              raters: int = 5) -> None:
    rng = np.random.default_rng(seed)
    base = Path(root) / "2afc" / split / category
    refs = natural_patches(n, seed)
    kinds = ["blur", "noise", "jpeg"]
    for i, ref in enumerate(refs):
        if rule == "severity":
            k0, k1 = rng.choice(kinds, 2)
            s0, s1 = rng.uniform(0, 1, 2)
            p0, p1 = distort(ref, k0, s0, rng), distort(ref, k1, s1, rng)
            prob_p1 = 1 / (1 + np.exp(-8 * (s0 - s1)))  # raters prefer the less distorted patch
        elif rule == "noise-only":
            s0, s1 = rng.uniform(0, 0.6, 2)
            c0, c1 = rng.uniform(0, 1, 2)
            p0 = distort(distort(ref, "color", c0, rng), "noise", s0, rng)
            p1 = distort(distort(ref, "color", c1, rng), "noise", s1, rng)
            prob_p1 = 1 / (1 + np.exp(-20 * (s0 - s1)))
        else:
            raise ValueError(rule)
        h = rng.binomial(raters, prob_p1) / raters
        name = f"{i:06d}"
        _save(base / "ref" / f"{name}.png", ref)
        _save(base / "p0" / f"{name}.png", p0)
        _save(base / "p1" / f"{name}.png", p1)
        (base / "judge").mkdir(parents=True, exist_ok=True)
        np.save(base / "judge" / f"{name}.npy", np.array([h], dtype=np.float32))


def make_jnd(root: Path, category: str, n: int, seed: int = 0, raters: int = 3) -> None:
    rng = np.random.default_rng(seed + 1000)
    base = Path(root) / "jnd" / "val" / category
    for i, ref in enumerate(natural_patches(n, seed + 1)):
        s = rng.uniform(0, 1)
        other = distort(ref, rng.choice(["blur", "noise", "jpeg"]), s, rng)
        same = rng.binomial(raters, float(np.exp(-6 * s))) / raters
        name = f"{i:06d}"
        _save(base / "p0" / f"{name}.png", ref)
        _save(base / "p1" / f"{name}.png", other)
        (base / "same").mkdir(parents=True, exist_ok=True)
        np.save(base / "same" / f"{name}.npy", np.array([same], dtype=np.float32))


def make_bapps(root: Path, n: int = 20, categories=("traditional", "cnn"), jnd: bool = False,
               split: str = "val", rule: str = "severity", seed: int = 0) -> Path:
    for k, cat in enumerate(categories):
        make_2afc(root, cat, n, split, seed + k, rule)
        if jnd and cat in ("traditional", "cnn"):
            make_jnd(root, cat, n, seed + k)
    return Path(root)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--categories", nargs="+", default=["traditional", "cnn"])
    p.add_argument("--jnd", action="store_true")
    p.add_argument("--rule", default="severity", choices=["severity", "noise-only"])
    a = p.parse_args()
    print(make_bapps(a.out, a.n, a.categories, a.jnd, rule=a.rule))
