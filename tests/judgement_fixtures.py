"""Write human-judgement sets in their published layouts (the real ones cannot be downloaded here).

Reference images are Tiny ImageNet val patches (../shared/data) when present, else procedural
textures (tests/bapps_fixture.py). Distortions (blur, noise, jpeg, color) have known severities and
the "human" scores follow them: MOS falls linearly with severity (plus seeded rater noise), and in
2AFC sets h is the fraction of 5 simulated raters who find the less distorted image closer.

    python tests/judgement_fixtures.py {2afc,nights,mos,tid2013,kadid10k,pipal} OUT [--refs 4] [--size 64]

The generated scores are synthetic: they test that readers, statistics and the CLI are right, and
say nothing about how well any metric agrees with people.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from bapps_fixture import distort, natural_patches

KINDS = ("blur", "noise", "jpeg", "color")


def _save(img: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def _refs(n: int, size: int, seed: int) -> np.ndarray:
    return natural_patches(n, seed=seed, size=size)


def _mos(severity: float, rng: np.random.Generator, lo: float, hi: float) -> float:
    """A score that falls with severity on [lo, hi], with rater noise (higher = better quality)."""
    return float(np.clip(hi - (hi - lo) * severity + rng.normal(0, 0.05 * (hi - lo)), lo, hi))


def _triplets(n: int, size: int, seed: int):
    """(ref, p0, p1, h, category) with h = share of 5 raters who see p1 as closer (less distorted)."""
    rng = np.random.default_rng(seed)
    refs = _refs(n, size, seed)
    for i, ref in enumerate(refs):
        kind = KINDS[i % len(KINDS)]
        s0, s1 = rng.uniform(0.05, 1, 2)
        p0, p1 = distort(ref, kind, s0, rng), distort(ref, kind, s1, rng)
        prob_p1 = 1 / (1 + np.exp(-(s0 - s1) / 0.15))  # p1 less distorted -> chosen more often
        h = rng.binomial(5, prob_p1) / 5
        yield ref, p0, p1, float(h), kind


def make_2afc_csv(out: str | Path, n: int = 12, size: int = 64, seed: int = 0) -> Path:
    """``out/judgements.csv`` (ref,p0,p1,h,category) with images under ``out/images/``."""
    out = Path(out)
    rows = []
    for i, (ref, p0, p1, h, kind) in enumerate(_triplets(n, size, seed)):
        names = [f"images/{i:04d}_{k}.png" for k in ("ref", "p0", "p1")]
        for img, name in zip((ref, p0, p1), names):
            _save(img, out / name)
        rows.append([*names, f"{h:.2f}", kind])
    path = out / "judgements.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "p0", "p1", "h", "category"])
        w.writerows(rows)
    return path


def make_nights(out: str | Path, n: int = 12, size: int = 64, seed: int = 0) -> Path:
    """NIGHTS as DreamSim releases it: ``nights/data.csv`` plus ``ref/`` and ``distort/`` folders."""
    root = Path(out) / "nights"
    rows = []
    rng = np.random.default_rng(seed + 1)
    for i, (ref, p0, p1, h, kind) in enumerate(_triplets(n, size, seed)):
        folder = f"{i // 4:03d}"
        ref_p, left_p, right_p = f"ref/{folder}/{i:03d}.png", f"distort/{folder}/{i:03d}_0.png", \
            f"distort/{folder}/{i:03d}_1.png"
        for img, name in zip((ref, p0, p1), (ref_p, left_p, right_p)):
            _save(img, root / name)
        votes = int(rng.choice([6, 7, 8, 9, 10])) if i % 5 else 5  # every 5th: below DreamSim's cut-off
        right = round(h * votes)
        split = ("train", "val", "test", "test")[i % 4]
        rows.append([i, ref_p, left_p, right_p, votes - right, right, votes, f"a {kind} picture", split,
                     i % 2 == 0])
    path = root / "data.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "ref_path", "left_path", "right_path", "left_vote", "right_vote", "votes", "prompt",
                    "split", "is_imagenet"])
        w.writerows(rows)
    return root


def _rated(refs: int, levels: int, size: int, seed: int, lo: float, hi: float):
    rng = np.random.default_rng(seed)
    for r, ref in enumerate(_refs(refs, size, seed)):
        for t, kind in enumerate(KINDS):
            for lvl in range(levels):
                sev = (lvl + 1) / levels
                yield r, ref, t, lvl, distort(ref, kind, sev, rng), _mos(sev, rng, lo, hi)


def make_mos_csv(out: str | Path, refs: int = 4, levels: int = 3, size: int = 64, seed: int = 0,
                 dmos: bool = False) -> Path:
    """``out/scores.csv`` (ref,dist,mos,category); ``dmos=True`` writes 10 - MOS (lower is better)."""
    out = Path(out)
    rows = []
    for r, ref, t, lvl, img, mos in _rated(refs, levels, size, seed, 0, 10):
        ref_name = f"ref/r{r:02d}.png"
        if not (out / ref_name).exists():
            _save(ref, out / ref_name)
        name = f"dist/r{r:02d}_{KINDS[t]}_{lvl}.png"
        _save(img, out / name)
        rows.append([ref_name, name, f"{(10 - mos) if dmos else mos:.4f}", KINDS[t]])
    path = out / "scores.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "dist", "mos", "category"])
        w.writerows(rows)
    return path


def make_tid2013(out: str | Path, refs: int = 4, levels: int = 3, size: int = 64, seed: int = 0) -> Path:
    """TID2013's layout: ``reference_images/I01.BMP``, ``distorted_images/i01_TT_L.bmp``, ``mos_with_names.txt``."""
    root = Path(out)
    lines = []
    for r, ref, t, lvl, img, mos in _rated(refs, levels, size, seed, 0, 9):
        _save(ref, root / "reference_images" / f"I{r + 1:02d}.BMP")
        name = f"i{r + 1:02d}_{t + 1:02d}_{lvl + 1}.bmp"
        _save(img, root / "distorted_images" / name)
        lines.append(f"{mos:.5f} {name}")
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    return root


