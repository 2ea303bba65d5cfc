"""Curvature of the loss from Hessian-vector products (HVPs).

Everything here works on the *exact* data-set mean loss (batch means weighted by batch
size) and counts the HVPs it spends.

- :class:`HessianOperator`: a :class:`scipy.sparse.linalg.LinearOperator` over the
  flattened trainable parameters (float64 in, float64 out), with a torch method too.
- :func:`eigenvalues`: Lanczos with full reorthogonalisation, stopped as soon as the
  wanted Ritz values are certified to ``tol`` (residual and gap bounds).
- :func:`power_iteration`: the textbook method with deflation (as in PyHessian, Yao et
  al. 2020), for comparison and teaching.
- :func:`trace`: Hutchinson (1989), Hutch++ (Meyer et al. 2021) and XTrace (Epperly et
  al. 2024), each with a standard error.
- :func:`spectral_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019; Lin,
  Saad & Yang 2016), Gaussian-broadened, with the Ritz nodes and weights.
- :func:`dense`: the explicit Hessian for small models.

HVPs use double backward through a gradient graph that is built once per point and
reused for every product (as PyHessian does): measured faster here than
forward-over-reverse (``torch.func.jvp`` of ``grad``), see ``benchmarks/curvature.py``.
Data sets that are streamed rather than held rebuild the graph batch by batch.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor

from lossmap import vectors as V
from lossmap.hvp import HessianVectorProduct
from lossmap.landscape import Landscape
from lossmap.results import Spectrum, broaden

if TYPE_CHECKING:
    from lossmap.store import Journal

__all__ = [
    "DENSE_LIMIT",
    "Eigen",
    "HessianOperator",
    "Spectrum",
    "Trace",
    "dense",
    "eigenvalues",
    "lanczos",
    "power_iteration",
    "spectral_density",
    "trace",
]

DENSE_LIMIT = 10_000
MatVec = Callable[[np.ndarray], np.ndarray]
_F = TypeVar("_F", bound=Callable[..., Any])


def single_blas_thread(fn: _F) -> _F:
    """Run ``fn`` with numpy's BLAS on one thread.

    The Krylov methods alternate small numpy products (reorthogonalisation) with torch
    HVPs. OpenBLAS threads busy-wait after each product and take the cores from
    torch's threads: on two cores, measured here, a top-1 Lanczos on a 26k-parameter
    MLP took 0.17 s with BLAS threads and 0.025 s without (HVPs 14 -> 2.5 ms). The
    numpy work is tiny; one thread loses nothing.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------- operator
class HessianOperator(LinearOperator):
    """The Hessian of the data-set mean loss at ``point`` (θ0 by default).

    ``op @ v`` takes and returns float64 numpy vectors of length ``op.shape[0]``
    (parameters flattened in ``named_parameters()`` order); :meth:`hvp` takes and
    returns torch tensors. ``op.matvecs`` counts Hessian-vector products.

    >>> from lossmap.examples import linear_regression
    >>> op = HessianOperator(linear_regression())
    >>> H = op @ np.eye(2)          # 2 AᵀA / n for A = [x, 1]
    >>> bool(np.allclose(H, H.T)), op.matvecs
    (True, 2)
    """

    def __init__(
        self,
        land: Landscape,
        point: Mapping[str, Tensor] | None = None,
        *,
        dataset: str | None = None,
        reuse_graph: bool = True,
    ) -> None:
        self.land = land
        self._product = HessianVectorProduct(land, point, dataset=dataset, reuse_graph=reuse_graph)
        self.point = self._product.point
        self.dataset = self._product.dataset
        n = land.num_parameters
        self.dtype_torch = next(iter(self.point.values())).dtype
        super().__init__(dtype=np.float64, shape=(n, n))
        self.matvecs = 0
        self.seconds = 0.0

    def _hvp_list(self, vs: list[Tensor]) -> list[Tensor]:
        return self._product(vs)

    def hvp(self, v: Tensor) -> Tensor:
        """``H v`` for a flat torch vector (any float dtype; returned in ``v``'s dtype)."""
        t0 = time.perf_counter()
        parts = V.unflatten(v.to(self.dtype_torch), self.point)
        hv = self._hvp_list([parts[k].to(t.device) for k, t in self.point.items()])
        self.matvecs += 1
        self.seconds += time.perf_counter() - t0
        return torch.cat([h.reshape(-1) for h in hv]).to(v.dtype)

    def hvp_dict(self, v: Mapping[str, Tensor]) -> V.Vector:
        """``H v`` for a direction dict."""
        flat = V.flatten(V.check_vector(v, self.point, name="v"))
        return V.unflatten(self.hvp(flat), self.point)

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        dev = next(iter(self.point.values())).device
        return self.hvp(v.to(dev)).cpu().double().numpy()

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._matvec(x)  # symmetric

    def _adjoint(self) -> HessianOperator:
        return self


