"""Curvature against ground truth: closed forms and float64 dense Hessians."""

import numpy as np
import pytest
import torch
from conftest import assert_unchanged, state_of
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lossmap as lm
from lossmap import hessian as H
from lossmap import vectors as V


@pytest.fixture(scope="module")
def digits_small() -> tuple[lm.Landscape, np.ndarray]:
    """A 64-24-10 tanh MLP (1,810 parameters) on 600 digits, float64, with its exact spectrum."""
    data = lm.examples.digits_data()
    x, y = data["train"]
    x, y = x[:600].double(), y[:600]
    model = lm.examples.make_mlp([64, 24, 10], activation="tanh", seed=0).double()
    lm.examples.train(model, nn.CrossEntropyLoss(), x, y, epochs=15, batch_size=64, lr=1e-2)
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    return land, np.linalg.eigvalsh(H.dense(land).numpy())


def test_linear_regression_hessian_is_2_xtx_over_n() -> None:
    land = lm.examples.linear_regression()
    x, _ = lm.examples.linear_regression_data()
    a = np.hstack([x.numpy(), np.ones((200, 1))])
    expected = 2 * a.T @ a / 200
    np.testing.assert_allclose(H.dense(land).numpy(), expected, rtol=1e-12)
    e = H.eigenvalues(land, 2)
    np.testing.assert_allclose(e.values, np.linalg.eigvalsh(expected)[::-1], rtol=1e-8)


def test_logistic_regression_hessian_is_weighted_covariance() -> None:
    land = lm.examples.logistic_regression()
    x, _ = lm.examples.logistic_regression_data()
    theta = land.point()
    a = np.hstack([x.numpy(), np.ones((len(x), 1))])
    z = a @ np.concatenate([theta["weight"].numpy()[0], theta["bias"].numpy()])
    p = 1 / (1 + np.exp(-z))
    expected = (a * (p * (1 - p))[:, None]).T @ a / len(x)
    np.testing.assert_allclose(H.dense(land).numpy(), expected, rtol=1e-10, atol=1e-14)
    top = H.eigenvalues(land, 1)
    assert top.values[0] == pytest.approx(np.linalg.eigvalsh(expected)[-1], rel=1e-8)


def test_hvp_matches_dense_with_uneven_batches(digits_small) -> None:
    land, _ = digits_small
    Hd = H.dense(land)
    x, y = land.datasets["train"].batches[0]
    loader = DataLoader(TensorDataset(x, y), batch_size=256)  # 256, 256, 88
    for cache in (None, 0):  # held on the device (graph reused) and streamed
        uneven = lm.Landscape(land.model, nn.CrossEntropyLoss(), data=loader, cache_bytes=cache)
        op = H.HessianOperator(uneven)
        v = np.random.default_rng(0).standard_normal(op.shape[0])
        np.testing.assert_allclose(op @ v, Hd.numpy() @ v, rtol=1e-6, atol=1e-12)
        assert op.matvecs == 1


@pytest.mark.parametrize(("which", "k"), [("LA", 1), ("LA", 5), ("SA", 5), ("LM", 3)])
def test_lanczos_matches_eigvalsh(digits_small, which, k) -> None:
    land, ev = digits_small
    e = H.eigenvalues(land, k, which=which, tol=1e-9)
    ref = {"LA": ev[::-1][:k], "SA": ev[:k], "LM": ev[np.argsort(-np.abs(ev))][:k]}[which]
    np.testing.assert_allclose(e.values, ref, rtol=1e-6)
    assert e.converged and e.matvecs > 0
    for lam, v in zip(e.values, e.vectors, strict=True):  # they are eigenvectors
        hv = H.HessianOperator(land).hvp_dict(v)
        assert float(V.norm(V.add(hv, v, alpha=-lam))) <= 1e-4 * abs(ev).max()
    if which == "SA":
        assert e.values[0] < 0  # a trained net still has negative curvature directions


def test_lanczos_warm_start(digits_small) -> None:
    """A start on the top eigenvector gives it to 1e-7, in no more products than a cold
    start: the stop still waits for the random columns to resolve the next Ritz value
    (the check that no larger eigenvalue was missed, issue #12), so the warm column
    saves nothing here at tol=1e-8 (along a trajectory it does: test_block_eigen). A
    dict and its flat array are the same start; a start that is zero, non-finite or
    mis-shaped is refused."""
    land, ev = digits_small
    cold = H.eigenvalues(land, 1, tol=1e-8)
    warm = H.eigenvalues(land, 1, tol=1e-8, v0=cold.vectors[0])
    np.testing.assert_allclose(warm.values, ev[-1], rtol=1e-7)
    assert warm.converged and warm.matvecs <= cold.matvecs
    flat = V.flatten(cold.vectors[0]).numpy()
    again = H.eigenvalues(land, 1, tol=1e-8, v0=flat)
    assert again.values[0] == warm.values[0] and again.matvecs == warm.matvecs
    n = land.num_parameters
    for bad in (np.zeros(n), np.full(n, np.nan), np.ones(n + 1)):
        with pytest.raises(ValueError, match="v0 must be a finite, non-zero vector"):
            H.eigenvalues(land, 1, v0=bad)
    with pytest.raises(ValueError, match="v0 does not match"):
        H.eigenvalues(land, 1, v0={"nope": torch.zeros(3)})