def make_kadid10k(out: str | Path, refs: int = 4, levels: int = 3, size: int = 64, seed: int = 0) -> Path:
    """KADID-10k's layout: ``kadid10k/images/I01.png``, ``I01_TT_LL.png`` and ``dmos.csv``."""
    root = Path(out) / "kadid10k"
    rows = []
    for r, ref, t, lvl, img, mos in _rated(refs, levels, size, seed, 1, 5):
        ref_name = f"I{r + 1:02d}.png"
        _save(ref, root / "images" / ref_name)
        name = f"I{r + 1:02d}_{t + 1:02d}_{lvl + 1:02d}.png"
        _save(img, root / "images" / name)
        rows.append([name, ref_name, f"{mos:.2f}", "0.5"])
    with open(root / "dmos.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dist_img", "ref_img", "dmos", "var"])
        w.writerows(rows)
    return root


def make_pipal(out: str | Path, refs: int = 4, levels: int = 3, size: int = 64, seed: int = 0) -> Path:
    """PIPAL's training layout: ``Train_Ref/A0001.bmp``, ``Train_Dist/A0001_TT_KK.bmp``, ``Train_Label/A0001.txt``."""
    root = Path(out)
    labels: dict[int, list[str]] = {}
    for r, ref, t, lvl, img, mos in _rated(refs, levels, size, seed, 1000, 1800):
        _save(ref, root / "Train_Ref" / f"A{r + 1:04d}.bmp")
        name = f"A{r + 1:04d}_{t:02d}_{lvl:02d}.bmp"
        _save(img, root / "Train_Dist" / name)
        labels.setdefault(r, []).append(f"{name},{mos:.4f}")
    (root / "Train_Label").mkdir(parents=True, exist_ok=True)
    for r, lines in labels.items():
        (root / "Train_Label" / f"A{r + 1:04d}.txt").write_text("\n".join(lines) + "\n")
    return root


MAKERS = {"2afc": make_2afc_csv, "nights": make_nights, "mos": make_mos_csv, "tid2013": make_tid2013,
          "kadid10k": make_kadid10k, "pipal": make_pipal}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=list(MAKERS))
    p.add_argument("out")
    p.add_argument("--refs", type=int, default=4, help="reference images (2afc/nights: triplets)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    kw = {"n": a.refs} if a.dataset in ("2afc", "nights") else {"refs": a.refs}
    print(MAKERS[a.dataset](a.out, size=a.size, seed=a.seed, **kw))


if __name__ == "__main__":
    main()
