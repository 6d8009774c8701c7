"""Choose lowps's default by agreement with people (issue #33): per-layer distances of candidate
checkpoints and heads on a 2AFC judgement set, scored on a fit split and on a held-out split.

    python tools/agreement_study.py --csv ../shared/human/materials-dev/twoafc.csv --out runs/study
    python tools/agreement_study.py --csv ... --out runs/study --candidates resnet6:runs/r6/step0001000.safetensors

Protocol (docs/models.md, "How the default was chosen"):
* images resized to 64x64 as the judgement set's README scores them (PIL Lanczos down, bicubic up);
* the references, sorted by file name, are split by position: every third one (index % 3 == 2) is
  the *held-out* split, used only for the final comparison; the others are the *fit* split, on
  which layer subsets are compared and per-layer weights are fitted (`fit_layer_weights`: one
  non-negative scalar per stage by a 2AFC logistic loss, as LPIPS fits its linear layers on BAPPS,
  Zhang et al. 2018, sec. 3);
* scores are BAPPS's 2AFC (`lowps.scoring.score_2afc`), with 95% bootstrap CIs over references.

Per-layer distances are cached in ``--out`` (one ``.npz`` per candidate), so re-running with other
selections costs no forward passes. Nothing is written elsewhere.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import lowps
from lowps.data.judgements import read_2afc_csv
from lowps.scoring import score_2afc

HEADS = ("structure", "local", "meanpool", "style")
DEFAULT_CANDIDATES = [
    "resnet6:resnet6-tiny-s100", "resnet6:resnet6-tiny-s500", "resnet6:resnet6-tiny-s1250",
    "resnet6:resnet6-tiny-s2500", "resnet6:resnet6-tiny-s5910", "resnet10:resnet10-tiny-s5910",
    "resnet18_tpu:resnet18-tiny-s3940", "resnet6:random",
]


def load_64(path: Path, size: int = 64) -> torch.Tensor:
    """The judgement set's protocol: RGB, Lanczos when shrinking, bicubic when enlarging."""
    im = Image.open(path).convert("RGB")
    filt = Image.LANCZOS if min(im.size) > size else Image.BICUBIC
    im = im.resize((size, size), filt)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def split_refs(refs: list[str]) -> dict[str, str]:
    """``{ref: "fit" | "heldout"}``: every third reference in sorted order is held out."""
    return {r: ("heldout" if i % 3 == 2 else "fit") for i, r in enumerate(sorted(set(refs)))}


def candidate_distances(spec: str, triplets: list, images: dict, out: Path, size: int) -> dict[str, np.ndarray]:
    """Per-layer distances d0/d1 (triplets x layers) of every head for ``ARCH:WEIGHTS``, cached."""
    arch, weights = spec.split(":", 1)
    cache = out / (spec.replace(":", "__").replace("/", "_") + f"_{size}.npz")
    if cache.is_file():
        return dict(np.load(cache))
    ref = torch.stack([images[t.ref] for t in triplets])
    p0 = torch.stack([images[t.p0] for t in triplets])
    p1 = torch.stack([images[t.p1] for t in triplets])
    res: dict[str, np.ndarray] = {}
    for head in HEADS:
        m = lowps.PerceptualDistance(arch, distance=head, weights=weights)
        with torch.inference_mode():
            for name, x in (("d0", p0), ("d1", p1)):
                per = m(ref, x, per_layer=True)[1]
                res[f"{head}:{name}"] = torch.stack([per[k] for k in m.layer_names], 1).double().numpy()
        res[f"{head}:layers"] = np.array(m.layer_names)
    np.savez(cache, **res)
    return res


def bootstrap_ci(d0: np.ndarray, d1: np.ndarray, h: np.ndarray, groups: np.ndarray, n: int = 1000) -> list[float]:
    rng = np.random.default_rng(0)
    uniq = np.unique(groups)
    members = [np.nonzero(groups == g)[0] for g in uniq]
    scores = []
    for _ in range(n):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        scores.append(score_2afc(d0[idx], d1[idx], h[idx]))
    return [float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))]


