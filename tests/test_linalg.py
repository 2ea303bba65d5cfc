"""The curvature algorithms on explicit numpy operators with known spectra."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse.linalg import aslinearoperator

import lossmap.linalg as L
from lossmap import hessian as H

N = 200
ESTIMATORS = {"hutchinson": L.hutchinson, "hutch++": L.hutchpp, "xtrace": L.xtrace}


def _symmetric(eigs: np.ndarray, seed: int) -> np.ndarray:
    """``U diag(eigs) Uᵀ`` with a random orthogonal ``U``, exactly symmetric."""
    U, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigs), len(eigs))))
    A = (U * eigs) @ U.T
    return (A + A.T) / 2


@pytest.fixture(scope="module")
def decaying() -> np.ndarray:
    """200 x 200, eigenvalues 10·0.97^i with every fourth one negated: indefinite."""
    eigs = 10 * 0.97 ** np.arange(N)
    eigs[3::4] *= -1
    return _symmetric(eigs, 0)


@pytest.fixture(scope="module")
def low_rank_plus_noise() -> np.ndarray:
    """Rank 10 (eigenvalues 100 ... 10) plus a small PSD bulk: Hutch++'s home ground."""
    eigs = np.concatenate([np.linspace(100, 10, 10), np.full(N - 10, 0.01)])
    return _symmetric(eigs, 1)


# ----------------------------------------------------------------------- trace
@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_trace_is_exact_when_the_budget_covers_the_space(decaying, method) -> None:
    op = aslinearoperator(decaying)
    t = ESTIMATORS[method](op, matvecs=N, seed=0)
    assert t.value == pytest.approx(np.trace(decaying), rel=1e-12, abs=1e-12)
    assert (t.stderr, t.matvecs, t.method, t.meta) == (0.0, N, method, {"exact": True})


@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_trace_within_its_error_bars_over_seeds(decaying, method) -> None:
    """Unbiased (the mean over 40 seeds within 4 of its standard errors of the truth)
    and the reported standard error the size of the seed-to-seed spread."""
    op = aslinearoperator(decaying)
    true = float(np.trace(decaying))
    runs = [ESTIMATORS[method](op, matvecs=60, seed=s) for s in range(40)]
    est = np.array([t.value for t in runs])
    spread = float(est.std(ddof=1))
    assert abs(est.mean() - true) <= 4 * spread / np.sqrt(len(est))
    reported = float(np.sqrt(np.mean([t.stderr**2 for t in runs])))
    assert 0.5 * spread <= reported <= 2 * spread, (reported, spread)
    z = np.abs(est - true) / np.array([t.stderr for t in runs])
    assert np.mean(z <= 3) >= 0.9


def test_hutchpp_and_xtrace_beat_hutchinson_on_low_rank(low_rank_plus_noise) -> None:
    op = aslinearoperator(low_rank_plus_noise)
    true = float(np.trace(low_rank_plus_noise))

    def rms(method: str) -> float:
        errs = [ESTIMATORS[method](op, matvecs=60, seed=s).value - true for s in range(20)]
        return float(np.sqrt(np.mean(np.square(errs))))

    base = rms("hutchinson")
    assert rms("hutch++") < base / 100
    assert rms("xtrace") < base / 100


@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_trace_takes_an_array_or_an_operator_alike(decaying, method) -> None:
    a = ESTIMATORS[method](decaying, matvecs=30, seed=3)
    b = ESTIMATORS[method](aslinearoperator(decaying), matvecs=30, seed=3)
    assert a.value == pytest.approx(b.value, rel=1e-12)
    assert a.matvecs == b.matvecs == 30


def test_trace_refuses_a_small_budget_and_a_non_operator() -> None:
    A = np.eye(10)
    with pytest.raises(ValueError, match="matvecs must be an integer >= 2, got 1"):
        L.hutchinson(A, matvecs=1)
    for fn in (L.hutchpp, L.xtrace):
        with pytest.raises(ValueError, match="matvecs must be an integer >= 6, got 5"):
            fn(A, matvecs=5)
    with pytest.raises(TypeError, match="LinearOperator or a square array, got list"):
        L.hutchinson([[1.0]], matvecs=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown trace method 'hutch'; choose one of hutchinson"):
        H.trace(A, method="hutch")


# ----------------------------------------------------------------- eigenvalues
@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_lanczos_matches_eigvalsh(decaying, which) -> None:
    ev = np.linalg.eigvalsh(decaying)
    want = {"LA": ev[::-1], "SA": ev, "LM": ev[np.argsort(-np.abs(ev))]}[which][:3]
    tol = 1e-9
    vals, vecs, resid, m, ok = L.lanczos(lambda x: decaying @ x, N, k=3, which=which, tol=tol)
    assert ok and m <= N
    np.testing.assert_allclose(vals, want, rtol=10 * tol)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=0), 1.0, rtol=1e-10)
    true_resid = np.linalg.norm(decaying @ vecs - vecs * vals, axis=0)
    np.testing.assert_allclose(resid, true_resid, rtol=1e-3, atol=1e-12)


