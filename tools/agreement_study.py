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

HEADS = ("meanpool", "local", "style")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--out", required=True, help="folder for the cached distances and results.json")
    ap.add_argument("--candidates", nargs="+", default=DEFAULT_CANDIDATES, metavar="ARCH:WEIGHTS")
    ap.add_argument("--size", type=int, default=64)
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
    rows = []
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
            s0, s1 = d0 @ w, d1 @ w
            rows.append({"candidate": spec, "head": head, "layers": names, "layer_weights": w.tolist(),
                         "fit": score_2afc(s0[fit], s1[fit], h[fit]),
                         "heldout": score_2afc(s0[held], s1[held], h[held]), "all": score_2afc(s0, s1, h),
                         "heldout_ci": bootstrap_ci(s0[held], s1[held], h[held], groups[held])})
    rows.sort(key=lambda r: -r["fit"])
    (out / "results.json").write_text(json.dumps({"csv": str(a.csv), "size": a.size, "split": part, "rows": rows},
                                                 indent=1))
    print(f"{'candidate':36s} {'head':8s} {'layers':32s} {'weights':8s}   fit  held   all")
    for r in rows[:40]:
        wts = "uniform" if r["layer_weights"] == "uniform" else "fitted"
        print(f"{r['candidate']:36s} {r['head']:8s} {','.join(r['layers']):32s} {wts:8s} "
              f"{100 * r['fit']:5.2f} {100 * r['heldout']:5.2f} {100 * r['all']:5.2f}")


if __name__ == "__main__":
    main()
