"""All-pairs distances and nearest neighbours as matrix products over per-image embeddings.

Every lowps head is a squared Euclidean distance between per-image vectors
(`PerceptualDistance.embed`), so an N x M matrix costs N + M forward passes plus one matrix
product, ``||a||^2 + ||b||^2 - 2 a.b``, accumulated in float64 (distances of close images are small
differences of large norms, which float32 would lose), in row blocks that bound memory.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .functional import get_metric
from .inputs import ImageLike, InputError, to_tensor
from .metric import PerceptualDistance

__all__ = ["pairwise", "nearest", "embed_all", "pairwise_embeddings"]

#: float64 values per block of the distance matrix (32 MiB).
BLOCK_ELEMENTS = 2 ** 22


def _as_images(imgs: torch.Tensor | Sequence[ImageLike]) -> torch.Tensor | list:
    if isinstance(imgs, torch.Tensor):
        if imgs.ndim not in (3, 4):  # name the caller's shape, not the one a reshape here would make
            raise InputError(f"images must be (N, C, H, W) or (C, H, W), got {imgs.ndim} dims with shape "
                             f"{tuple(imgs.shape)}")
        return imgs if imgs.ndim == 4 else imgs.unsqueeze(0)
    return list(imgs)


@dataclass
class _Parts:
    """Per-image all-pairs data: vectors (N, D) and low-rank factors (N, C, n) (`PerceptualDistance.embed_parts`)."""

    dense: torch.Tensor
    factors: list[torch.Tensor] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)  # the images' (H, W)

    def __len__(self) -> int:
        return self.dense.shape[0]

    def rows(self, s: int, e: int) -> _Parts:
        return _Parts(self.dense[s:e], [f[s:e] for f in self.factors])

    def layout(self) -> tuple:
        """Vector length and factor shapes per image: equal for images of one size."""
        return (self.dense.shape[1], *(tuple(f.shape[1:]) for f in self.factors))


@torch.no_grad()
def embed_all(metric: PerceptualDistance, imgs: torch.Tensor | Sequence[ImageLike], batch_size: int = 64,
              progress: bool = False, desc: str = "features") -> torch.Tensor:
    """Embed a tensor batch or a list of images (paths, PIL, arrays) in chunks: (N, D)."""
    chunks = _per_chunk(metric, imgs, batch_size, progress, desc, metric.embed)
    _one_layout(c.shape[1] for c in chunks)
    return torch.cat(chunks)


def _embed_parts_all(metric: PerceptualDistance, imgs: torch.Tensor | Sequence[ImageLike], batch_size: int,
                     progress: bool, desc: str) -> _Parts:
    size: list[tuple[int, int]] = []

    def parts(x: torch.Tensor) -> _Parts:
        size[:] = [(int(x.shape[-2]), int(x.shape[-1]))]
        return _Parts(*metric.embed_parts(x))
    chunks = _per_chunk(metric, imgs, batch_size, progress, desc, parts)
    _one_layout(c.layout() for c in chunks)
    out = _Parts(torch.cat([c.dense for c in chunks]),
                 [torch.cat([c.factors[k] for c in chunks]) for k in range(len(chunks[0].factors))])
    out.size = size[0]
    return out


def _one_layout(layouts: Iterable[object]) -> None:
    if len(set(layouts)) > 1:
        raise InputError("images differ in size between batches; pairwise distances need one size: resize them first")


def _per_chunk(metric: PerceptualDistance, imgs: torch.Tensor | Sequence[ImageLike], batch_size: int, progress: bool,
               desc: str, fn: Callable[[torch.Tensor], Any]) -> list[Any]:
    """``fn`` applied to chunks of ``batch_size`` images (files and arrays decoded and stacked per chunk)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    imgs = _as_images(imgs)
    n = len(imgs)
    if n == 0:
        raise InputError("no images given")
    parts: list[Any] = []
    sizes: set[tuple[int, int]] = set()
    for i in tqdm(range(0, n, batch_size), disable=not progress, desc=desc, leave=False):
        chunk = imgs[i:i + batch_size]
        if not isinstance(chunk, torch.Tensor):
            tensors = [to_tensor(x, metric.input_range) for x in chunk]
            shapes = {tuple(t.shape[-3:]) for t in tensors}
            if len(shapes) > 1:
                names = [os.fspath(x) for x in chunk if isinstance(x, (str, os.PathLike))][:3]
                raise InputError(f"images differ in size {sorted(shapes)[:3]} (e.g. {names}); pairwise distances "
                                 "need one size: resize them first")
            chunk = torch.stack([t if t.ndim == 3 else t[0] for t in tensors]).to(metric.device)
        # one rule whatever the batching: every image of a set has one size (as the module requires
        # of a pair), even for heads whose vectors would not notice
        sizes.add((int(chunk.shape[-2]), int(chunk.shape[-1])))
        if len(sizes) > 1:
            raise InputError(f"images differ in size ({', '.join(f'{h}x{w}' for h, w in sorted(sizes))}); pairwise "
                             "distances need one image size: resize them first")
        parts.append(fn(chunk))
    return parts


