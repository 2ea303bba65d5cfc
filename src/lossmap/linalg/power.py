"""Power iteration with deflation over a symmetric mat-vec."""

from __future__ import annotations

import numpy as np

from lossmap.linalg._blas import single_blas_thread
from lossmap.linalg._operator import MatVec

__all__ = ["power_iteration"]


@single_blas_thread
def power_iteration(
    matvec: MatVec,
    n: int,
    *,
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, bool]:
    """The ``k`` largest-magnitude eigenpairs by power iteration with deflation.

    The textbook method used by PyHessian (Yao, Gholami, Keutzer & Mahoney 2020,
    "PyHessian: Neural Networks Through the Lens of the Hessian"): from a Gaussian
    start, iterate ``v <- P A P v / ||·||`` with ``P`` the projector orthogonal to the
    eigenvectors already found, and stop when the Rayleigh quotient ``vᵀ P A P v``
    changes by at most ``tol`` relative (or after ``max_iter`` mat-vecs). Converges
    like ``(λ_{i+1} / λ_i)^t``: slowly when eigenvalues are close; prefer
    :func:`~lossmap.linalg.lanczos`.

    Args:
        matvec: ``x -> A x`` for a symmetric ``A``.
        n: the dimension.
        k: how many eigenpairs, one after the other.
        max_iter: cap on mat-vecs per eigenpair.
        tol: relative change of the Rayleigh quotient that counts as converged.
        seed: seeds ``numpy.random.default_rng`` for the start vectors.

    Returns:
        ``(values [k], vectors [n, k], residuals [k], matvecs, converged)``; the
        residuals are not computed (NaN) and ``converged`` is true when every
        eigenpair met ``tol``.

    >>> A = np.diag([4.0, -2.0, 1.0])
    >>> vals, vecs, _, m, ok = power_iteration(lambda x: A @ x, 3, k=2, tol=1e-10)
    >>> np.round(vals, 6).tolist(), ok
    ([4.0, -2.0], True)
    """
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of parameters ({n:,}), got {k!r}")
    rng = np.random.default_rng(seed)
    found: list[np.ndarray] = []
    vals: list[float] = []
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
            hv = matvec(v)
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
        ok = ok and conv
    vecs = np.stack(found, axis=1)
    return np.array(vals), vecs, np.full(k, float("nan")), calls, ok