def test_lanczos_stops_on_an_invariant_subspace() -> None:
    """A rank-3 operator: three steps span its range and the fourth β is zero."""
    U, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((50, 3)))
    A = U @ np.diag([3.0, -1.0, 2.0]) @ U.T
    vals, _, _, m, ok = L.lanczos(lambda x: A @ x, 50, k=2, which="LM", tol=1e-12)
    assert ok and m <= 4
    np.testing.assert_allclose(vals, [3.0, 2.0], rtol=1e-12)


def test_block_lanczos_stops_on_an_invariant_subspace() -> None:
    """A rank-3 operator: the first block of 3 and its image span the range; the next
    residual block is zero, and the Ritz values are exact."""
    U, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((50, 3)))
    A = U @ np.diag([3.0, -1.0, 2.0]) @ U.T
    res = L.block_lanczos(lambda X: A @ X, 50, k=2, which="LM", tol=1e-12, block=3)
    assert res.converged and res.matvecs <= 6
    np.testing.assert_allclose(res.values, [3.0, 2.0], rtol=1e-12)


def test_block_lanczos_caps_its_products() -> None:
    """``max_iter`` caps the products (the last block narrower to fit); not converged."""
    A = np.diag(np.linspace(1.0, 1.0001, 300))
    res = L.block_lanczos(lambda X: A @ X, 300, k=1, tol=1e-14, max_iter=10)
    assert res.matvecs == 10 and not res.converged
    assert 1.0 <= res.values[0] <= 1.0001


def test_power_iteration_matches_eigvalsh() -> None:
    """Well separated top eigenvalues (ratio 1/2): power iteration converges fast."""
    eigs = 8 * 0.5 ** np.arange(30)
    eigs[1] *= -1  # the second largest in magnitude is negative
    A = _symmetric(eigs, 3)
    vals, vecs, resid, m, ok = L.power_iteration(lambda x: A @ x, 30, k=2, tol=1e-12, seed=1)
    assert ok and m <= 200
    np.testing.assert_allclose(vals, [8.0, -4.0], rtol=1e-8)
    np.testing.assert_allclose(np.abs(vecs.T @ vecs), np.eye(2), atol=1e-5)
    assert np.all(np.isnan(resid))


def test_hessian_wrappers_on_an_operator_equal_the_linalg_functions(decaying) -> None:
    op = aslinearoperator(decaying)
    e = H.eigenvalues(op, 2, seed=4, method="lanczos")
    vals, _, resid, m, ok = L.lanczos(lambda x: decaying @ x, N, k=2, seed=4)
    assert e.values.tobytes() == vals.tobytes() and e.residuals.tobytes() == resid.tobytes()
    assert e.matvecs == m and e.converged == ok
    b = H.eigenvalues(op, 2, seed=4)  # the default: block Lanczos, block k + 2
    res = L.block_lanczos(lambda X: decaying @ X, N, k=2, seed=4)
    assert b.values.tobytes() == res.values.tobytes()
    assert b.residuals.tobytes() == res.residuals.tobytes()
    assert b.matvecs == res.matvecs and b.converged == res.converged
    assert b.meta["method"] == "block" and b.meta["block"] == res.block == 4
    p = H.power_iteration(op, 1, seed=4)
    pv, *_ = L.power_iteration(lambda x: decaying @ x, N, seed=4)
    assert p.values.tobytes() == pv.tobytes()
    assert H.trace(op, method="xtrace", matvecs=40, seed=4) == L.xtrace(op, matvecs=40, seed=4)


# ------------------------------------------------------------ Lanczos and SLQ
def test_lanczos_step_builds_a_tridiagonal_with_the_same_spectrum() -> None:
    n = 12
    A = _symmetric(np.linspace(-3, 5, n), 4)
    Q = np.empty((n + 1, n))
    q = np.random.default_rng(5).standard_normal(n)
    Q[0] = q / np.linalg.norm(q)
    alpha, beta = [], []
    for j in range(n):
        a, b, w = L.lanczos_step(lambda x: A @ x, Q, j, beta[-1] if j > 0 else 0.0)
        alpha.append(a)
        beta.append(b)
        if j < n - 1:
            Q[j + 1] = w / b
    assert beta[-1] < 1e-12 * 5  # n steps exhaust the space
    np.testing.assert_allclose(Q[:n] @ Q[:n].T, np.eye(n), atol=1e-13)
    T = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    np.testing.assert_allclose(Q[:n] @ A @ Q[:n].T, T, atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(T), np.linalg.eigvalsh(A), atol=1e-12)
    theta, _ = L.tridiagonal_eigh(alpha, beta)
    np.testing.assert_allclose(theta, np.linalg.eigvalsh(A), atol=1e-12)