def _same_size(a: Any, b: Any) -> None:
    """Both sets of `pairwise`/`nearest` have one image size (the module refuses a pair of two sizes)."""
    if a.size != b.size:
        raise InputError(f"the two image sets differ in size ({a.size[0]}x{a.size[1]} and {b.size[0]}x{b.size[1]}); "
                         "distances need one image size: resize them first")


#: ``matmul`` choices of `pairwise_embeddings`.
MATMULS = ("auto", "numpy", "torch")


def _blas_threads() -> Any:
    """Limit NumPy's BLAS to PyTorch's thread count for the block (a process that set
    ``torch.set_num_threads(1)``, e.g. a data-loader worker, must not get one BLAS thread per core)."""
    # Importing threadpoolctl sets KMP_DUPLICATE_LIB_OK=True in os.environ (its policy for programs that
    # load two OpenMP runtimes); a library call must leave the caller's environment as it found it.
    key, before = "KMP_DUPLICATE_LIB_OK", os.environ.get("KMP_DUPLICATE_LIB_OK")
    try:
        from threadpoolctl import threadpool_limits
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
    return threadpool_limits(limits=torch.get_num_threads(), user_api="blas")


def _products_numpy(ea: torch.Tensor, eb: torch.Tensor | None, out: Any, na: Any, nb: Any,
                    tiles: list[tuple[int, int]], tile: int, cols: int, chunks: Iterable[int]) -> None:
    """`pairwise_embeddings`'s loop in NumPy: adds -2 a.b to the ``tiles`` of ``out`` and the squared
    norms to ``na``/``nb`` (float64 arrays sharing memory with the caller's tensors). Every step stays
    in NumPy: a PyTorch op between two BLAS calls leaves PyTorch's OpenMP threads spinning on the cores
    BLAS needs (measured 2.2x slower on 2 cores)."""
    def as_numpy(t: torch.Tensor) -> Any:  # NumPy has no bfloat16: such inputs go through float32 once
        t = t.detach()
        return (t.float() if t.dtype not in (torch.float16, torch.float32, torch.float64) else t).numpy()
    a = as_numpy(ea)
    b = None if eb is None else as_numpy(eb)
    # One float64 buffer per side, reused: a fresh multi-megabyte array per chunk is page-faulted in
    # again every time.
    abuf = np.empty((a.shape[0], cols))
    bbuf = None if b is None else np.empty((b.shape[0], cols))
    pbuf = np.empty(tile * tile)
    with _blas_threads():
        for k in chunks:
            w = min(cols, a.shape[1] - k)
            ak = abuf[:, :w]
            np.copyto(ak, a[:, k:k + w])
            bk = ak
            if b is not None and bbuf is not None:
                bk = bbuf[:, :w]
                np.copyto(bk, b[:, k:k + w])
                na += np.einsum("ij,ij->i", ak, ak)
                nb += np.einsum("ij,ij->i", bk, bk)
            for i, j in tiles:
                # `x @ x.T` on one buffer is NumPy's SYRK case (recognised by data pointer and strides);
                # its diagonal is the squared norms of that chunk.
                diag = b is None and i == j
                ai, bj = ak[i:i + tile], (ak[i:i + tile] if diag else bk[j:j + tile])
                prod = np.matmul(ai, bj.T, out=pbuf[:len(ai) * len(bj)].reshape(len(ai), len(bj)))
                if diag:
                    na[i:i + tile] += np.diagonal(prod)
                prod *= -2
                out[i:i + tile, j:j + tile] += prod


def _numpy_multiplies(matmul: str, ea: torch.Tensor, eb: torch.Tensor) -> bool:
    """`pairwise_embeddings`'s ``matmul`` choice: NumPy for CPU tensors outside autograd ("auto")."""
    if matmul not in MATMULS:
        raise InputError(f"matmul={matmul!r} is not one of {MATMULS}")
    tracked = torch.is_grad_enabled() and (ea.requires_grad or eb.requires_grad)
    use_numpy = matmul == "numpy" or (matmul == "auto" and ea.device.type == "cpu" and not tracked)
    if use_numpy and (ea.device.type != "cpu" or tracked):
        raise InputError("matmul='numpy' needs CPU tensors without autograd (got "
                         f"{ea.device}{', tracked' if tracked else ''}); use matmul='torch' or 'auto'")
    return use_numpy