def test_power_iteration_finds_the_top(digits_small) -> None:
    land, ev = digits_small
    p = H.power_iteration(land, 2, max_iter=500, tol=1e-9)
    np.testing.assert_allclose(p.values, ev[::-1][:2], rtol=1e-3)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_trace_estimators_within_three_standard_errors(digits_small, method) -> None:
    land, ev = digits_small
    exact = ev.sum()
    op = H.HessianOperator(land)
    hits = 0
    for seed in range(8):
        t = H.trace(op, method=method, matvecs=30, seed=seed)
        assert t.matvecs <= 30
        hits += abs(t.value - exact) <= 3 * t.stderr
    assert hits >= 7  # a 3-sigma interval misses rarely


def test_trace_exact_when_sketch_covers_the_matrix() -> None:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    a = q @ np.diag(np.arange(1.0, 13.0)) @ q.T
    for method in ("hutch++", "xtrace"):
        t = H.trace(a, method=method, matvecs=60)
        assert t.value == pytest.approx(np.trace(a), rel=1e-10)


def test_spectral_density_moments_and_mass(digits_small) -> None:
    land, ev = digits_small
    sd = H.spectral_density(land, probes=8, steps=40, seed=0)
    assert np.trapezoid(sd.density, sd.grid) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(sd.weights.sum(axis=1), 1.0, rtol=1e-10)
    m1, m2 = sd.moments(2)
    # Each probe's moments are unbiased quadratic-form estimates; 8 probes: a few % error.
    assert m1 == pytest.approx(ev.mean(), rel=0.15)
    assert m2 == pytest.approx((ev**2).mean(), rel=0.3)
    assert sd.nodes.max() == pytest.approx(ev.max(), rel=1e-6)  # Lanczos finds the edge
    assert sd.matvecs == 8 * 40


def test_model_unchanged_and_bad_input(digits_small) -> None:
    land, _ = digits_small
    before = state_of(land.model)
    H.eigenvalues(land, 2)
    H.trace(land, matvecs=12)
    H.spectral_density(land, steps=10)
    assert_unchanged(land.model, before)
    n = land.num_parameters
    with pytest.raises(
        ValueError, match=f"k must be between 1 and the number of parameters \\({n:,}\\)"
    ):
        H.eigenvalues(land, n + 1)
    with pytest.raises(ValueError, match="which must be"):
        H.eigenvalues(land, 1, which="largest")
    with pytest.raises(ValueError, match="unknown trace method"):
        H.trace(land, method="hutch")
    with pytest.raises(ValueError, match="limited to 100 parameters"):
        H.dense(land, limit=100)
    bad = V.scale(land.point(), float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        H.eigenvalues(land, 1, point=bad)


class _OnceDifferentiableSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


@pytest.mark.parametrize("cache", [None, 0])  # held (graph reused) and streamed per batch
def test_linear_loss_has_zero_hessian_and_once_differentiable_is_refused(cache) -> None:
    x = torch.randn(20, 3, dtype=torch.float64)
    lin = nn.Linear(3, 1).double()
    data = [(x[:10],), (x[10:],)]
    land = lm.Landscape(lin, loss=lambda m, b: m(b[0]).mean(), data=data, cache_bytes=cache)
    assert not H.dense(land).any()  # a linear loss: the Hessian is exactly zero
    land = lm.Landscape(
        lin,
        loss=lambda m, b: _OnceDifferentiableSquare.apply(m(b[0])).mean(),
        data=data,
        cache_bytes=cache,
    )
    with pytest.raises(ValueError, match="not twice differentiable by autograd"):
        H.eigenvalues(land, 1)


def test_quadratic_sharpness_is_exact_on_the_mse_bowl() -> None:
    from lossmap import sharpness

    land = lm.examples.linear_regression()
    lam = np.linalg.eigvalsh(H.dense(land).numpy())[-1]
    q = sharpness.quadratic(land, 0.3)
    assert q.lambda_max == pytest.approx(lam, rel=1e-10)
    assert q.estimate == pytest.approx(0.5 * 0.09 * lam, rel=1e-10)
    assert q.measured == pytest.approx(q.estimate, rel=1e-9)  # a quadratic loss
    with pytest.raises(ValueError, match="eps must be positive"):
        sharpness.quadratic(land, 0.0)


def test_hessian_directions_curve_like_their_eigenvalues(digits_small) -> None:
    land, ev = digits_small
    d1, d2 = lm.directions.hessian(land, 2)
    assert d1.meta["eigenvalue"] == pytest.approx(ev[-1], rel=1e-6)
    assert abs(V.cosine(d1, d2)) < 1e-8
    h = 1e-3
    c = lm.line(land, d1, span=(-h, h), steps=3)
    second = (c["loss"][0] - 2 * c["loss"][1] + c["loss"][2]) / h**2
    assert second == pytest.approx(ev[-1], rel=1e-3)
