"""The scale of each lowps head as a loss, next to L1/L2 and LPIPS (docs/losses.md).

    python tools/loss_scale.py --data tiny-imagenet:../shared/data/tiny-imagenet [--n 256] [--json out.json]

On ``n`` natural 64x64 patches (Tiny ImageNet val, seeded pick) and three distortions of moderate
severity (Gaussian blur sigma 1, Gaussian noise std 0.05, JPEG quality 30), prints the mean value
of each distance and the norm of its gradient with respect to the distorted image (per pixel,
RMS), with their ratio to L1's: the weight that makes a term pull as hard as L1 is about
``L1 gradient / term gradient``. LPIPS-alex here has a *random* trunk (its ImageNet weights cannot be
downloaded where this runs); its linear layers are the calibrated v0.1 ones.
"""
from __future__ import annotations

import argparse
import platform

import torch

import lowps
from lowps.data.imagenet import load_split
from lowps.sanity import _gaussian_blur, _jpeg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    val = load_split(a.data, "val")
    pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(a.seed))[:a.n]
    x = val.images[pick].float() / 255 if val.images.dtype == torch.uint8 else val.images[pick]
    g = torch.Generator().manual_seed(a.seed)
    distorted = {"blur": _gaussian_blur(x, 1.0), "noise": (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1),
                 "jpeg": _jpeg(x, 30)}
    lp = lowps.LPIPS(net="alex", pnet_rand=True, verbose=False)
    terms = {"L1": lambda y, t: (y - t).abs().flatten(1).mean(1), "L2": lambda y, t: (y - t).pow(2).flatten(1).mean(1)}
    for head in ("structure", "local", "meanpool", "style"):
        m = lowps.PerceptualDistance(distance=head)
        terms[f"lowps {head}"] = m
    terms["LPIPS-alex (random trunk)"] = lambda y, t: lp(y, t, normalize=True).flatten()
    rows = {}
    for name, fn in terms.items():
        vals, grads = [], []
        for kind, y in distorted.items():
            y = y.clone().requires_grad_(True)
            d = fn(y, x)
            (gy,) = torch.autograd.grad(d.sum(), y)
            vals.append(float(d.mean()))
            grads.append(float(gy.pow(2).mean().sqrt()))
        rows[name] = {"value": dict(zip(distorted, vals)), "grad_rms": dict(zip(distorted, grads))}
    ref = rows["L1"]
    print(f"{'term':<28}" + "".join(f"{k + ' value':>14}" for k in distorted) + f"{'grad vs L1':>12}")
    for name, r in rows.items():
        ratio = sum(r["grad_rms"][k] / ref["grad_rms"][k] for k in distorted) / len(distorted)
        r["grad_ratio_to_l1"] = ratio
        print(f"{name:<28}" + "".join(f"{r['value'][k]:>14.4g}" for k in distorted) + f"{ratio:>12.3g}")
    if a.json:
        from lowps._io import write_json
        write_json(a.json, {"data": a.data, "n": len(pick), "seed": a.seed, "cpu": platform.processor() or
                            platform.machine(), "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