def fit_layer_weights(d0: torch.Tensor, d1: torch.Tensor, h: torch.Tensor, *, l2: float = 1e-3,
                      steps: int = 200) -> torch.Tensor:
    """Non-negative per-layer weights (L,) from per-layer distances ``d0``, ``d1`` (N, L) and judges
    ``h`` (N,) in [0, 1] (the fraction of raters who chose p1), by L-BFGS on the logistic 2AFC loss.

    ``l2`` is a small pull of ``log w`` towards uniform (0: none), which keeps a layer that the data
    cannot rank from running off to 0 or infinity. Deterministic (no random start)."""
    d0, d1, h = (torch.as_tensor(t, dtype=torch.float64) for t in (d0, d1, h))
    if d0.ndim != 2 or d0.shape != d1.shape or h.shape != d0.shape[:1] or d0.shape[0] == 0:
        raise ValueError(f"d0 and d1 must be (N, L) and h (N,), N >= 1; got {tuple(d0.shape)}, {tuple(d1.shape)}, "
                         f"{tuple(h.shape)}")
    if not (torch.isfinite(d0).all() and torch.isfinite(d1).all() and torch.isfinite(h).all()):
        raise ValueError("d0, d1 and h must be finite")
    if h.min() < 0 or h.max() > 1:
        raise ValueError("h must lie in [0, 1] (the fraction of raters who chose p1)")
    margin = d0 - d1
    # put every layer on one scale first, so the optimiser's start (all ones) is a sensible one
    scale = margin.abs().mean(0).clamp_min(1e-12)
    margin = margin / scale
    log_w = torch.zeros(d0.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logit = margin @ log_w.exp()  # the mean of log_w is the logistic's slope
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, h) + l2 * (log_w - log_w.mean()).pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w = log_w.detach().exp() / scale
    return (w * (len(w) / w.sum())).float()