def _as_matvec(op: Any) -> tuple[MatVec, int]:
    if isinstance(op, Landscape):
        op = HessianOperator(op)
    if isinstance(op, LinearOperator):
        return (lambda x: np.asarray(op @ x).reshape(-1)), int(op.shape[0])
    if isinstance(op, np.ndarray):
        return (lambda x: op @ x), int(op.shape[0])
    raise TypeError(
        f"expected a Landscape, a HessianOperator / LinearOperator or a square array, got {type(op).__name__}"
    )


# ------------------------------------------------------------------------ dense
def dense(
    land: Landscape, point: Mapping[str, Tensor] | None = None, *, limit: int = DENSE_LIMIT
) -> Tensor:
    """The explicit Hessian ``[n, n]`` (float64) of the data-set mean loss.

    Built column by column from HVPs (vectorised with ``torch.vmap`` over the unit
    vectors where possible). Refuses models with more than ``limit`` parameters.
    """
    n = land.num_parameters
    if n > limit:
        raise ValueError(
            f"dense() needs an {n:,} x {n:,} matrix ({n * n * 8 / 2**30:.1f} GiB in float64); "
            f"it is limited to {limit:,} parameters. Use eigenvalues(), trace() or spectral_density()"
        )
    op = HessianOperator(land, point)
    eye = torch.eye(n, dtype=op.dtype_torch, device=next(iter(op.point.values())).device)
    cols = [op.hvp(eye[i]) for i in range(n)]
    H = torch.stack(cols, dim=1).double().cpu()
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


@dataclass
class Trace:
    """A trace estimate with its standard error and cost."""

    value: float
    stderr: float
    matvecs: int
    method: str
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------- lanczos
def _which(which: str) -> str:
    if which not in ("LA", "SA", "LM"):
        raise ValueError(
            f"which must be 'LA' (largest), 'SA' (smallest) or 'LM' (largest magnitude), got {which!r}"
        )
    return which


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    if which == "LA":
        return np.argsort(theta)[::-1][:k]
    if which == "SA":
        return np.argsort(theta)[:k]
    return np.argsort(-np.abs(theta))[:k]


