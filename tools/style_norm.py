"""What the style head's Gram normalisation changes (docs/concepts.md): ``style_norm="hw"`` vs ``"none"``.

    python tools/style_norm.py --data tiny-imagenet:../shared/data/tiny-imagenet [--n 500] [--seed 0]

On ``n`` 2AFC-like triplets of natural patches (a Tiny ImageNet val patch and two distorted versions,
each with a random distortion of lowps.sanity at a random severity), with the default ResNet-6:
the share of the style distance carried by each layer under both normalisations (5th/50th/95th
percentiles over pairs), and the fraction of triplets whose 2AFC decision (which version is closer)
flips between them.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import lowps
from lowps.data.imagenet import load_split
from lowps.sanity import DISTORTIONS, distort_batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    val = load_split(a.data, "val")
    pick = torch.from_numpy(rng.choice(len(val), a.n, replace=False))
    x = val.images[pick].float() / 255
    kinds = [k for k in DISTORTIONS if k != "shift"]
    refs, p0s, p1s = [], [], []
    for i in range(a.n):
        versions = []
        for _ in range(2):
            kind = kinds[rng.integers(len(kinds))]
            sev = DISTORTIONS[kind][rng.integers(5)]
            ref, dist = distort_batch(x[i:i + 1], kind, sev, seed=int(rng.integers(1 << 30)))
            versions.append(dist)
        refs.append(ref)
        p0s.append(versions[0])
        p1s.append(versions[1])
    ref, p0, p1 = torch.cat(refs), torch.cat(p0s), torch.cat(p1s)
    out = {}
    d = {}
    for norm in ("hw", "none"):
        m = lowps.PerceptualDistance(distance="style", style_norm=norm)
        with torch.inference_mode():
            t0, per0 = m(ref, p0, per_layer=True)
            t1, _ = m(ref, p1, per_layer=True)
        shares = {k: np.percentile((v / t0.clamp_min(1e-30)).numpy(), [5, 50, 95]).round(3).tolist()
                  for k, v in per0.items()}
        d[norm] = (t0.numpy(), t1.numpy())
        out[norm] = {"layer_share_p5_p50_p95": shares}
    flips = np.mean(np.sign(d["hw"][0] - d["hw"][1]) != np.sign(d["none"][0] - d["none"][1]))
    out["decisions_flipped"] = float(flips)
    out["n"] = a.n
    print(json.dumps(out, indent=1))
    if a.json:
        from lowps._io import write_json
        write_json(a.json, out)


if __name__ == "__main__":
    main()
