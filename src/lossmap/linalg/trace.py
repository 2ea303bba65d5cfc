"""Stochastic trace estimators over a symmetric operator: Hutchinson, Hutch++, XTrace.

Each takes a ``scipy.sparse.linalg.LinearOperator`` (or a square array), a budget of
``matvecs`` products and a ``seed``, and returns a :class:`Trace` with a standard
error. A budget that covers the whole space (``matvecs >= n``) buys the exact trace
instead, from the ``n`` unit vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.stats
from scipy.sparse.linalg import LinearOperator

from lossmap.linalg._blas import single_blas_thread
from lossmap.linalg._operator import MatVec, as_matvec

__all__ = ["Trace", "hutchinson", "hutchpp", "xtrace"]


@dataclass
class Trace:
    """A trace estimate with its standard error and cost.

    ``dof`` is the degrees of freedom of the Student-t that ``stderr`` is read against
    (the number of exchangeable terms it comes from, less one); ``inf`` for an exact
    trace.
    """

    value: float
    stderr: float
    matvecs: int
    method: str
    meta: dict[str, Any] = field(default_factory=dict)
    dof: float = math.inf

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """The two-sided ``level`` confidence interval ``value ± t_{dof} · stderr``.

        A Student-t quantile with ``dof`` degrees of freedom: the standard error comes
        from few terms at small budgets (10 Hutchinson probes in Hutch++ at 30 mat-vecs),
        where ``± 2·stderr`` covers about 92 %, not 95 %.

        >>> lo, hi = Trace(10.0, 1.0, 30, "hutchinson", dof=29).ci(0.95)
        >>> round(lo, 4), round(hi, 4)
        (7.9548, 12.0452)
        """
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), e.g. 0.95, got {level!r}")
        if self.stderr == 0.0:
            return (self.value, self.value)
        q = float(scipy.stats.t.ppf(0.5 + level / 2, self.dof))
        return (self.value - q * self.stderr, self.value + q * self.stderr)


def _rademacher(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """``[n, m]`` independent ±1 entries."""
    return rng.integers(0, 2, size=(n, m)).astype(np.float64) * 2 - 1


def _apply(mv: MatVec, X: np.ndarray) -> np.ndarray:
    """``A X`` column by column."""
    return np.stack([mv(X[:, i]) for i in range(X.shape[1])], axis=1)


def _prepare(
    op: LinearOperator | np.ndarray, matvecs: int, seed: int, *, least: int
) -> tuple[MatVec, int, np.random.Generator]:
    """The budget checked (at least ``least``), the mat-vec, ``n`` and the generator."""
    if not isinstance(matvecs, int) or matvecs < least:
        raise ValueError(f"matvecs must be an integer >= {least}, got {matvecs!r}")
    mv, n = as_matvec(op)
    return mv, n, np.random.default_rng(seed)


def _exact(mv: MatVec, n: int, method: str) -> Trace:
    """``Σ_i e_iᵀ A e_i`` from ``n`` products: cheaper than any estimate once the
    budget covers the whole space."""
    diag = [mv(np.eye(1, n, i)[0])[i] for i in range(n)]
    return Trace(float(np.sum(diag)), 0.0, n, method, {"exact": True})


@single_blas_thread
def hutchinson(op: LinearOperator | np.ndarray, *, matvecs: int = 90, seed: int = 0) -> Trace:
    """Hutchinson's estimate of ``tr(A)`` from ``m = matvecs`` Rademacher probes.

    ``tr(A) ≈ (1/m) Σ_j z_jᵀ A z_j`` with independent ±1 vectors ``z_j``, unbiased with
    variance ``2 (||A||_F² - Σ_i A_ii²) / m``; the standard error is the sample standard
    deviation over ``√m``. Hutchinson 1989, "A stochastic estimator of the trace of the
    influence matrix for Laplacian smoothing splines".

    Args:
        op: a symmetric ``LinearOperator`` or square array ``[n, n]``.
        matvecs: the budget (at least 2).
        seed: seeds ``numpy.random.default_rng`` for the probes.

    Returns:
        :class:`Trace` (``method="hutchinson"``); exact when ``matvecs >= n``.

    >>> A = np.diag(np.arange(1.0, 101.0))
    >>> t = hutchinson(A, matvecs=20, seed=0)
    >>> t.value == 5050.0, t.stderr == 0.0, t.matvecs   # a diagonal A: every probe exact
    (True, True, 20)
    """
    mv, n, rng = _prepare(op, matvecs, seed, least=2)
    if matvecs >= n:
        return _exact(mv, n, "hutchinson")
    Z = _rademacher(rng, n, matvecs)
    est = np.einsum("ij,ij->j", Z, _apply(mv, Z))
    se = float(est.std(ddof=1) / math.sqrt(len(est)))
    return Trace(float(est.mean()), se, matvecs, "hutchinson", dof=matvecs - 1)


@single_blas_thread
def hutchpp(op: LinearOperator | np.ndarray, *, matvecs: int = 90, seed: int = 0) -> Trace:
    """Hutch++: the trace of a sketched top subspace exactly, Hutchinson on the rest.

    With ``s = ⌊m/3⌋`` and ``g = m - 2s``: ``Q = qr(A S)`` for a Rademacher ``S``
    ``[n, s]``, then ``tr(A) ≈ tr(Qᵀ A Q) + (1/g) Σ_j z_jᵀ A z_j`` over Rademacher
    ``z_j`` projected onto ``Q``'s complement, ``z_j <- (I - QQᵀ) z_j``. Relative error
    ``O(1/m)`` for positive semi-definite ``A`` instead of Hutchinson's ``O(1/√m)``.
    The standard error is the Hutchinson part's (sample std of the ``g`` quadratic forms
    over ``√g``); ``ci`` reads it against a Student-t with ``g - 1`` degrees of freedom.
    Measured over 500 seeds (``benchmarks/results/coverage.md``): at 30 mat-vecs
    (``g = 10``) ``± 2·stderr`` covers 90.8–92.6 %, as t₉ predicts, and ``ci(0.95)``
    93.8–95.4 %; at 90 and 300, 94–96 %. Meyer, Musco, Musco & Woodruff 2021,
    "Hutch++: Optimal Stochastic Trace Estimation".

    Args:
        op: a symmetric ``LinearOperator`` or square array ``[n, n]``.
        matvecs: the budget (at least 6).
        seed: seeds ``numpy.random.default_rng`` for the probes.

    Returns:
        :class:`Trace` (``method="hutch++"``, ``meta`` with ``sketch`` and ``probes``);
        exact when ``matvecs >= n``.

    >>> rng = np.random.default_rng(0)
    >>> U = np.linalg.qr(rng.standard_normal((200, 5)))[0]
    >>> A = U @ np.diag([50.0, 40.0, 30.0, 20.0, 10.0]) @ U.T   # rank 5, trace 150
    >>> t = hutchpp(A, matvecs=30, seed=0)
    >>> round(t.value, 6), t.matvecs
    (150.0, 30)
    """
    mv, n, rng = _prepare(op, matvecs, seed, least=6)
    if matvecs >= n:
        return _exact(mv, n, "hutch++")
    s = matvecs // 3
    g = matvecs - 2 * s
    S = _rademacher(rng, n, s)
    Qm, _ = np.linalg.qr(_apply(mv, S))
    HQ = _apply(mv, Qm)
    top = float(np.trace(Qm.T @ HQ))
    G = _rademacher(rng, n, g)
    G = G - Qm @ (Qm.T @ G)
    est = np.einsum("ij,ij->j", G, _apply(mv, G))
    se = float(est.std(ddof=1) / math.sqrt(g)) if g > 1 else float("nan")
    meta = {"sketch": s, "probes": g}
    return Trace(top + float(est.mean()), se, 2 * s + g, "hutch++", meta, dof=g - 1)


@single_blas_thread
def xtrace(op: LinearOperator | np.ndarray, *, matvecs: int = 90, seed: int = 0) -> Trace:
    """XTrace: Hutch++ made exchangeable, every probe used for both the sketch and the
    residual by leaving it out of the sketch in turn.

    With ``m = ⌊matvecs/2⌋`` Rademacher probes ``Ω`` and ``Y = AΩ = QR``: for each ``i``
    the basis without probe ``i`` is ``Q (I - s_i s_iᵀ)`` with ``s_i`` the normalised
    ``i``-th column of ``R^{-T}`` (orthogonal to ``R e_j`` for all ``j != i``), and

        ``t_i = tr((I - s_i s_iᵀ) QᵀAQ) + z_iᵀ A z_i``,
        ``z_i = ω_i - Q (I - s_i s_iᵀ) Qᵀ ω_i``,

    where ``A z_i = y_i - AQ (I - s_i s_iᵀ) Qᵀ ω_i`` costs no new product. The estimate
    is the mean of the ``t_i``. Epperly, Tropp & Webber 2024, "XTrace: Making the most
    of every sample in stochastic trace estimation" (SIAM J. Matrix Anal. Appl.).
    Rademacher probes have norm exactly ``√n``: the paper's improved (normalised)
    probes come free.

    **Standard error: a jackknife over whole probes**, not the paper's. The paper's
    error estimate (the authors' ``xtrace.m``: ``std(t_i)/√m``, kept here as
    ``meta["stderr_paper"]``) treats the ``t_i`` as independent, but they share all
    other probes' sketch; measured over 500 seeds (``benchmarks/results/coverage.md``)
    ``± 2·stderr_paper`` covers the truth only 78–88 % of the time on decaying
    spectra, about 1.45× too narrow. ``stderr`` here is the delete-one jackknife
    (Efron & Stein 1981; for randomized matrix computations Epperly & Tropp 2024, "Efficient
    error and variance estimation for randomized matrix computations", SIAM J. Sci.
    Comput.): ``T_(k)`` is XTrace run on the ``m - 1`` probes without probe ``k`` (out
    of the sketch *and* the residual), ``stderr² = (m-1)/m Σ_k (T_(k) - mean T_(·))²``.
    Every ``T_(k)`` follows from the ``m × m`` quantities already at hand (``QᵀAQ``,
    ``QᵀΩ``, ``R``, ``diag(ΩᵀAΩ)``) through a 2 × 2 solve per pair ``(i, k)``: no new
    product, ``O(m²)`` extra work after ``O(m³)`` set-up. The jackknife variance is
    biased upwards (Efron–Stein), so this error bar is conservative: ``± 2·stderr``
    covered 99.2–100 % in the same study (1·stderr: 84–99.6 %). We keep the conservative
    bar over the paper's, which is too narrow; ``ci`` reads it against a Student-t
    with ``m - 1`` degrees of freedom.

    Args:
        op: a symmetric ``LinearOperator`` or square array ``[n, n]``.
        matvecs: the budget (at least 6); an odd one leaves one product unspent.
        seed: seeds ``numpy.random.default_rng`` for the probes.

    Returns:
        :class:`Trace` (``method="xtrace"``, ``meta`` with ``probes`` and
        ``stderr_paper``); exact when ``matvecs >= n``.

    >>> from scipy.sparse.linalg import aslinearoperator
    >>> U = np.linalg.qr(np.random.default_rng(1).standard_normal((100, 3)))[0]
    >>> A = aslinearoperator(U @ np.diag([3.0, 2.0, 1.0]) @ U.T)   # rank 3, trace 6
    >>> t = xtrace(A, matvecs=21, seed=0)
    >>> round(t.value, 6), t.matvecs, t.meta["probes"], t.stderr < 1e-9
    (6.0, 20, 10, True)
    """
    mv, n, rng = _prepare(op, matvecs, seed, least=6)
    if matvecs >= n:
        return _exact(mv, n, "xtrace")
    m = matvecs // 2
    Om = _rademacher(rng, n, m)
    Y = _apply(mv, Om)
    Qm, R = np.linalg.qr(Y)
    Z = _apply(mv, Qm)
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
    paper = float(ests.std(ddof=1) / math.sqrt(m))
    d = np.einsum("ij,ij->j", Om, Y)
    se = _xtrace_jackknife(H, W, R, Sinv, Sn, d)
    meta = {"probes": m, "stderr_paper": paper, "stderr_method": "jackknife"}
    return Trace(float(ests.mean()), se, 2 * m, "xtrace", meta, dof=m - 1)


def _xtrace_jackknife(
    H: np.ndarray, W: np.ndarray, R: np.ndarray, Sinv: np.ndarray, Sn: np.ndarray, d: np.ndarray
) -> float:
    """The delete-one-probe jackknife standard error of XTrace, from ``[m, m]`` pieces.

    Without probes ``i`` and ``k`` the sketch spans ``Q P`` with ``P = I - C G⁻¹ Cᵀ``,
    ``C = [s_i, s_k]`` (the normalised columns ``i``, ``k`` of ``R^{-T}``, orthogonal to
    every other ``R e_j``), ``G = CᵀC``. XTrace's term for probe ``i`` with probe ``k``
    gone is then

        ``t_ik = tr(H) - tr(G⁻¹ CᵀHC) + ω_iᵀAω_i - 2 r_iᵀ P w_i + w_iᵀ P H P w_i``

    (``H = QᵀAQ``, ``w_i = Qᵀω_i``, ``r_i = QᵀAω_i = R e_i``, ``C ᵀr_i = (1/|R^{-T} e_i|, 0)``),
    and ``T_(k) = mean_{i≠k} t_ik`` is XTrace on the other ``m - 1`` probes.
    ``H``, ``W = QᵀΩ``, ``R``: ``[m, m]``; ``Sinv = R^{-T}``, ``Sn`` its normalised columns;
    ``d = diag(ΩᵀAΩ)`` ``[m]``.
    """
    m = H.shape[0]
    c = Sn.T @ Sn  # [i, k]: s_i · s_k
    M = Sn.T @ H @ Sn
    SW = Sn.T @ W  # [j, i]: s_j · w_i
    SHW = Sn.T @ (H @ W)  # [j, i]: s_j H w_i
    rho = 1.0 / np.linalg.norm(Sinv, axis=0)  # s_i · r_i
    rw = np.einsum("ij,ij->j", R, W)
    wHw = np.einsum("ij,ij->j", W, H @ W)
    mii, mkk = np.diag(M)[:, None], np.diag(M)[None, :]
    a1, a2 = np.diag(SW)[:, None], SW.T  # Cᵀ w_i = (a1[i], a2[i, k])
    b1, b2 = np.diag(SHW)[:, None], SHW.T  # Cᵀ H w_i
    det = 1.0 - c**2
    np.fill_diagonal(det, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        g1, g2 = (a1 - c * a2) / det, (a2 - c * a1) / det  # G⁻¹ Cᵀ w_i
        tr_gk = (mii + mkk - 2 * c * M) / det
        r_pw = rw[:, None] - rho[:, None] * g1
        w_phpw = (
            wHw[:, None]
            - 2 * (b1 * g1 + b2 * g2)
            + g1 * (mii * g1 + M * g2)
            + g2 * (M * g1 + mkk * g2)
        )
        t = np.trace(H) - tr_gk + d[:, None] - 2 * r_pw + w_phpw
    np.fill_diagonal(t, 0.0)
    loo = t.sum(axis=0) / (m - 1)
    if not np.all(np.isfinite(loo)):  # a rank-deficient sketch: every t_i is exact
        return 0.0
    return float(math.sqrt((m - 1) / m * np.sum((loo - loo.mean()) ** 2)))
