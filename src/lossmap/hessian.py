"""Curvature of the loss from Hessian-vector products (HVPs).

Everything here works on the *exact* data-set mean loss (batch means weighted by batch
size) and counts the HVPs it spends. The algorithms themselves work on any symmetric
mat-vec and live in :mod:`lossmap.linalg`; the functions here build the Hessian
operator from a :class:`~lossmap.landscape.Landscape` (or take any operator), call
them, and return eigenvectors as parameter dicts.

- :class:`HessianOperator`: a :class:`scipy.sparse.linalg.LinearOperator` over the
  flattened trainable parameters (float64 in, float64 out), with a torch method too.
- :func:`eigenvalues`: block Lanczos from a random block (the top of a cluster of close
  eigenvalues is not missed), stopped when the wanted Ritz pairs' residuals are within
  ``tol`` (:func:`lossmap.linalg.block_lanczos`); single-vector Lanczos on request.
- :func:`power_iteration`: the textbook method with deflation (as in PyHessian, Yao et
  al. 2020), for comparison and teaching (:func:`lossmap.linalg.power_iteration`).
- :func:`trace`: Hutchinson (1989), Hutch++ (Meyer et al. 2021) and XTrace (Epperly et
  al. 2024), each with a standard error (:mod:`lossmap.linalg.trace`).
- :func:`spectral_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019; Lin,
  Saad & Yang 2016), Gaussian-broadened, with the Ritz nodes and weights
  (:func:`lossmap.linalg.lanczos_quadrature` per probe).
- :func:`dense`: the explicit Hessian for small models.

:func:`lanczos`, :class:`Trace` and :func:`single_blas_thread` are
:mod:`lossmap.linalg`'s, re-exported here.

HVPs use double backward through a gradient graph that is built once per point and
reused for every product (as PyHessian does): measured faster here than
forward-over-reverse (``torch.func.jvp`` of ``grad``), see ``benchmarks/curvature.py``.
Data sets that are streamed rather than held, or held but too large for the graph to
fit in memory (:func:`graph_fits`), rebuild the graph batch by batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor

from lossmap import vectors as V
from lossmap.curvature import CurvatureOperator, layer_groups, select_parameters
from lossmap.data import batch_size, total_memory
from lossmap.evaluate.memory import output_sizes
from lossmap.hvp import HessianVectorProduct
from lossmap.landscape import Landscape
from lossmap.linalg import (
    Trace,
    as_matmat,
    as_matvec,
    block_lanczos,
    block_size,
    hutchinson,
    hutchpp,
    lanczos,
    lanczos_quadrature,
    single_blas_thread,
    xtrace,
)
from lossmap.linalg import power_iteration as _power_iteration
from lossmap.results import Spectrum, broaden

if TYPE_CHECKING:
    from lossmap.store import Journal

__all__ = [
    "DENSE_LIMIT",
    "CurvatureOperator",
    "Eigen",
    "HessianOperator",
    "Spectrum",
    "Trace",
    "dense",
    "eigenvalues",
    "graph_fits",
    "lanczos",
    "layer_groups",
    "power_iteration",
    "select_parameters",
    "spectral_density",
    "trace",
]

DENSE_LIMIT = 10_000


# --------------------------------------------------------------------- operator
class HessianOperator(CurvatureOperator):
    """The Hessian of the data-set mean loss at ``point`` (θ0 by default).

    ``op @ v`` takes and returns float64 numpy vectors of length ``op.shape[0]``
    (parameters flattened in ``named_parameters()`` order); :meth:`hvp` takes and
    returns torch tensors. ``op.matvecs`` counts Hessian-vector products.

    ``params`` (glob patterns over parameter names, e.g. ``["layer3.*"]``, as the
    ignore rules of :mod:`lossmap.directions`) makes it the diagonal block ``H_SS`` of
    those parameters: vectors, ``op.point`` and eigenvectors returned as parameter
    dicts cover the block alone; each block product costs one full product (see
    :class:`~lossmap.curvature.CurvatureOperator`).

    >>> from lossmap.examples import linear_regression
    >>> op = HessianOperator(linear_regression())
    >>> H = op @ np.eye(2)          # 2 AᵀA / n for A = [x, 1]
    >>> bool(np.allclose(H, H.T)), op.matvecs
    (True, 2)
    >>> HessianOperator(linear_regression(), params=["bias"]).shape
    (1, 1)
    """

    def __init__(
        self,
        land: Landscape,
        point: Mapping[str, Tensor] | None = None,
        *,
        dataset: str | None = None,
        reuse_graph: bool | None = None,
        params: str | Iterable[str] | None = None,
    ) -> None:
        self.land = land
        if reuse_graph is None:
            reuse_graph = graph_fits(land, dataset)
        self.reuse_graph = reuse_graph
        """Whether the gradient graph over the whole data set is kept for every product
        (else it is rebuilt batch by batch for each product: one more forward and
        backward pass per product, memory of one batch)."""
        self._hvp = HessianVectorProduct(land, point, dataset=dataset, reuse_graph=reuse_graph)
        self._setup(self._hvp.point, self._hvp.dataset, params)

    def _apply(self, vs: list[Tensor], *, batched: bool) -> list[Tensor]:
        return self._hvp.many(vs) if batched else self._hvp(vs)

    def _adjoint(self) -> HessianOperator:
        return self


GRAPH_COPIES = 4
"""A gradient graph kept for double backward holds about this many times the forward
pass's activations (the forward's saved tensors, the backward's, and the gradient built
with ``create_graph``): a deliberately generous factor."""
GRAPH_MEMORY_FRACTION = 0.25
"""Share of the device's total memory a kept gradient graph may take."""


