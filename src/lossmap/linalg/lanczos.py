"""Lanczos with full reorthogonalisation: one step, the certified eigen-solver and the
Gauss quadrature behind stochastic Lanczos quadrature.

Both :func:`lanczos` and :func:`lanczos_quadrature` run the same
:func:`lanczos_step`; they differ only in when they stop.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from lossmap.linalg._blas import single_blas_thread
from lossmap.linalg._operator import MatVec

__all__ = ["lanczos", "lanczos_quadrature", "lanczos_step", "tridiagonal_eigh"]


def lanczos_step(
    matvec: MatVec, Q: np.ndarray, j: int, beta_prev: float
) -> tuple[float, float, np.ndarray]:
    """One Lanczos step from the orthonormal rows ``Q[:j + 1]`` (``Q`` is ``[m, n]``).

    The three-term recurrence ``w = A q_j - α_j q_j - β_{j-1} q_{j-1}`` with
    ``α_j = q_jᵀ A q_j``, then full reorthogonalisation against ``q_0 … q_j``, done
    twice ("twice is enough": Parlett, *The Symmetric Eigenvalue Problem*, 1998,
    §6.9), and ``β_j = ||w||``. The caller stores ``Q[j + 1] = w / β_j`` if it goes on.

    Args:
        matvec: ``x -> A x`` for a symmetric ``A``.
        Q: the Lanczos basis so far, one vector per row; row ``j`` is ``q_j``.
        j: the step, from 0.
        beta_prev: ``β_{j-1}`` (ignored when ``j == 0``).

    Returns:
        ``(α_j, β_j, w)``, one mat-vec spent.

    >>> A = np.diag([1.0, 2.0, 3.0])
    >>> Q = np.empty((4, 3)); Q[0] = np.ones(3) / np.sqrt(3)
    >>> a, b, w = lanczos_step(lambda x: A @ x, Q, 0, 0.0)
    >>> round(a, 12), round(b, 12), bool(abs(w @ Q[0]) < 1e-15)
    (2.0, 0.816496580928, True)
    """
    w = matvec(Q[j])
    a = float(Q[j] @ w)
    w = w - a * Q[j] - (beta_prev * Q[j - 1] if j > 0 else 0.0)
    for _ in range(2):  # full reorthogonalisation, twice is enough
        w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
    return a, float(np.linalg.norm(w)), w


def tridiagonal_eigh(alpha: list[float], beta: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the Lanczos tridiagonal ``T`` (diagonal ``alpha``, off
    diagonal the first ``len(alpha) - 1`` of ``beta``).

    Returns:
        ``(θ [m], S [m, m])``: the Ritz values ascending and ``T``'s eigenvectors.

    >>> theta, s = tridiagonal_eigh([2.0, 2.0], [1.0])
    >>> np.round(theta, 12).tolist()
    [1.0, 3.0]
    """
    if len(alpha) == 1:
        return np.array(alpha), np.ones((1, 1))
    theta, s = scipy.linalg.eigh_tridiagonal(np.array(alpha), np.array(beta[: len(alpha) - 1]))
    return theta, s


def check_which(which: str) -> str:
    """``which`` of the eigensolvers (``LA``, ``SA``, ``LM``), or a one-line error."""
    if which not in ("LA", "SA", "LM"):
        raise ValueError(
            f"which must be 'LA' (largest), 'SA' (smallest) or 'LM' (largest magnitude), got {which!r}"
        )
    return which


