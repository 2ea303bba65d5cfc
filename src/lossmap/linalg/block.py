"""Block Lanczos: extreme eigenpairs that a cluster of close eigenvalues cannot hide.

Single-vector Lanczos certifies that what it returns is *an* eigenvalue, not the
largest one: inside a cluster (the top eigenvalues of a network at the edge of
stability lie within 0.2–0.5 % of each other) it can converge to the second one and
certify it. A block of ``p`` start vectors, at least one of them random, sees a whole
cluster of up to ``p`` eigenvalues at once; its convergence does not depend on the
gaps inside the cluster (Musco & Musco 2015). That holds with high probability, not
surely, and needs the block at least as wide as the cluster, and a stop that waits
for the random columns: the ``(k+1)``-th Ritz value must have converged as well as
the wanted ones (:func:`_error_bounds`). Without that wait, block 3 stopped on the
second eigenvalue at 4 of 63 edge-of-stability iterates, each time after 6 products
(``benchmarks/results/edge_of_stability_block.md``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lossmap.linalg._blas import single_blas_thread
from lossmap.linalg._operator import MatMat
from lossmap.linalg.lanczos import check_which, select_ritz

__all__ = ["BlockResult", "block_lanczos", "block_size"]


def block_size(k: int) -> int:
    """The default block size for ``k`` eigenvalues: ``k + 2``.

    Two columns more than wanted: the ``(k+1)``-th and ``(k+2)``-th eigenvalues are
    often close to the ``k``-th (a cluster), and a block at least as wide as the
    cluster resolves it at the rate of the gap *below* the block (Musco & Musco 2015,
    Thm. 1 and §4). Wider clusters need ``block=``.

    >>> block_size(1), block_size(5)
    (3, 7)
    """
    return k + 2


def _error_bounds(
    theta: np.ndarray, Y: np.ndarray, order: np.ndarray, k: int, which: str, tol: float
) -> np.ndarray:
    """Bounds on the eigenvalue errors of the ``k`` wanted Ritz values, or ``inf``
    while the ``(k+1)``-th Ritz value is not yet resolved.

    ``order``: the wanted Ritz values and one more, in the wanted order; ``Y``: their
    residual vectors (columns). ``r_i = ||Y[:, i]||`` always bounds the error of ``θ_i``
    to *some* eigenvalue. Kato–Temple (Parlett 1998, Thm. 10.6.1) sharpens it to
    ``r_i² / δ_i`` with ``δ_i`` the distance from ``θ_i`` to the rest of the spectrum;
    the gap to the next Ritz value is not one (Ritz values interlace inside the
    spectrum), so the gap used is ``min(|θ_i − θ_{i±1}|) − ρ``, ``ρ = ||Y||₂``: when the
    ``k + 1`` Ritz values approximate the ``k + 1`` extreme eigenvalues in order (no
    eigenvalue missed, the premise of the block start), every eigenvalue past the
    ``(k+1)``-th lies within ``ρ`` of ``θ_{k+1}`` or beyond (Kahan's theorem, Parlett
    Thm. 11.5.1) and those before ``θ_{i-1}`` lie beyond it (interlacing).

    The premise needs the ``(k+1)``-th Ritz value to have converged too, not only the
    wanted ones: its residual ``r_{k+1}`` at most half its distance to ``θ_k`` *and*
    at most ``√tol · |θ_k|`` (its error ``≈ r²/gap`` then about ``tol`` relative),
    or at most ``tol · |θ_k|`` (a multiple eigenvalue: no gap to resolve). Until
    then the bounds are ``inf``. Without this, a warm-start column close to the
    *second* eigenvector converges at once (small ``r_1``) while the random columns'
    Ritz values still sit in the bulk, far below with large residuals that look like
    a wide gap: at the edge of stability block 3 stopped there after 6 products at 4
    of 63 iterates (errors up to 8.4e-3 at ``tol=1e-4``;
    ``benchmarks/results/edge_of_stability_block.md``). Either half of the test alone
    still missed: on a 2- or 5-eigenvalue cluster (``tests/test_block_eigen.py``) or
    on 3 of 210 iterates. ``"LM"`` orders by ``|θ|``."""
    r = np.linalg.norm(Y, axis=0)
    if len(order) <= k:  # the Krylov space holds no (k+1)-th Ritz value yet
        return np.full(k, np.inf)
    t = {"LA": theta[order], "SA": -theta[order], "LM": np.abs(theta[order])}[which]
    r_next, gap_next = r[k], t[k - 1] - t[k]
    size = max(abs(t[k - 1]), 1e-12 * float(np.max(np.abs(theta))))
    resolved = r_next <= tol * size or (r_next <= 0.5 * gap_next and r_next <= np.sqrt(tol) * size)
    if not resolved:
        return np.full(k, np.inf)
    if which == "LM":
        return r[:k]
    rho = float(np.linalg.norm(Y, 2))
    gaps = np.minimum(t[:k] - t[1 : k + 1], np.concatenate([[np.inf], t[: k - 1] - t[1:k]]))
    delta = gaps - rho
    kt = np.where(delta > 0, r[:k] ** 2 / np.maximum(delta, 1e-300), np.inf)
    return np.minimum(r[:k], kt)


def _orthonormal_block(
    W: np.ndarray, Q: np.ndarray, width: int, rng: np.random.Generator, drop: float
) -> tuple[np.ndarray, np.ndarray]:
    """An orthonormal ``[n, width]`` block ``P`` spanning ``W`` ``[n, p]`` (already
    orthogonal to the rows of ``Q``) and the coupling ``R = Pᵀ W`` ``[width, p]``.

    Directions of ``W`` with singular value below ``drop`` are replaced by random
    ones orthogonal to ``Q`` and to the kept ones (a part of the Krylov space became
    invariant: the block keeps its width, so a cluster stays covered)."""
    U, sv, _ = np.linalg.svd(W, full_matrices=False)
    keep = U[:, : int(np.sum(sv > drop))][:, :width]
    P = np.empty((W.shape[0], width))
    P[:, : keep.shape[1]] = keep
    for i in range(keep.shape[1], width):
        z: np.ndarray = rng.standard_normal((W.shape[0],))
        for _ in range(2):
            z -= Q.T @ (Q @ z) + P[:, :i] @ (P[:, :i].T @ z)
        P[:, i] = z / np.linalg.norm(z)
    return P, P.T @ W


def _start_block(n: int, p: int, v0: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """``[n, p]`` orthonormal: the columns of ``v0`` first, Gaussian ones after."""
    X = rng.standard_normal((n, p))
    if v0 is not None:
        X[:, : v0.shape[1]] = v0
    Qs, _ = np.linalg.qr(X)
    return Qs


def _check(k: int, n: int, p: int, v0: np.ndarray | None) -> np.ndarray | None:
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of parameters ({n:,}), got {k}")
    if not isinstance(p, int) or p < k:
        raise ValueError(f"block must be an integer >= k = {k}, got {p!r}")
    if v0 is None:
        return None
    v0 = np.asarray(v0, dtype=np.float64)
    v0 = v0.reshape(-1, 1) if v0.ndim == 1 else v0
    if v0.ndim != 2 or v0.shape[0] != n or not np.all(np.isfinite(v0)):
        raise ValueError(f"v0 must be a finite [{n}] or [{n}, m] array, got shape {v0.shape}")
    if v0.shape[1] >= p and p < n:
        raise ValueError(
            f"v0 has {v0.shape[1]} columns for a block of {p}: at least one column must stay "
            f"random (the guard against a missed eigenvalue); pass block={v0.shape[1] + 1} or more"
        )
    return v0


class BlockResult(NamedTuple):
    """What :func:`block_lanczos` returns."""

    values: np.ndarray
    """``[k]``, sorted as asked (descending for LA/LM, ascending for SA)."""
    vectors: np.ndarray
    """``[n, k]``, orthonormal Ritz vectors."""
    residuals: np.ndarray
    """``[k]``: ``||A y_i − θ_i y_i||``."""
    bounds: np.ndarray
    """``[k]``: the error bounds the stop used (see :func:`block_lanczos`)."""
    matvecs: int
    converged: bool
    block: int


@single_blas_thread
def block_lanczos(
    matmat: MatMat,
    n: int,
    *,
    k: int = 1,
    which: str = "LA",
    tol: float = 1e-6,
    block: int | None = None,
    max_iter: int | None = None,
    v0: np.ndarray | None = None,
    seed: int = 0,
) -> BlockResult:
    """The ``k`` extreme eigenpairs of a symmetric ``A``, by block Lanczos: a :class:`BlockResult`.

    Rayleigh–Ritz on the block Krylov space ``span[V, AV, A²V, …]`` of a start block
    ``V`` ``[n, p]`` (Golub & Underwood 1977; Saad, *Numerical Methods for Large
    Eigenvalue Problems*, 2011, §6.7), ``p`` products per ``matmat`` call, fully
    reorthogonalised. ``V``: the columns of ``v0`` (a warm start), then Gaussian ones
    from ``seed``, at least one. Stops when each wanted Ritz value has an error bound
    ``e_i = min(r_i, r_i² / δ_i) <= tol * |θ_i|`` (residuals ``r_i = ||A y_i − θ_i y_i||``
    from the recurrence, no extra products) and the ``(k+1)``-th Ritz value has
    converged too (:func:`_error_bounds`), on an invariant subspace, or at ``max_iter``.

    What ``converged`` means, precisely:

    - *Certified*: each ``θ_i`` lies within ``r_i`` of an eigenvalue of ``A``,
      distinct ones for distinct ``i`` (Kahan's theorem, Parlett, *The Symmetric
      Eigenvalue Problem*, 1998, Thm. 11.5.1), and ``θ_i <= λ_i`` (interlacing, LA).
    - *With high probability over the random columns, not certified*: no eigenvalue
      was missed (the ``k + 1`` extreme Ritz values approximate the ``k + 1`` extreme
      eigenvalues in order; no Krylov method can certify it). A Gaussian block sees
      every eigenvector and, when at most ``p`` eigenvalues form the cluster at the
      wanted end, converges at a rate set by the gap below the block, not inside the
      cluster (Musco & Musco 2015, "Randomized block Krylov methods for stronger and
      faster approximate singular value decomposition", NeurIPS, Thms. 1 and 13); the
      stop waits for the ``(k+1)``-th Ritz value, so the random columns have resolved
      the top of the spectrum. Then ``|θ_i − λ_i| <= e_i <= tol * |θ_i|`` (Kato–Temple,
      :func:`_error_bounds`). Measured misses: none in 630 edge-of-stability λ_max and
      160 blind-start clusters (``benchmarks/results/edge_of_stability_block.md``).

    Args:
        matmat: ``X -> A X`` for ``X`` ``[n, p]`` float64, ``A`` symmetric.
        n: the dimension.
        k: how many eigenvalues.
        which: ``"LA"`` largest, ``"SA"`` smallest, ``"LM"`` largest magnitude.
        tol: relative accuracy of the eigenvalues (the bound ``e_i``).
        block: the block size ``p >= k`` (default :func:`block_size`, ``k + 2``).
        max_iter: cap on products (``p`` per block, the last block narrower to fit);
            default ``max(300, 20 k)``, at most ``n``.
        v0: warm-start vectors ``[n]`` or ``[n, m]`` with ``m < p``.
        seed: seeds ``numpy.random.default_rng`` for the random columns.

    >>> A = np.diag([3.0, 2.999, 2.998, 1.0, 0.5, 0.1])
    >>> res = block_lanczos(lambda X: A @ X, 6, k=2, tol=1e-10)
    >>> np.round(res.values, 8).tolist(), res.converged, res.block
    ([3.0, 2.999], True, 4)
    """
    which = check_which(which)
    p = block_size(k) if block is None else block
    start = _check(k, n, p, v0)
    p = min(p, n)
    cap = min(n, max_iter if max_iter is not None else max(300, 20 * k))
    rng = np.random.default_rng(seed)
    Q = _start_block(n, p, start, rng).T  # rows: the basis, one block after another
    T = np.zeros((0, 0))  # Qᵀ A Q, grown a block at a time
    b0 = 0  # the row where the newest block begins
    scale = 1e-300
    used = 0
    converged = False
    while True:
        m = Q.shape[0]
        W = matmat(np.ascontiguousarray(Q[b0:].T))
        used += m - b0
        T = _project(Q, W, T, b0)
        theta, S = np.linalg.eigh(T)
        scale = max(scale, float(np.max(np.abs(theta))))
        order = select_ritz(theta, k + 1, which)
        width = min(p, n - m)
        invariant = width == 0 or float(np.linalg.norm(W, 2)) <= 1e-12 * scale
        if invariant:  # the basis spans an invariant subspace: its Ritz pairs are exact
            resid, bounds = np.zeros(k), np.zeros(k)
            converged = True
            break
        P, R = _orthonormal_block(W, Q, width, rng, 1e-12 * scale)
        # A Q = Q T + P R E_lastᵀ: the residual vector of y = Q s is P R s_last.
        Y = R @ S[b0:, order]
        resid = np.linalg.norm(Y[:, :k], axis=0)
        bounds = _error_bounds(theta, Y, order, k, which, tol)
        if np.all(bounds <= tol * np.maximum(np.abs(theta[order[:k]]), 1e-12 * scale)):
            converged = True
            break
        if used >= cap:
            break
        b0 = m
        Q = np.concatenate([Q, P[:, : cap - used].T])  # the last block may be narrower
    sel = order[:k]
    return BlockResult(theta[sel], Q.T @ S[:, sel], resid, bounds, used, converged, p)


def _project(Q: np.ndarray, W: np.ndarray, T: np.ndarray, b0: int) -> np.ndarray:
    """``T = Qᵀ A Q`` ``[m, m]`` grown by the newest block's columns and rows, from
    ``W = A Q[b0:]ᵀ``; ``W`` is left orthogonal to the basis ``Q`` (rows; full
    reorthogonalisation, twice is enough: Parlett 1998, §6.9)."""
    m = Q.shape[0]
    C = np.zeros((m, m - b0))
    for _ in range(2):
        D = Q @ W
        W -= Q.T @ D
        C += D
    out = np.zeros((m, m))
    out[:b0, :b0] = T[:b0, :b0]
    out[:, b0:] = C
    out[b0:, :] = C.T
    out[b0:, b0:] = 0.5 * (C[b0:] + C[b0:].T)
    return out