def graph_fits(land: Landscape, dataset: str | None = None) -> bool:
    """Whether the gradient graph over a held data set (this rank's share of it under
    torchrun) fits in :data:`GRAPH_MEMORY_FRACTION` of the device's total memory, at
    :data:`GRAPH_COPIES` times the activations of a forward pass: then every product
    reuses it (PyHessian's way, the fastest); otherwise each product rebuilds it batch
    by batch (the memory of one batch: ResNet-20 on 8,000 images would need ~40 GB
    otherwise). From total memory and sizes only, so the same on every run.
    """
    ds = land.dataset(dataset)
    if not ds.in_memory:
        return False
    sizes = output_sizes(land)
    if sizes is None:
        return True  # the activations are unknown: keep the graph, as before
    samples = sum(batch_size(b) for b in land.local(dataset))
    need = sizes.activation_bytes * samples * GRAPH_COPIES
    return need <= GRAPH_MEMORY_FRACTION * total_memory(land.device)


def _operator(
    land: Landscape | LinearOperator | np.ndarray, point: Mapping[str, Tensor] | None
) -> LinearOperator | np.ndarray:
    """The Hessian of a Landscape at ``point`` (θ0 by default), or the operator given
    (a :class:`HessianOperator`, a GGN or Fisher operator of :mod:`lossmap.ggn`, any
    LinearOperator or a square array), used unchanged."""
    if isinstance(land, Landscape):
        return HessianOperator(land, point)
    if isinstance(land, (LinearOperator, np.ndarray)):
        return land
    raise TypeError(
        f"expected a Landscape, a HessianOperator / LinearOperator or a square array, got {type(land).__name__}"
    )