def select_ritz(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """The indices of the ``k`` Ritz values ``theta`` wanted by ``which``, best first."""
    if which == "LA":
        return np.argsort(theta)[::-1][:k]
    if which == "SA":
        return np.argsort(theta)[:k]
    return np.argsort(-np.abs(theta))[:k]


def _error_bound(theta: np.ndarray, s: np.ndarray, b: float, sel: np.ndarray) -> np.ndarray:
    """``min(r, r² / gap)`` for the selected Ritz values (Kato–Temple); ``r`` alone while
    there is a single Ritz value (no gap estimate yet)."""
    m = len(theta)
    r = np.abs(b * s[-1, sel])
    gaps = np.array(
        [np.min(np.abs(np.delete(theta, int(i)) - theta[int(i)])) if m > 1 else np.inf for i in sel]
    )
    return r if m == 1 else np.minimum(r, r**2 / np.maximum(gaps, 1e-300))


FIRST_BASIS_ROWS = 32
"""Rows of the Lanczos basis allocated at the start; it doubles when full."""


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
    """The ``k`` extreme eigenpairs of a symmetric mat-vec, certified to ``tol``.

    Lanczos with full reorthogonalisation (:func:`lanczos_step`), stopped when the
    ``k`` wanted Ritz values are certified: for each, ``min(r, r² / gap) <= tol * |θ|``
    with ``r = |β_m s_m|`` the residual norm and ``gap`` the distance to the nearest
    other Ritz value (the Kato–Temple bound on the eigenvalue error; Parlett 1998,
    §11.5), and ``θ`` changed by at most ``tol * |θ|`` over the last step (the Ritz gap
    overstates the true one until the neighbouring Ritz value has converged; without
    this check early stops missed the tolerance by up to 2× along a GD trajectory).
    Also stops on an invariant subspace (``β`` below ``1e-12`` of the largest ``|θ|``).

    Args:
        matvec: ``x -> A x`` for a symmetric ``A`` (``[n]`` float64 in and out).
        n: the dimension.
        k: how many eigenvalues.
        which: ``"LA"`` largest, ``"SA"`` smallest, ``"LM"`` largest magnitude.
        tol: relative accuracy of the eigenvalues.
        max_iter: cap on steps (mat-vecs); default ``max(300, 20 k)``, at most ``n``.
        v0: start vector (default a Gaussian one drawn from ``seed``).
        seed: seeds ``numpy.random.default_rng`` for the start vector.

    Returns:
        ``(values [k], vectors [n, k], residuals [k], matvecs, converged)``, values
        sorted as asked (descending for LA/LM, ascending for SA).

    >>> A = np.diag([3.0, 2.0, 1.0, 0.5])
    >>> vals, vecs, resid, m, ok = lanczos(lambda x: A @ x, 4, k=2, tol=1e-10)
    >>> np.round(vals, 8).tolist(), ok
    ([3.0, 2.0], True)
    """
    which = check_which(which)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of parameters ({n:,}), got {k}")
    max_iter = min(n, max_iter if max_iter is not None else max(300, 20 * k))
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(n) if v0 is None else np.asarray(v0, dtype=np.float64).copy()
    q /= np.linalg.norm(q)
    # The basis grows as the steps go (doubling): a preallocated [max_iter + 1, n] would
    # be 26 GiB for an 11.5 M-parameter model at the default 300 steps, used or not.
    Q = np.empty((min(max_iter + 1, FIRST_BASIS_ROWS), n))
    Q[0] = q
    alpha: list[float] = []
    beta: list[float] = []
    converged = False
    theta: np.ndarray = np.empty(0)
    s: np.ndarray = np.empty((0, 0))
    prev: np.ndarray | None = None  # the wanted Ritz values one step earlier
    m = 0
    for j in range(max_iter):
        a, b, w = lanczos_step(matvec, Q, j, beta[-1] if j > 0 else 0.0)
        alpha.append(a)
        m = j + 1
        theta, s = tridiagonal_eigh(alpha, beta)
        invariant = b <= 1e-12 * max(1.0, float(np.max(np.abs(theta))))
        if m >= k:
            sel = select_ritz(theta, k, which)
            err = _error_bound(theta, s, b, sel)
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
        if j + 1 == len(Q):
            Q = np.concatenate([Q, np.empty((min(len(Q), max_iter + 1 - len(Q)), n))])
        Q[j + 1] = w / b
    sel = select_ritz(theta, min(k, m), which)
    vecs = Q[:m].T @ s[:, sel]
    resid = np.abs(beta[m - 1] * s[-1, sel]) if len(beta) >= m else np.zeros(len(sel))
    return theta[sel], vecs, resid, m, converged


def _deflate(
    theta: np.ndarray, s: np.ndarray, wq: np.ndarray, last_beta: float, n: int, tol: float
) -> np.ndarray:
    """Converged Ritz values are eigenvalues of ``A``; their quadrature weight
    ``(v·u_i)²`` is a noisy estimate of ``1/n`` (chi-square with one degree of
    freedom). Give them their expected weight exactly and rescale the rest: the
    outliers, which dominate the error far from the bulk, become exact."""
    resid = np.abs(last_beta * s[-1])
    conv = resid <= tol * max(float(np.max(np.abs(theta))), 1e-300)
    k = int(conv.sum())
    rest = float(wq[~conv].sum())
    if 0 < k < len(theta) and rest > 0:
        return np.where(conv, 1.0 / n, wq * (1.0 - k / n) / rest)
    return wq


@single_blas_thread
def lanczos_quadrature(
    matvec: MatVec,
    v0: np.ndarray,
    *,
    steps: int,
    deflate: bool = True,
    deflate_tol: float = 1e-8,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Gauss quadrature nodes and weights of ``A``'s spectral measure seen from ``v0``.

    ``steps`` Lanczos steps from ``q_0 = v0 / ||v0||`` (:func:`lanczos_step`; stopped
    early on an invariant subspace, ``β <= 1e-10 max(1, |α|)``) give the tridiagonal
    ``T = S diag(θ) Sᵀ``; then ``q_0ᵀ f(A) q_0 ≈ Σ_i τ_i f(θ_i)`` with ``τ_i = (e₁ᵀ s_i)²``
    (Golub & Meurant 2010). Averaged over random ``v0`` this is stochastic Lanczos
    quadrature (Lin, Saad & Yang 2016; Ghorbani, Krishnan & Xiao 2019).

    ``deflate=True`` (no extra mat-vecs): Ritz values whose residual ``|β_m s_{m,i}|``
    is below ``deflate_tol`` times the spectral radius are eigenvalues; they get their
    expected weight ``1/n`` instead of the noisy ``(v·u_i)²``, and the other weights
    are rescaled to the remaining mass.

    Args:
        matvec: ``x -> A x`` for a symmetric ``A``.
        v0: the start vector ``[n]`` (any norm).
        steps: at most this many steps (mat-vecs), at most ``n``.
        deflate: give converged Ritz values the weight ``1/n``.
        deflate_tol: the residual that counts as converged, relative.

    Returns:
        ``(nodes [steps], weights [steps], matvecs)``; after an early stop the nodes
        are padded with the first and the weights with zeros.

    >>> A = np.diag([1.0, 2.0, 4.0])
    >>> nodes, w, m = lanczos_quadrature(lambda x: A @ x, np.ones(3), steps=3)
    >>> np.round(nodes, 8).tolist(), np.round(w, 8).tolist(), m
    ([1.0, 2.0, 4.0], [0.33333333, 0.33333333, 0.33333333], 3)
    """
    n = len(v0)
    Q = np.empty((min(steps + 1, FIRST_BASIS_ROWS), n))  # grows by doubling, as in lanczos
    Q[0] = v0 / np.linalg.norm(v0)
    alpha: list[float] = []
    beta: list[float] = []
    calls = 0
    for j in range(steps):
        a, b, w = lanczos_step(matvec, Q, j, beta[-1] if j > 0 else 0.0)
        calls += 1
        alpha.append(a)
        beta.append(b)
        if j == steps - 1 or b <= 1e-10 * max(1.0, abs(a)):
            break
        if j + 1 == len(Q):
            Q = np.concatenate([Q, np.empty((min(len(Q), steps + 1 - len(Q)), n))])
        Q[j + 1] = w / b
    theta, s = tridiagonal_eigh(alpha, beta)
    wq = s[0] ** 2
    if deflate and len(theta) < n:
        last_beta = beta[len(alpha) - 1] if len(beta) >= len(alpha) else 0.0
        wq = _deflate(theta, s, wq, last_beta, n, deflate_tol)
    nodes = np.full(steps, theta[0])
    wts = np.zeros(steps)
    nodes[: len(theta)] = theta
    wts[: len(theta)] = wq
    return nodes, wts, calls