def test_lanczos_quadrature_integrates_polynomials_exactly() -> None:
    """m Gauss nodes integrate polynomials up to degree 2m - 1: v̂ᵀ A^p v̂ for p < 2m."""
    n, m = 60, 6
    A = _symmetric(np.linspace(-1, 2, n), 6)
    v = np.random.default_rng(7).standard_normal(n)
    nodes, w, used = L.lanczos_quadrature(lambda x: A @ x, v, steps=m, deflate=False)
    assert used == m and w.sum() == pytest.approx(1.0, rel=1e-12)
    u = v / np.linalg.norm(v)
    for p in range(2 * m):
        exact = u @ np.linalg.matrix_power(A, p) @ u
        assert np.sum(w * nodes**p) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_lanczos_quadrature_deflation_gives_converged_outliers_weight_one_over_n() -> None:
    n = 100
    eigs = np.concatenate([[50.0, 30.0], np.linspace(-1, 1, n - 2)])
    A = _symmetric(eigs, 8)
    v = np.random.default_rng(9).standard_normal(n)
    nodes, w, _ = L.lanczos_quadrature(lambda x: A @ x, v, steps=30, deflate=True)
    plain_nodes, plain_w, _ = L.lanczos_quadrature(lambda x: A @ x, v, steps=30, deflate=False)
    assert nodes.tobytes() == plain_nodes.tobytes()
    top = np.argsort(nodes)[-2:]
    np.testing.assert_allclose(nodes[top], [30.0, 50.0], rtol=1e-12)
    assert np.all(w[top] == 1.0 / n)
    assert w.sum() == pytest.approx(1.0, rel=1e-12) and plain_w.sum() == pytest.approx(1.0)
    assert not np.allclose(plain_w[top], 1.0 / n)


def test_lanczos_quadrature_pads_after_an_early_stop() -> None:
    """Rank 2: the Krylov space is exhausted after 2 steps (β = 0); 10 slots, 8 padded."""
    U, _ = np.linalg.qr(np.random.default_rng(10).standard_normal((20, 2)))
    A = U @ np.diag([2.0, -1.0]) @ U.T
    nodes, w, used = L.lanczos_quadrature(lambda x: A @ x, np.ones(20), steps=10)
    assert used == 3  # the third step finds β ≈ 0 and stops
    assert w[3:].tolist() == [0.0] * 7 and np.all(nodes[3:] == nodes[0])
    assert w.sum() == pytest.approx(1.0, rel=1e-12)


# ------------------------------------------------------------------- structure
def test_hessian_reexports_the_linalg_names() -> None:
    assert H.lanczos is L.lanczos
    assert H.Trace is L.Trace
    assert H.single_blas_thread is L.single_blas_thread
    assert sorted(L.__all__) == sorted(set(L.__all__))
    for name in L.__all__:
        assert getattr(L, name) is not None


def test_single_blas_thread_nests_and_restores() -> None:
    from threadpoolctl import threadpool_info

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads()
    seen = []

    @L.single_blas_thread
    def inner() -> None:
        seen.append(blas_threads())

    @L.single_blas_thread
    def outer() -> None:
        seen.append(blas_threads())
        inner()

    outer()
    assert all(s <= {1} for s in seen) and len(seen) == 2
    assert blas_threads() == before


def test_linalg_imports_nothing_from_lossmap_but_checks() -> None:
    """The low layer stands alone: numpy, scipy, torch, threadpoolctl and the standard
    library; from lossmap only its own modules and ``lossmap._checks``."""
    allowed_third_party = {"numpy", "scipy", "torch", "threadpoolctl"}
    root = Path(L.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "lossmap":
                    assert name.startswith("lossmap.linalg") or name == "lossmap._checks", (
                        f"{path.name} imports {name}"
                    )
                else:
                    assert top in allowed_third_party or top in sys.stdlib_module_names, (
                        f"{path.name} imports {name}"
                    )


def test_lanczos_holds_the_basis_it_uses_not_max_iter_rows() -> None:
    """An 11.5 M-parameter model needed 26 GiB for a preallocated 301-row basis; the
    basis now grows with the steps taken (numpy's allocations, seen by tracemalloc)."""
    import tracemalloc

    from lossmap.linalg import lanczos

    n = 200_000
    d = np.linspace(0.0, 1.0, n)
    d[-1] = 10.0  # a well-separated top eigenvalue: a few steps
    tracemalloc.start()
    try:
        vals, _, _, steps, ok = lanczos(lambda x: d * x, n, k=1, tol=1e-8, max_iter=300)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ok and abs(vals[0] - 10.0) < 1e-6 and steps < 32
    assert peak < 80 * n * 8  # 301 rows would be 301 * n * 8 bytes