# ------------------------------------------------------------------------ dense
def dense(
    land: Landscape | CurvatureOperator,
    point: Mapping[str, Tensor] | None = None,
    *,
    limit: int = DENSE_LIMIT,
    columns: int = 32,
    progress: Callable[[int, int], None] | None = None,
    params: str | Iterable[str] | None = None,
) -> Tensor:
    """The explicit Hessian ``[n, n]`` (float64) of the data-set mean loss.

    Built from HVPs with the unit vectors, ``columns`` at a time in one batched
    backward pass (:meth:`HessianOperator.hvp_columns`; ``benchmarks/dense.py`` times
    block sizes against one product per column). ``progress(done, n)`` is called after
    each block of columns. ``params`` (globs) gives the diagonal block of those
    parameters; an operator given instead of a landscape (a block, a GGN or Fisher
    operator of :mod:`lossmap.ggn`) is made dense as it is.

    Raises:
        ValueError: more than ``limit`` parameters (the message gives the memory and
            the time it would take, from one timed block of products).
    """
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    if isinstance(land, CurvatureOperator):
        op = land
    else:
        op = HessianOperator(land, point, params=params)
    n = int(op.shape[0])
    device = next(iter(op.point.values())).device
    if n > limit:
        t0 = time.perf_counter()
        op.hvp_columns(torch.eye(n, min(columns, n), dtype=op.dtype_torch, device=device))
        hours = (time.perf_counter() - t0) * math.ceil(n / columns) / 3600
        raise ValueError(
            f"dense() needs an {n:,} x {n:,} matrix ({n * n * 8 / 2**30:.1f} GiB in float64) "
            f"and about {hours:.1f} h of Hessian-vector products here; it is limited to "
            f"{limit:,} parameters (limit=). Use eigenvalues(), trace() or spectral_density()"
        )
    H = torch.empty(n, n, dtype=torch.float64)
    for start in range(0, n, columns):
        stop = min(n, start + columns)
        block = torch.zeros(n, stop - start, dtype=op.dtype_torch, device=device)
        block[start:stop] = torch.eye(stop - start, dtype=op.dtype_torch, device=device)
        H[:, start:stop] = op.hvp_columns(block).double().cpu()
        if progress is not None:
            progress(stop, n)
    return 0.5 * (H + H.T)


# ---------------------------------------------------------------------- results
@dataclass
class Eigen:
    """Eigenvalues (sorted as asked), eigenvectors as parameter dicts, and cost."""

    values: np.ndarray
    vectors: list[V.Vector]
    matvecs: int
    residuals: np.ndarray
    converged: bool
    which: str
    meta: dict[str, Any] = field(default_factory=dict)


def _as_dicts(op: LinearOperator | np.ndarray, vecs: np.ndarray) -> list[V.Vector]:
    """The columns of ``vecs`` ``[n, k]`` as parameter dicts (a curvature operator's
    point: its parameter block), or none for another operator."""
    if not isinstance(op, CurvatureOperator):
        return []
    return [
        V.unflatten(torch.from_numpy(vecs[:, i]).to(op.dtype_torch), op.point)
        for i in range(vecs.shape[1])
    ]


def _start_vector(
    v0: Mapping[str, Tensor] | np.ndarray | list[Any] | None,
    op: LinearOperator | np.ndarray,
    n: int,
) -> np.ndarray | None:
    """``v0`` as a float64 ``[n, m]`` array of start vectors: from a parameter dict, a
    flat ``[n]`` array, an ``[n, m]`` array, or a list of dicts / flat arrays."""
    if v0 is None:
        return None
    if isinstance(v0, (list, tuple)):
        if not v0:
            raise ValueError("v0 is an empty list; pass None for a random start")
        cols = [_start_vector(v, op, n) for v in v0]
        return np.concatenate([c for c in cols if c is not None], axis=1)
    if isinstance(v0, np.ndarray):
        start = np.asarray(v0, dtype=np.float64)
        start = start.reshape(-1, 1) if start.ndim == 1 else start
    else:
        like = op.point if isinstance(op, CurvatureOperator) else None
        if like is None:
            raise TypeError("v0 as a parameter dict needs a Landscape or a HessianOperator")
        v = V.check_vector(v0, like, name="v0")
        start = V.flatten({k: v[k] for k in like}).double().cpu().numpy().reshape(-1, 1)
    if (
        start.ndim != 2
        or start.shape[0] != n
        or not np.all(np.isfinite(start))
        or not np.all(np.any(start, axis=0))
    ):
        raise ValueError(
            f"v0 must be a finite, non-zero vector of {n:,} entries (or an [n, m] array of "
            f"them), got shape {start.shape}"
        )
    return start


# ----------------------------------------------------------------- eigenvalues
_EIGEN_METHODS = ("block", "lanczos")
"""The methods of :func:`eigenvalues`: block Lanczos (the default) and single-vector
Lanczos."""