def probes(triplets: list, images: dict, out: Path, size: int, masks: dict, h: np.ndarray,
           trunks: Path | None) -> list[dict]:
    """The alternatives docs/models.md reports as not helping, scored on every split:
    the stem as an extra tap, the trunk on upsampled and downsampled inputs, head and checkpoint combinations, and
    (with ``--lpips-trunks DIR``) LPIPS's ImageNet trunks with and without their linear layers."""
    import torch.nn.functional as F

    from lowps.heads import unit_normalize

    ref = torch.stack([images[t.ref] for t in triplets])
    p0 = torch.stack([images[t.p0] for t in triplets])
    p1 = torch.stack([images[t.p1] for t in triplets])
    rows: list[dict] = []

    def add(name: str, a: np.ndarray, b: np.ndarray) -> None:
        rows.append({"probe": name, **{k: score_2afc(a[m], b[m], h[m]) for k, m in masks.items()}})

    def cached(spec: str) -> dict[str, np.ndarray]:
        return dict(np.load(out / (spec.replace(":", "__") + f"_{size}.npz")))

    base = cached("resnet6:resnet6-tiny-s1250")
    add("s1250 structure (the default)", base["structure:d0"].sum(1), base["structure:d1"].sum(1))
    add("s1250 local (the 0.3 default)", base["local:d0"].sum(1), base["local:d1"].sum(1))
    # the structure head's texture (meanpool) share: 0 is the correlation alone
    for tw in (0.0, 3.0, 10.0):
        m = lowps.PerceptualDistance(weights="resnet6-tiny-s1250")
        m.head.texture_weight = tw
        with torch.inference_mode():
            add(f"s1250 structure, texture_weight {tw:g}", m(ref, p0).double().numpy(), m(ref, p1).double().numpy())
    # DISTS's own form (Ding et al. 2020, eq. 7-8) with uniform weights (alpha = beta = 1/2) on the same trunk
    m = lowps.PerceptualDistance(weights="resnet6-tiny-s1250")

    def dists(x: torch.Tensor, y: torch.Tensor, c: float = 1e-6) -> np.ndarray:
        total = 0
        for a, b in zip(m.features(x), m.features(y)):
            ma, mb = a.mean((2, 3)), b.mean((2, 3))
            va, vb = a.var((2, 3), unbiased=False), b.var((2, 3), unbiased=False)
            cov = ((a - ma[..., None, None]) * (b - mb[..., None, None])).mean((2, 3))
            t, s = (2 * ma * mb + c) / (ma ** 2 + mb ** 2 + c), (2 * cov + c) / (va + vb + c)
            total = total + 1 - (t + s).mean(1) / 2
        return total.double().numpy()
    with torch.inference_mode():
        add("s1250 DISTS form, uniform weights", dists(ref, p0), dists(ref, p1))
    # the stem (7x7 conv + BN + ReLU, before and after the max-pool) as a fifth layer
    for w in ("resnet6-tiny-s500", "resnet6-tiny-s1250", "resnet6-tiny-s5910"):
        m = lowps.PerceptualDistance(weights=w)
        net = m.backbone.model
        c = cached(f"resnet6:{w}")
        with torch.inference_mode():
            def stem(x: torch.Tensor, pool: bool, net: torch.nn.Module = net,
                     m: lowps.PerceptualDistance = m) -> torch.Tensor:
                f = F.relu(net.bn1(net.conv1(x * m._scale + m._shift)))
                return unit_normalize(F.max_pool2d(F.pad(f, (0, 1, 0, 1), value=float("-inf")), 3, 2) if pool else f)
            for pool in (False, True):
                r = stem(ref, pool)
                a = (r - stem(p0, pool)).pow(2).sum(1).mean((1, 2)).double().numpy()
                b = (r - stem(p1, pool)).pow(2).sum(1).mean((1, 2)).double().numpy()
                add(f"{w} local + stem {'after' if pool else 'before'} pool", a + c["local:d0"].sum(1),
                    b + c["local:d1"].sum(1))
    # the trunk on upsampled inputs (bicubic) and on downsampled ones (bilinear with antialiasing)
    for scale in (1.5, 2.0, 3.0, 0.75, 0.5):
        def up(x: torch.Tensor, scale: float = scale) -> torch.Tensor:
            if scale < 1:
                return F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True,
                                     align_corners=False).clamp(0, 1)
            return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
        for arch, w in (("resnet6", "resnet6-tiny-s1250"), ("resnet18_tpu", "resnet18-tiny-s3940")):
            m = lowps.PerceptualDistance(arch, distance="local", weights=w)
            with torch.inference_mode():
                add(f"{w} local on inputs {'upsampled' if scale > 1 else 'downsampled'} x{scale}",
                    m(up(ref), up(p0)).double().numpy(), m(up(ref), up(p1)).double().numpy())
    # heads and checkpoints combined (sums of distances)
    other = cached("resnet6:resnet6-tiny-s5910")
    add("s1250 local + s1250 meanpool", (base["local:d0"] + base["meanpool:d0"]).sum(1),
        (base["local:d1"] + base["meanpool:d1"]).sum(1))
    add("s1250 local + s5910 local", (base["local:d0"] + other["local:d0"]).sum(1),
        (base["local:d1"] + other["local:d1"]).sum(1))
    if trunks is not None:
        for net, file in (("alex", "alexnet_features.pth"), ("squeeze", "squeezenet1_1_features.pth")):
            for lin in (True, False):
                lp = lowps.LPIPS(net=net, lpips=lin, verbose=False, pnet_path=trunks / file)
                with torch.no_grad():
                    a = lp(ref, p0, normalize=True, retPerLayer=True)
                    b = lp(ref, p1, normalize=True, retPerLayer=True)
                add(f"LPIPS-{net} {'v0.1 linear layers' if lin else 'without linear layers'}",
                    a[0].flatten().double().numpy(), b[0].flatten().double().numpy())
                if not lin:
                    for k, (x, y) in enumerate(zip(a[1], b[1])):
                        add(f"LPIPS-{net} without linear layers, layer {k} alone", x.flatten().double().numpy(),
                            y.flatten().double().numpy())
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--out", required=True, help="folder for the cached distances and results.json")
    ap.add_argument("--candidates", nargs="+", default=DEFAULT_CANDIDATES, metavar="ARCH:WEIGHTS")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--lpips-trunks", type=Path, default=None, metavar="DIR",
                    help="a folder with alexnet_features.pth and squeezenet1_1_features.pth: also score LPIPS's "
                    "ImageNet trunks with and without their linear layers")
    ap.add_argument("--no-probes", action="store_true", help="skip the alternatives that did not help")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    triplets = read_2afc_csv(a.csv)
    images = {p: load_64(p, a.size) for p in sorted({q for t in triplets for q in (t.ref, t.p0, t.p1)})}
    part = split_refs([str(t.ref) for t in triplets])
    which = np.array([part[str(t.ref)] for t in triplets])
    groups = np.array([str(t.ref) for t in triplets])
    h = np.array([t.h for t in triplets])
    fit, held = which == "fit", which == "heldout"
    print(f"{len(triplets)} triplets, {len(set(groups))} references: fit {fit.sum()} triplets, held-out {held.sum()}")
    rows, summary = [], []
    for spec in a.candidates:
        res = candidate_distances(spec, triplets, images, out, a.size)
        for head in HEADS:
            d0, d1, names = res[f"{head}:d0"], res[f"{head}:d1"], list(res[f"{head}:layers"])
            for k in range(1, len(names) + 1):
                for sub in itertools.combinations(range(len(names)), k):
                    s0, s1 = d0[:, sub].sum(1), d1[:, sub].sum(1)
                    rows.append({"candidate": spec, "head": head, "layers": [names[i] for i in sub],
                                 "layer_weights": "uniform",
                                 "fit": score_2afc(s0[fit], s1[fit], h[fit]),
                                 "heldout": score_2afc(s0[held], s1[held], h[held]),
                                 "all": score_2afc(s0, s1, h)})
            w = fit_layer_weights(torch.from_numpy(d0[fit]), torch.from_numpy(d1[fit]), torch.from_numpy(h[fit]))
            w = w.double().numpy()
            s0, s1 = d0.sum(1), d1.sum(1)
            summary.append({"candidate": spec, "head": head, "fit": score_2afc(s0[fit], s1[fit], h[fit]),
                            "heldout": score_2afc(s0[held], s1[held], h[held]),
                            "heldout_ci": bootstrap_ci(s0[held], s1[held], h[held], groups[held])})
            s0, s1 = d0 @ w, d1 @ w
            rows.append({"candidate": spec, "head": head, "layers": names, "layer_weights": w.tolist(),
                         "fit": score_2afc(s0[fit], s1[fit], h[fit]),
                         "heldout": score_2afc(s0[held], s1[held], h[held]), "all": score_2afc(s0, s1, h),
                         "heldout_ci": bootstrap_ci(s0[held], s1[held], h[held], groups[held])})
    rows.sort(key=lambda r: -r["fit"])
    extra = [] if a.no_probes else probes(triplets, images, out, a.size,
                                          {"fit": fit, "heldout": held, "all": fit | held}, h, a.lpips_trunks)
    (out / "results.json").write_text(json.dumps({"csv": str(a.csv), "size": a.size, "split": part,
                                                  "summary": summary, "rows": rows, "probes": extra}, indent=1))
    print("Every candidate, all layers, uniform weights (the paper's distance):")
    print(f"{'candidate':36s} {'head':9s}   fit  held  held 95% CI")
    for r in sorted(summary, key=lambda r: -r["fit"]):
        lo, hi = r["heldout_ci"]
        print(f"{r['candidate']:36s} {r['head']:9s} {100 * r['fit']:5.2f} {100 * r['heldout']:5.2f}  "
              f"[{100 * lo:5.2f}, {100 * hi:5.2f}]")
    print("\nBest 25 layer subsets and fitted per-layer weights, ranked on the fit split:")
    print(f"{'candidate':36s} {'head':9s} {'layers':32s} {'weights':8s}   fit  held   all")
    for r in rows[:25]:
        wts = "uniform" if r["layer_weights"] == "uniform" else "fitted"
        print(f"{r['candidate']:36s} {r['head']:9s} {','.join(r['layers']):32s} {wts:8s} "
              f"{100 * r['fit']:5.2f} {100 * r['heldout']:5.2f} {100 * r['all']:5.2f}")
    if extra:
        print("\nProbes (what else was tried):")
        print(f"{'probe':64s}   fit  held   all")
        for r in extra:
            print(f"{r['probe']:64s} {100 * r['fit']:5.2f} {100 * r['heldout']:5.2f} {100 * r['all']:5.2f}")


if __name__ == "__main__":
    main()