def _tridiag_eigh(alpha: list[float], beta: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the Lanczos tridiagonal (diagonal ``alpha``, off ``beta``)."""
    if len(alpha) == 1:
        return np.array(alpha), np.ones((1, 1))
    theta, s = scipy.linalg.eigh_tridiagonal(np.array(alpha), np.array(beta[: len(alpha) - 1]))
    return theta, s


@single_blas_thread
def lanczos(
    matvec: MatVec,
    n: int,
    *,
    k: int = 1,
    which: str = "LA",
    tol: float = 1e-6,
    max_iter: int | None = None,
    v0: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, bool]:
    """Lanczos with full reorthogonalisation, stopped when the ``k`` wanted Ritz values
    are certified: for each, ``min(r, r² / gap) <= tol * |θ|`` with ``r = |β_m s_m|``
    the residual norm and ``gap`` the distance to the nearest other Ritz value (the
    Kato–Temple bound on the eigenvalue error), and ``θ`` changed by at most
    ``tol * |θ|`` over the last step (the Ritz gap overstates the true one until the
    neighbouring Ritz value has converged; without this check early stops missed the
    tolerance by up to 2× along a GD trajectory).

    Returns ``(values, vectors [n, k], residuals, matvecs, converged)``.
    """
    which = _which(which)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of parameters ({n:,}), got {k}")
    max_iter = min(n, max_iter if max_iter is not None else max(300, 20 * k))
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(n) if v0 is None else np.asarray(v0, dtype=np.float64).copy()
    q /= np.linalg.norm(q)
    Q = np.empty((max_iter + 1, n))
    Q[0] = q
    alpha: list[float] = []
    beta: list[float] = []
    converged = False
    theta: np.ndarray = np.empty(0)
    s: np.ndarray = np.empty((0, 0))
    prev: np.ndarray | None = None  # the wanted Ritz values one step earlier
    m = 0
    for j in range(max_iter):
        w = matvec(Q[j])
        a = float(Q[j] @ w)
        w = w - a * Q[j] - (beta[-1] * Q[j - 1] if j > 0 else 0.0)
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = float(np.linalg.norm(w))
        alpha.append(a)
        m = j + 1
        theta, s = _tridiag_eigh(alpha, beta)
        invariant = b <= 1e-12 * max(1.0, float(np.max(np.abs(theta))))
        if m >= k:
            sel = _select(theta, k, which)
            r = np.abs(b * s[-1, sel])
            gaps = np.array(
                [
                    np.min(np.abs(np.delete(theta, int(i)) - theta[int(i)])) if m > 1 else np.inf
                    for i in sel
                ]
            )
            # With a single Ritz value there is no gap estimate yet: the residual alone.
            err = r if m == 1 else np.minimum(r, r**2 / np.maximum(gaps, 1e-300))
            scale = np.maximum(np.abs(theta[sel]), 1e-12 * max(1.0, float(np.max(np.abs(theta)))))
            # The Kato–Temple bound needs the gap to the rest of the spectrum; the gap to
            # the next Ritz value overstates it until that value has converged too (Ritz
            # values interlace inside the spectrum). So the wanted values must also have
            # stopped moving: their change over the last step within the tolerance.
            moved = np.abs(theta[sel] - prev) if prev is not None else np.full(len(sel), np.inf)
            prev = theta[sel]
            if invariant or (np.all(err <= tol * scale) and np.all(moved <= tol * scale)):
                converged = True
                beta.append(b)
                break
        if invariant:
            break
        beta.append(b)
        Q[j + 1] = w / b
    sel = _select(theta, min(k, m), which)
    vecs = Q[:m].T @ s[:, sel]
    resid = np.abs(beta[m - 1] * s[-1, sel]) if len(beta) >= m else np.zeros(len(sel))
    return theta[sel], vecs, resid, m, converged


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
    v0: Mapping[str, Tensor] | np.ndarray | None = None,
) -> Eigen:
    """The ``k`` extreme Hessian eigenvalues by Lanczos (see :func:`lanczos`).

    Args:
        land: a Landscape (its Hessian at ``point`` / θ0) or a LinearOperator.
        k: how many eigenvalues.
        which: ``"LA"`` largest (sharpest), ``"SA"`` smallest (most negative: saddles),
            ``"LM"`` largest magnitude.
        tol: relative accuracy of the eigenvalues (certified by residual bounds).
        max_iter: cap on Lanczos steps (HVPs).
        seed: start vector (when ``v0`` is not given).
        v0: start vector, a parameter dict or a flat array (e.g. the previous top
            eigenvector when tracking λ_max along training: far fewer HVPs). Lanczos
            certifies that what it returns are eigenvalues, not that no larger one
            exists: a start nearly orthogonal to the top eigenvector can miss it. Blend
            an old vector with a random one (as
            :func:`lossmap.trajectory.gradient_descent` does) rather than reuse it alone.

    Returns:
        :class:`Eigen` with ``values`` sorted as asked (descending for LA/LM,
        ascending for SA), ``vectors`` as unit-norm parameter dicts, ``matvecs``,
        ``residuals`` ``||Hv - λv||``.
    """
    op = HessianOperator(land, point) if isinstance(land, Landscape) else land
    n = int(op.shape[0])
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of parameters ({n:,}), got {k!r}")
    before = getattr(op, "matvecs", 0)
    mv, _ = _as_matvec(op)
    calls = 0

    def counted(x: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        return mv(x)

    start: np.ndarray | None = None
    if v0 is not None:
        if isinstance(v0, np.ndarray):
            start = np.asarray(v0, dtype=np.float64).reshape(-1)
        else:
            like = op.point if isinstance(op, HessianOperator) else None
            if like is None:
                raise TypeError("v0 as a parameter dict needs a Landscape or a HessianOperator")
            v = V.check_vector(v0, like, name="v0")
            start = V.flatten({k: v[k] for k in like}).double().cpu().numpy()
        if start.shape != (n,) or not np.all(np.isfinite(start)) or not np.any(start):
            raise ValueError(f"v0 must be a finite, non-zero vector of {n:,} entries")
    vals, vecs, resid, _, ok = lanczos(
        counted, n, k=k, which=which, tol=tol, max_iter=max_iter, v0=start, seed=seed
    )
    vectors = []
    if isinstance(op, HessianOperator):
        vectors = [
            V.unflatten(torch.from_numpy(vecs[:, i]).to(op.dtype_torch), op.point)
            for i in range(vecs.shape[1])
        ]
    used = getattr(op, "matvecs", before + calls) - before
    return Eigen(vals, vectors, int(used), resid, ok, which, {"tol": tol, "method": "lanczos"})


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
    changes by less than ``tol`` relative. Converges slowly when eigenvalues are close;
    prefer :func:`eigenvalues`.
    """
    op = HessianOperator(land, point) if isinstance(land, Landscape) else land
    n = int(op.shape[0])
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of parameters ({n:,}), got {k!r}")
    mv, _ = _as_matvec(op)
    rng = np.random.default_rng(seed)
    found: list[np.ndarray] = []
    vals: list[float] = []
    res: list[float] = []
    calls = 0
    ok = True
    for _ in range(k):
        v = rng.standard_normal(n)
        lam = None
        conv = False
        for _ in range(max_iter):
            for u in found:
                v -= (u @ v) * u
            v /= np.linalg.norm(v)
            hv = mv(v)
            calls += 1
            for u in found:
                hv -= (u @ hv) * u
            new = float(v @ hv)
            if lam is not None and abs(new - lam) <= tol * abs(new) + 1e-30:
                lam = new
                conv = True
                v = hv
                break
            lam = new
            v = hv
        v = v / np.linalg.norm(v)
        found.append(v)
        vals.append(float(lam or 0.0))
        res.append(float("nan"))
        ok = ok and conv
    vectors = []
    if isinstance(op, HessianOperator):
        vectors = [V.unflatten(torch.from_numpy(u).to(op.dtype_torch), op.point) for u in found]
    return Eigen(
        np.array(vals), vectors, calls, np.array(res), ok, "LM", {"tol": tol, "method": "power"}
    )


# ------------------------------------------------------------------------ trace
def _rademacher(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    return rng.integers(0, 2, size=(n, m)).astype(np.float64) * 2 - 1


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

    Methods:
        ``"hutchinson"``: ``(1/m) Σ zᵀHz`` over Rademacher ``z`` (Hutchinson 1989);
        stderr = sample std / √m.
        ``"hutch++"``: Meyer, Musco, Musco & Woodruff 2021: the trace of ``H`` on a
        sketched top subspace ``Q`` (from ``m/3`` products) exactly, plus Hutchinson on
        the deflated rest (``m/3`` products); stderr from the Hutchinson part.
        ``"xtrace"``: Epperly, Tropp & Webber 2024: exchangeable leave-one-out
        Hutch++ using all ``m/2`` products for both parts; stderr from the
        spread of the leave-one-out estimates.
    """
    op = HessianOperator(land, point) if isinstance(land, Landscape) else land
    methods = ("hutchinson", "hutch++", "xtrace")
    if method not in methods:
        raise ValueError(f"unknown trace method {method!r}; choose one of {', '.join(methods)}")
    if not isinstance(matvecs, int) or matvecs < (2 if method == "hutchinson" else 6):
        raise ValueError(
            f"matvecs must be an integer >= {2 if method == 'hutchinson' else 6}, got {matvecs!r}"
        )
    mv, n = _as_matvec(op)
    rng = np.random.default_rng(seed)

    def apply(X: np.ndarray) -> np.ndarray:
        return np.stack([mv(X[:, i]) for i in range(X.shape[1])], axis=1)

    if matvecs >= n:  # the budget covers the whole space: the exact trace is cheaper
        diag = [mv(np.eye(1, n, i)[0])[i] for i in range(n)]
        return Trace(float(np.sum(diag)), 0.0, n, method, {"exact": True})
    if method == "hutchinson":
        Z = _rademacher(rng, n, matvecs)
        est = np.einsum("ij,ij->j", Z, apply(Z))
        return Trace(
            float(est.mean()), float(est.std(ddof=1) / math.sqrt(len(est))), matvecs, method
        )
    if method == "hutch++":
        s = matvecs // 3
        g = matvecs - 2 * s
        S = _rademacher(rng, n, s)
        Qm, _ = np.linalg.qr(apply(S))
        HQ = apply(Qm)
        top = float(np.trace(Qm.T @ HQ))
        G = _rademacher(rng, n, g)
        G = G - Qm @ (Qm.T @ G)
        est = np.einsum("ij,ij->j", G, apply(G))
        se = float(est.std(ddof=1) / math.sqrt(g)) if g > 1 else float("nan")
        return Trace(top + float(est.mean()), se, 2 * s + g, method, {"sketch": s, "probes": g})
    # XTrace (Epperly, Tropp & Webber 2024), with improved (normalised) Rademacher probes.
    m = matvecs // 2
    Om = _rademacher(rng, n, m)
    Y = apply(Om)
    Qm, R = np.linalg.qr(Y)
    Z = apply(Qm)
    H = Qm.T @ Z
    W = Qm.T @ Om
    # Leave-one-out bases Q_(i) = Q (I - s_i s_iᵀ) with s_i ∝ the i-th column of R^{-T}.
    Sinv = np.linalg.inv(R).T
    Sn = Sinv / np.linalg.norm(Sinv, axis=0, keepdims=True)
    dSW = np.sum(Sn * W, axis=0)
    dSHS = np.sum(Sn * (H @ Sn), axis=0)
    # Without probe i the sketch spans Q (I - s_i s_iᵀ): s_i ⟂ R e_j for all j != i.
    # Hutch++ with that basis and the held-out probe ω_i:
    #   tr((I - s sᵀ) QᵀHQ) + zᵀHz,  z = ω_i - Q (I - s sᵀ) Qᵀω_i,  Hz = Hω_i - HQ (...).
    tr_top = np.trace(H) - dSHS
    ests = np.empty(m)
    for i in range(m):
        c = W[:, i] - Sn[:, i] * dSW[i]
        z = Om[:, i] - Qm @ c
        hz = Y[:, i] - Z @ c
        ests[i] = tr_top[i] + float(z @ hz)
    value = float(ests.mean())
    se = float(ests.std(ddof=1) / math.sqrt(m))
    return Trace(value, se, 2 * m, method, {"probes": m})


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
    ``τ_i = (e₁ᵀ s_i)²``; the density is ``(1/probes) Σ τ_i N(t; θ_i, σ²)`` on a grid
    covering the nodes (±5σ), normalised to integrate to 1. ``σ`` defaults to 1/200 of
    the spectrum's width. Uses ``probes * steps`` HVPs.

    ``deflate=True`` (no extra HVPs): Ritz values whose residual is below
    ``deflate_tol`` times the spectral radius are eigenvalues; they get their expected
    weight ``1/n`` instead of the noisy ``(v·u_i)²``, and the other weights are rescaled
    to the remaining mass. This removes most of the single-probe error around the
    outliers of a trained network's spectrum. ``deflate=False`` is the textbook SLQ.

    With a :class:`~lossmap.store.Journal`, each finished probe's nodes and weights are
    recorded (``density/<i>``) and a rerun skips them; the result is the same.
    """
    op = HessianOperator(land, point) if isinstance(land, Landscape) else land
    if probes < 1 or steps < 2:
        raise ValueError(f"need probes >= 1 and steps >= 2, got probes={probes}, steps={steps}")
    mv, n = _as_matvec(op)
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
        calls_before = calls
        Q = np.empty((steps + 1, n))
        Q[0] = v0 / np.linalg.norm(v0)
        alpha: list[float] = []
        beta: list[float] = []
        for j in range(steps):
            w = mv(Q[j])
            calls += 1
            a = float(Q[j] @ w)
            w = w - a * Q[j] - (beta[-1] * Q[j - 1] if j > 0 else 0.0)
            for _ in range(2):
                w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
            b = float(np.linalg.norm(w))
            alpha.append(a)
            beta.append(b)
            if j == steps - 1 or b <= 1e-10 * max(1.0, abs(a)):
                break
            Q[j + 1] = w / b
        theta, s = _tridiag_eigh(alpha, beta)
        wq = s[0] ** 2
        if deflate and len(theta) < n:
            # Converged Ritz values are eigenvalues of H; their quadrature weight
            # (v·u_i)² is a noisy estimate of 1/n (chi-square with one degree of
            # freedom). Give them their expected weight exactly and rescale the rest:
            # the outliers, which dominate the error far from the bulk, become exact.
            last_beta = beta[len(alpha) - 1] if len(beta) >= len(alpha) else 0.0
            resid = np.abs(last_beta * s[-1])
            conv = resid <= deflate_tol * max(float(np.max(np.abs(theta))), 1e-300)
            k = int(conv.sum())
            rest = float(wq[~conv].sum())
            if 0 < k < len(theta) and rest > 0:
                wq = np.where(conv, 1.0 / n, wq * (1.0 - k / n) / rest)
        nodes = np.full(steps, theta[0])
        wts = np.zeros(steps)
        nodes[: len(theta)] = theta
        wts[: len(theta)] = wq
        all_nodes.append(nodes)
        all_w.append(wts)
        if journal is not None:
            count = np.zeros(steps)
            count[0] = calls - calls_before
            journal.put(f"density/{i}", np.stack([nodes, wts, count]))
    nodes_a, w_a = np.array(all_nodes), np.array(all_w)
    lo, hi = float(nodes_a.min()), float(nodes_a.max())
    width = max(hi - lo, 1e-12 * max(1.0, abs(hi)))
    sig = float(sigma) if sigma is not None else width / 200
    grid = np.linspace(lo - 5 * sig, hi + 5 * sig, grid_points)
    dens = broaden(nodes_a, w_a, grid, sig)
    area = float(np.trapezoid(dens, grid))
    if area > 0:
        dens = dens / area
    return Spectrum(
        grid,
        dens,
        nodes_a,
        w_a,
        sig,
        calls,
        {
            "probes": probes,
            "steps": steps,
            "seed": seed,
            "deflate": deflate,
            "resumed_probes": resumed,
        },
    )