def _solve(
    op: LinearOperator | np.ndarray, n: int, start: np.ndarray | None, **kw: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, int, dict[str, Any]]:
    """:func:`eigenvalues`' solver: ``(values, vectors, residuals, converged, products,
    meta)``; ``kw`` holds ``k``, ``which``, ``tol``, ``max_iter``, ``seed``, ``block``."""
    calls = 0
    block, mv, mm = kw.pop("block"), as_matvec(op)[0], as_matmat(op)[0]

    def counted(X: np.ndarray) -> np.ndarray:  # a vector [n] or a block [n, p]
        nonlocal calls
        calls += 1 if X.ndim == 1 else X.shape[1]
        return mv(X) if X.ndim == 1 else mm(X)

    if block is None:  # method="lanczos"
        vals, vecs, resid, _, ok = lanczos(
            counted, n, v0=None if start is None else start[:, 0], **kw
        )
        return vals, vecs, resid, ok, calls, {}
    res = block_lanczos(counted, n, block=block, v0=start, **kw)
    meta = {"block": res.block, "error_bounds": res.bounds.tolist()}
    return res.values, res.vectors, res.residuals, res.converged, calls, meta


@single_blas_thread
def eigenvalues(
    land: Landscape | LinearOperator,
    k: int = 1,
    *,
    which: str = "LA",
    tol: float = 1e-6,
    max_iter: int | None = None,
    seed: int = 0,
    point: Mapping[str, Tensor] | None = None,
    v0: Mapping[str, Tensor] | np.ndarray | list[Any] | None = None,
    method: str = "block",
    block: int | None = None,
) -> Eigen:
    """The ``k`` extreme Hessian eigenvalues by block Lanczos (see
    :func:`lossmap.linalg.block_lanczos`).

    ``method="block"`` (the default): a block of ``block`` vectors (default ``k + 2``),
    the warm-start vectors ``v0`` and Gaussian ones drawn from ``seed`` (at least
    one), ``block`` HVPs per step in one batched backward pass; it stops only once the
    ``(k+1)``-th Ritz value has converged too (the random columns have resolved the
    top of the spectrum). ``converged`` means (precisely in
    :func:`lossmap.linalg.block_lanczos`): each value is within ``residuals[i]`` of a
    distinct eigenvalue (certified); with high probability over the random columns
    (Musco & Musco 2015; not certified: no Krylov method can), no eigenvalue was
    missed, and then each value is within ``meta["error_bounds"][i] <= tol * |value|``
    of the eigenvalue of its rank. Measured: 0 misses in 630 warm-started λ_max at the
    edge of stability and in 160 clusters from a start blind to the top eigenvector,
    where single-vector Lanczos certified the second eigenvalue (README).

    ``method="lanczos"``: single-vector Lanczos (:func:`lanczos`), for comparison:
    its ``converged`` certifies eigenvalues by a Kato–Temple bound whose gap is the
    distance to the next Ritz value, not to the next eigenvalue, so it can certify
    the wrong one inside a cluster.

    Args:
        land: a Landscape (its Hessian at ``point`` / θ0) or a LinearOperator.
        k: how many eigenvalues.
        which: ``"LA"`` largest (sharpest), ``"SA"`` smallest (most negative: saddles),
            ``"LM"`` largest magnitude.
        tol: relative accuracy of the eigenvalues.
        max_iter: cap on HVPs.
        seed: the random start vectors.
        point: where (θ0 by default), for a Landscape.
        v0: warm start: a parameter dict or a flat array, an ``[n, m]`` array or a list
            of them (e.g. the previous top eigenvectors when tracking λ_max along
            training: far fewer HVPs). For ``"block"`` at most ``block - 1`` vectors;
            for ``"lanczos"`` one.
        method: ``"block"`` or ``"lanczos"``.
        block: the block size (``>= k``; ``"block"`` only).

    Returns:
        :class:`Eigen` with ``values`` sorted as asked (descending for LA/LM,
        ascending for SA), ``vectors`` as unit-norm parameter dicts, ``matvecs``,
        ``residuals`` ``||Hv - λv||``; ``meta`` holds ``tol``, ``method`` and (block)
        ``block`` and ``error_bounds``.
    """
    op = _operator(land, point)
    n = int(op.shape[0])
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of parameters ({n:,}), got {k!r}")
    if method not in _EIGEN_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(_EIGEN_METHODS)}")
    if block is not None and method != "block":
        raise ValueError("block= is for method='block'; drop it or use method='block'")
    start = _start_vector(v0, op, n)
    if method == "lanczos" and start is not None and start.shape[1] != 1:
        raise ValueError(
            f"method='lanczos' takes one start vector, got {start.shape[1]}; use method='block'"
        )
    before = getattr(op, "matvecs", 0)
    kw = {"k": k, "which": which, "tol": tol, "max_iter": max_iter, "seed": seed}
    p = None if method == "lanczos" else (block_size(k) if block is None else block)
    vals, vecs, resid, ok, calls, meta = _solve(op, n, start, block=p, **kw)
    meta = {"tol": tol, "method": method} | meta
    used = getattr(op, "matvecs", before + calls) - before
    return Eigen(vals, _as_dicts(op, vecs), int(used), resid, ok, which, meta)