def _products_torch(ea: torch.Tensor, eb: torch.Tensor | None, out: torch.Tensor, na: torch.Tensor,
                    nb: torch.Tensor, tiles: list[tuple[int, int]], tile: int, cols: int,
                    chunks: Iterable[int]) -> None:
    """`_products_numpy`'s loop in PyTorch (``addmm``: any device, differentiable)."""
    for k in chunks:
        ak = ea[:, k:k + cols].double()
        bk = ak if eb is None else eb[:, k:k + cols].double()
        na += ak.square().sum(1)
        if eb is not None:
            nb += bk.square().sum(1)
        for i, j in tiles:
            out[i:i + tile, j:j + tile].addmm_(ak[i:i + tile], bk[j:j + tile].T, alpha=-2)


def pairwise_embeddings(ea: torch.Tensor, eb: torch.Tensor | None = None, block: int = BLOCK_ELEMENTS,
                        progress: bool = False, matmul: str = "auto") -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``ea`` (N, D) and ``eb`` (M, D): (N, M).

    ``||a||^2 + ||b||^2 - 2 a.b`` in float64: the vectors are converted in column chunks of at most
    ``block`` float64 values or (NumPy) a quarter of the result's size, whichever is larger (never the
    whole embedding matrix), and each chunk adds its products to square
    tiles of the result; a matrix against itself computes only the tiles on and above the diagonal and
    mirrors them. Negative rounding is clamped to 0, and the diagonal is exactly 0 when ``eb=None``.

    ``matmul`` picks who multiplies: ``"numpy"`` (NumPy's BLAS, limited to PyTorch's thread count)
    computes a diagonal tile ``A A^T`` as a symmetric rank-k update (SYRK, half the multiply-adds),
    which PyTorch does not expose; ``"torch"`` uses ``addmm`` (and is differentiable). ``"auto"``:
    NumPy for CPU tensors outside autograd, PyTorch otherwise. Both accumulate in float64; the results
    agree to float64 rounding.
    """
    same = eb is None
    eb = ea if eb is None else eb
    if ea.shape[1] != eb.shape[1]:
        raise InputError(f"embeddings of length {ea.shape[1]} and {eb.shape[1]} do not match (another head, "
                         "layer set or image size)")
    use_numpy = _numpy_multiplies(matmul, ea, eb)
    (n, d), m = ea.shape, eb.shape[0]
    out = torch.zeros(n, m, dtype=torch.float64, device=ea.device)
    na = torch.zeros(n, dtype=torch.float64, device=ea.device)
    nb = na if same else torch.zeros(m, dtype=torch.float64, device=ea.device)
    # Tiles: large enough for the matrix product to run near the machine's float64 peak (small row
    # blocks ran at half of it), small enough that a self-comparison skips most of the lower triangle.
    tile = max(256, min(1024, -(-max(n, m) // 2)))
    tiles = [(i, j) for i in range(0, n, tile) for j in range(i if same else 0, m, tile)]
    # NumPy adds each chunk's tile products to the result itself (BLAS's C += A B is not exposed), so
    # its chunks are wider: up to a quarter of the result's size, or every chunk re-reads the result
    # (N = 10,000: 419 columns per chunk spent more time there than in the products).
    budget = max(block, n * m // 4) if use_numpy else block
    cols = max(256, budget // (n + (0 if same else m)))
    chunks = tqdm(range(0, d, cols), disable=not progress, desc="pairs", leave=False)
    if use_numpy:
        _products_numpy(ea, None if same else eb, out.numpy(), na.numpy(), nb.numpy(), tiles, tile, cols, chunks)
    else:
        _products_torch(ea, None if same else eb, out, na, nb, tiles, tile, cols, chunks)
    if same:
        for i, j in tiles:
            if j > i:
                out[j:j + tile, i:i + tile] = out[i:i + tile, j:j + tile].T
    out.add_(na[:, None]).add_(nb[None, :]).clamp_(min=0)
    if same:
        out.fill_diagonal_(0)
    return out


def _factor_distances(fa: torch.Tensor, fb: torch.Tensor | None, block: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """``||Va^T Va||^2 + ||Vb^T Vb||^2 - 2 ||Va^T Vb||^2`` for all pairs of factors (N, C, n), (M, C, m), in
    float64: the cross terms of a row block are one (r n) x (M m) x C matrix product."""
    a = fa.double()
    b = a if fb is None else fb.double()

    def self_term(v: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_norm(v.transpose(1, 2) @ v).square()

    sa = self_term(a)
    sb = sa if fb is None else self_term(b)
    n, c, k = a.shape
    m, _, j = b.shape
    bt = b.transpose(1, 2).reshape(m * j, c)
    out = torch.empty(n, m, dtype=torch.float64, device=a.device)
    rows = max(1, block // max(1, m * j * k))
    for s in range(0, n, rows):
        e = min(s + rows, n)
        cross = (a[s:e].transpose(1, 2).reshape(-1, c) @ bt.T).view(e - s, k, m, j).square().sum((1, 3))
        out[s:e] = sa[s:e, None] + sb[None] - 2 * cross
    return out


def _distances(pa: _Parts, pb: _Parts | None, progress: bool = False) -> torch.Tensor:
    """The N x M matrix from vectors (`pairwise_embeddings`) plus each factor's term; float64."""
    if pb is not None and pa.layout() != pb.layout():
        raise InputError(f"the two sets' embeddings do not match (vector length and factor shapes {pa.layout()} vs "
                         f"{pb.layout()}): pairwise distances need one image size; resize them first")
    out = pairwise_embeddings(pa.dense, None if pb is None else pb.dense, progress=progress)
    for k, fa in enumerate(pa.factors):
        out += _factor_distances(fa, None if pb is None else pb.factors[k])
    if pa.factors:
        out.clamp_(min=0)
        if pb is None:
            out.fill_diagonal_(0)
    return out


