"""All-pairs cost: ``lowps.pairwise`` on N images against embedding them alone.

    python benchmarks/bench_pairwise.py [--n 600 10000] [--heads meanpool local style linear] [--size 64]
        [--repeat 3] [--device cpu|cuda] [--json FILE]

For each N and head: seconds for the N backbone forward passes alone ("trunk"), seconds to embed
the N random 64x64 images (`PerceptualDistance.embed`: forward passes + the head's vectors),
seconds for ``lowps.pairwise`` (its own embedding + the N x N matrix as float64 matrix products),
and the ratio pairwise / embed (medians of ``--repeat`` interleaved rounds); the distance part is
negligible when the ratio is near 1. The header gives this machine's float64 matrix-product rate. (For
``style`` pairwise uses low-rank factors where they are cheaper than the Gram vectors that `embed`
builds, so it can take less than the embedding.) Heads whose embedding would not fit in memory
at that N (style: 174,560 floats per image) are skipped beyond ``--max-embed-gib``.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_distance import cpu_name  # noqa: E402

import lowps  # noqa: E402
from lowps.allpairs import embed_all  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", nargs="+", type=int, default=[600, 10000])
    p.add_argument("--heads", nargs="+", default=["meanpool", "local", "style", "linear"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-embed-gib", type=float, default=4.0)
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds of embed and pairwise (medians)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:k]: the metric, images and products run there")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    dev = torch.device(a.device)
    where = cpu_name() if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    print(f"# {where}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {dev}, {datetime.date.today()}")
    gemm = float64_gemm_rate(dev)
    print("# float64 matrix product a @ b.T (600 x 30720 x 600): "
          + ", ".join(f"{k} {v:.1f} GMAC/s" for k, v in gemm.items())
          + ("; pairwise multiplies with NumPy on CPU (SYRK on the diagonal tiles)" if dev.type == "cpu" else ""))
    print(f"{'head':<10}{'N':>7}{'dim':>9}{'trunk s':>9}{'embed s':>10}{'pairwise s':>12}{'ratio':>8}")
    rows = []
    for n in a.n:
        x = torch.rand(n, 3, a.size, a.size, generator=torch.Generator().manual_seed(0)).to(dev)
        for head in a.heads:
            m = lowps.PerceptualDistance(distance=head, **({"head_weights": "ones"} if head == "linear" else {})).to(dev)
            dim = m.embedding_dim((a.size, a.size))
            if n * dim * 4 / 2**30 > a.max_embed_gib:
                print(f"{head:<10}{n:>7}{dim:>9}  skipped: embeddings would take {n * dim * 4 / 2**30:.1f} GiB")
                continue
            embed_all(m, x[:a.batch_size], a.batch_size)  # warm-up
            _sync(dev)
            t = time.perf_counter()
            with torch.no_grad():
                for s in range(0, n, a.batch_size):
                    m.features(x[s:s + a.batch_size])
            _sync(dev)
            t_trunk = time.perf_counter() - t
            embeds, pairs = [], []
            for _ in range(max(1, a.repeat)):  # interleaved, so drifts of a shared machine hit both
                t = time.perf_counter()
                embed_all(m, x, a.batch_size)
                _sync(dev)
                embeds.append(time.perf_counter() - t)
                t = time.perf_counter()
                mat = lowps.pairwise(x, metric=m, batch_size=a.batch_size)
                pairs.append(time.perf_counter() - t)
                assert mat.shape == (n, n)
                del mat
            t_embed, t_pair = statistics.median(embeds), statistics.median(pairs)
            rows.append({"head": head, "n": n, "dim": dim, "trunk_s": t_trunk, "embed_s": t_embed, "pairwise_s": t_pair,
                         "ratio": t_pair / t_embed})
            print(f"{head:<10}{n:>7}{dim:>9}{t_trunk:>9.2f}{t_embed:>10.2f}{t_pair:>12.2f}{t_pair / t_embed:>8.2f}",
                  flush=True)
    if a.json:
        from lowps._io import write_json
        write_json(a.json, {"meta": {"cpu": cpu_name(), "device": str(dev), "device_name": where,
                                     "threads": torch.get_num_threads(), "torch": torch.__version__,
                                     "date": str(datetime.date.today()), "size": a.size, "repeat": a.repeat,
                                     "float64_gemm_gmacs": gemm}, "rows": rows})


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def float64_gemm_rate(dev: torch.device = torch.device("cpu"), n: int = 600, d: int = 30720) -> dict[str, float]:
    """Multiply-adds per second (G) of one float64 n x d x n product ``a @ b.T`` (two distinct
    matrices, so no library halves the work), by PyTorch and, on CPU, by NumPy's BLAS, which
    `pairwise_embeddings` uses there: what the distance part runs at."""
    g = torch.Generator().manual_seed(1)
    a, b = (torch.rand(n, d, dtype=torch.float64, generator=g).to(dev) for _ in range(2))
    prods: dict[str, Callable[[], object]] = {"torch": lambda: a @ b.T}
    if dev.type == "cpu":
        an, bn = a.numpy(), b.numpy()
        prods["numpy"] = lambda: an @ bn.T
    rates = {}
    for name, f in prods.items():
        f()  # warm-up
        times = []
        for _ in range(3):
            _sync(dev)
            t = time.perf_counter()
            f()
            _sync(dev)
            times.append(time.perf_counter() - t)
        rates[name] = n * n * d / min(times) / 1e9
    return rates


if __name__ == "__main__":
    main()