@single_blas_thread
def power_iteration(
    land: Landscape | LinearOperator,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    point: Mapping[str, Tensor] | None = None,
) -> Eigen:
    """Top-``k`` eigenvalues (largest magnitude) by power iteration with deflation.

    The textbook method used by PyHessian (Yao et al. 2020): iterate ``v <- Hv/||Hv||``
    orthogonal to the eigenvectors already found, stop when the Rayleigh quotient
    changes by less than ``tol`` relative (see :func:`lossmap.linalg.power_iteration`).
    Converges slowly when eigenvalues are close; prefer :func:`eigenvalues`.
    """
    op = _operator(land, point)
    mv, n = as_matvec(op)
    vals, vecs, res, calls, ok = _power_iteration(mv, n, k=k, max_iter=max_iter, tol=tol, seed=seed)
    return Eigen(vals, _as_dicts(op, vecs), calls, res, ok, "LM", {"tol": tol, "method": "power"})


# ------------------------------------------------------------------------ trace
_TRACE_METHODS: dict[str, Callable[..., Trace]] = {
    "hutchinson": hutchinson,
    "hutch++": hutchpp,
    "xtrace": xtrace,
}


@single_blas_thread
def trace(
    land: Landscape | LinearOperator,
    *,
    method: str = "hutch++",
    matvecs: int = 90,
    seed: int = 0,
    point: Mapping[str, Tensor] | None = None,
) -> Trace:
    """Stochastic estimate of ``tr(H)`` with a standard error.

    Methods (each a function of :mod:`lossmap.linalg.trace`):
        ``"hutchinson"``: ``(1/m) Σ zᵀHz`` over Rademacher ``z`` (Hutchinson 1989);
        stderr = sample std / √m.
        ``"hutch++"``: Meyer, Musco, Musco & Woodruff 2021: the trace of ``H`` on a
        sketched top subspace ``Q`` (from ``m/3`` products) exactly, plus Hutchinson on
        the deflated rest (``m/3`` products); stderr from the Hutchinson part.
        ``"xtrace"``: Epperly, Tropp & Webber 2024: exchangeable leave-one-out
        Hutch++ using all ``m/2`` products for both parts; stderr from the
        spread of the leave-one-out estimates.

    A budget ``matvecs`` that covers all ``n`` parameters gives the exact trace.
    """
    op = _operator(land, point)
    if not isinstance(method, str) or method not in _TRACE_METHODS:
        raise ValueError(
            f"unknown trace method {method!r}; choose one of {', '.join(_TRACE_METHODS)}"
        )
    return _TRACE_METHODS[method](op, matvecs=matvecs, seed=seed)