@torch.no_grad()
def pairwise(a: torch.Tensor | Sequence[ImageLike], b: torch.Tensor | Sequence[ImageLike] | None = None,
             metric: PerceptualDistance | None = None, batch_size: int = 64, chunk: int | None = None,
             progress: bool = False, **options: object) -> torch.Tensor:
    """The N x M distance matrix between images ``a`` and ``b`` (``b=None``: ``a`` against itself).

    Every image goes through the backbone once (`PerceptualDistance.embed`); the matrix is
    then ``||a||^2 + ||b||^2 - 2 a.b`` in float64 (`pairwise_embeddings`), equal to the
    per-pair module within float rounding (tested to 1e-5 relative for every head). ``metric`` (or
    the options of `lowps.distance`) selects the metric. No gradients flow (use the module for
    losses). ``chunk`` is accepted for compatibility and ignored (memory is bounded per row block).
    """
    m = metric if metric is not None else get_metric(**options)  # type: ignore[arg-type]
    pa = _embed_parts_all(m, a, batch_size, progress, "features a")
    pb = None if b is None else _embed_parts_all(m, b, batch_size, progress, "features b")
    if pb is not None:
        _same_size(pa, pb)
    out = _distances(pa, pb, progress=progress)
    dtype = torch.float64 if m.dtype == torch.float64 else torch.float32
    return out.to(dtype).cpu()


@torch.no_grad()
def nearest(query: torch.Tensor | Sequence[ImageLike], gallery: torch.Tensor | Sequence[ImageLike], k: int = 1,
            metric: PerceptualDistance | None = None, batch_size: int = 64, exclude_self: bool = False,
            progress: bool = False, **options: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest gallery images of each query image: ``(distances, indices)``, each (Q, k).

    For retrieval and near-duplicate search: sorted by ascending distance; ties in gallery order.
    ``exclude_self=True`` (query and gallery the same images) skips each image's own entry.
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise InputError(f"k must be a positive int (how many neighbours), got {k!r}")
    if exclude_self and gallery is not query:
        # masking "self" by position is only right when both sets are the very same images
        raise InputError("exclude_self=True needs the gallery to be the query object itself (nearest(x, x, "
                         "exclude_self=True)); for two different sets, drop exclude_self and filter the results")
    m = metric if metric is not None else get_metric(**options)  # type: ignore[arg-type]
    eq = _embed_parts_all(m, query, batch_size, progress, "features query")
    eg = eq if gallery is query else _embed_parts_all(m, gallery, batch_size, progress, "features gallery")
    _same_size(eq, eg)
    kk = k + (1 if exclude_self else 0)
    if not 1 <= k or kk > len(eg):
        most = len(eg) - (1 if exclude_self else 0)
        raise InputError(f"k must be between 1 and {most} (the gallery size), got {k}")
    rows = max(1, BLOCK_ELEMENTS // len(eg))
    dists, idx = [], []
    for s in range(0, len(eq), rows):
        blk = _distances(eq.rows(s, s + rows), eg)
        if exclude_self:
            r = torch.arange(blk.shape[0], device=blk.device)
            blk[r, r + s] = float("inf")
        d, i = torch.sort(blk, dim=1, stable=True)  # stable: ties keep gallery order
        dists.append(d[:, :k])
        idx.append(i[:, :k])
    dtype = torch.float64 if m.dtype == torch.float64 else torch.float32
    return torch.cat(dists).to(dtype).cpu(), torch.cat(idx).cpu()