# -------------------------------------------------------------------- density
@single_blas_thread
def spectral_density(
    land: Landscape | LinearOperator,
    *,
    probes: int = 1,
    steps: int = 100,
    sigma: float | None = None,
    grid_points: int = 1000,
    deflate: bool = True,
    deflate_tol: float = 1e-8,
    seed: int = 0,
    point: Mapping[str, Tensor] | None = None,
    journal: Journal | None = None,
) -> Spectrum:
    """Eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each of ``probes`` Gaussian unit start vectors, ``steps`` Lanczos steps (full
    reorthogonalisation) give Ritz values ``θ_i`` (the nodes) and weights
    ``τ_i = (e₁ᵀ s_i)²`` (:func:`lossmap.linalg.lanczos_quadrature`); the density is
    ``(1/probes) Σ τ_i N(t; θ_i, σ²)`` on a grid covering the nodes (±5σ), normalised
    to integrate to 1. ``σ`` defaults to 1/200 of the spectrum's width. Uses
    ``probes * steps`` HVPs.

    ``deflate=True`` (no extra HVPs): Ritz values whose residual is below
    ``deflate_tol`` times the spectral radius are eigenvalues; they get their expected
    weight ``1/n`` instead of the noisy ``(v·u_i)²``, and the other weights are rescaled
    to the remaining mass. This removes most of the single-probe error around the
    outliers of a trained network's spectrum. ``deflate=False`` is the textbook SLQ.

    With a :class:`~lossmap.store.Journal`, each finished probe's nodes and weights are
    recorded (``density/<i>``) and a rerun skips them; the result is the same.

    Error band: with ``probes >= 2``, ``Spectrum.density_stderr`` is the standard error
    across probes of each probe's broadened density, per grid point (the probes are
    independent, so ``density ± 2·density_stderr`` is a pointwise ~95 % band for the
    *expected* SLQ density at this σ and ``steps``; it does not include the bias of
    few Lanczos steps or of the broadening). On the digits MLP A of
    ``benchmarks/curvature.py`` (2,410 parameters) at 100 HVPs, W1 to the exact
    spectrum: see ``benchmarks/results/coverage.md``.
    """
    op = _operator(land, point)
    if probes < 1 or steps < 2:
        raise ValueError(f"need probes >= 1 and steps >= 2, got probes={probes}, steps={steps}")
    mv, n = as_matvec(op)
    steps = min(steps, n)
    rng = np.random.default_rng(seed)
    all_nodes, all_w = [], []
    calls = 0
    resumed = 0
    for i in range(probes):
        v0 = rng.standard_normal(n)  # drawn even when resumed: later probes stay the same
        done = journal.get(f"density/{i}") if journal is not None else None
        if done is not None and done.shape == (3, steps):
            all_nodes.append(done[0])
            all_w.append(done[1])
            calls += int(done[2, 0])
            resumed += 1
            continue
        nodes, wts, used = lanczos_quadrature(
            mv, v0, steps=steps, deflate=deflate, deflate_tol=deflate_tol
        )
        calls += used
        all_nodes.append(nodes)
        all_w.append(wts)
        if journal is not None:
            count = np.zeros(steps)
            count[0] = used
            journal.put(f"density/{i}", np.stack([nodes, wts, count]))
    meta = {"probes": probes, "steps": steps, "seed": seed, "deflate": deflate}
    return _broadened(
        np.array(all_nodes),
        np.array(all_w),
        sigma,
        grid_points,
        calls,
        meta | {"resumed_probes": resumed},
    )


def _broadened(
    nodes: np.ndarray,
    weights: np.ndarray,
    sigma: float | None,
    grid_points: int,
    matvecs: int,
    meta: dict[str, Any],
) -> Spectrum:
    """The density ``[grid_points]`` of Gaussians ``N(θ, σ²)`` at the ``nodes``
    ``[probes, steps]`` weighted by ``weights`` and averaged over probes, on a grid
    ±5σ past the extreme nodes, normalised to integrate to 1; ``σ`` defaults to 1/200
    of the nodes' spread."""
    lo, hi = float(nodes.min()), float(nodes.max())
    width = max(hi - lo, 1e-12 * max(1.0, abs(hi)))
    sig = float(sigma) if sigma is not None else width / 200
    grid = np.linspace(lo - 5 * sig, hi + 5 * sig, grid_points)
    dens = broaden(nodes, weights, grid, sig)
    area = float(np.trapezoid(dens, grid))
    if area > 0:
        dens = dens / area
    return Spectrum(grid, dens, nodes, weights, sig, matvecs, meta)
