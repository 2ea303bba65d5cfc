"""Sharpness against ground truth: quadratics with known spectra, and rescaling invariance."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import assert_unchanged, state_of
from scipy.stats import norm as normal
from torch import nn

import lossmap as lm
from lossmap import sharpness as S
from lossmap.examples import quadratic as quadratic_landscape
from lossmap.hessian import dense

N = 30


def _rotation(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


@pytest.fixture(scope="module")
def spectrum() -> np.ndarray:
    # λ_max = 5 well above the bulk (0.1 .. 2): the spectrum is known exactly.
    return np.concatenate([np.linspace(0.1, 2.0, N - 1), [5.0]])


@pytest.fixture(scope="module")
def dense_quadratic(spectrum: np.ndarray) -> tuple[lm.Landscape, np.ndarray, np.ndarray]:
    q = _rotation(N, 0)
    h = q @ np.diag(spectrum) @ q.T
    h = (h + h.T) / 2
    c = np.random.default_rng(1).standard_normal(N)
    return quadratic_landscape(h, center=c, offset=0.25), h, c


@pytest.fixture(scope="module")
def diagonal_quadratic() -> tuple[lm.Landscape, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    h = rng.uniform(0.2, 3.0, N)
    c = rng.standard_normal(N)
    return quadratic_landscape(np.diag(h), center=c), h, c


# ------------------------------------------------------------ the quadratic landscape
def test_quadratic_landscape_closed_forms() -> None:
    rng = np.random.default_rng(3)
    n = 7
    a = rng.standard_normal((n, n))
    h = (a + a.T) / 2  # indefinite is fine
    c, s = rng.standard_normal(n), rng.standard_normal(n)
    land = quadratic_landscape(torch.tensor(h), center=c, start=s, offset=-1.5)

    def loss(x: np.ndarray) -> float:
        return -1.5 + 0.5 * (x - c) @ h @ (x - c)

    assert land.loss() == pytest.approx(loss(s), rel=1e-14)
    np.testing.assert_allclose(land.point()["theta"].numpy(), s)
    np.testing.assert_allclose(land.gradient()["theta"].numpy(), h @ (s - c), rtol=1e-13)
    v = rng.standard_normal(n)
    hv = land.hvp(None, {"theta": torch.tensor(v)})["theta"].numpy()
    np.testing.assert_allclose(hv, h @ v, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dense(land).numpy(), h, rtol=0, atol=1e-14)
    xs = rng.standard_normal((20, n))
    vals = land.evaluate([{"theta": torch.tensor(x)} for x in xs])["loss"]
    np.testing.assert_allclose(vals, [loss(x) for x in xs], rtol=1e-13)
    # default: θ0 = c, the minimum
    assert quadratic_landscape(np.diag([1.0, 2.0]), offset=0.5).loss() == 0.5


def test_quadratic_landscape_rejects_bad_matrices() -> None:
    with pytest.raises(ValueError, match="symmetric"):
        quadratic_landscape(np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        quadratic_landscape(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"center must have shape \(2,\)"):
        quadratic_landscape(np.eye(2), center=np.zeros(3))


# ----------------------------------------------------------------- worst case
def test_ball_worst_case_is_half_eps2_lambda_max(dense_quadratic, spectrum) -> None:
    land, _, _ = dense_quadratic
    for eps in (0.05, 0.3):
        r = S.epsilon(land, eps, region="ball", max_iter=30)
        truth = 0.5 * eps**2 * spectrum.max()
        assert r.increase == pytest.approx(truth, rel=1e-6)
        assert r.value == pytest.approx(100 * truth / 1.25, rel=1e-6)
        assert r.loss == pytest.approx(0.25, abs=1e-15)
        assert r.max_loss == pytest.approx(0.25 + truth, rel=1e-6)
        assert r.delta_norm == pytest.approx(eps, rel=1e-9)
        assert r.evaluations > 1
        assert r.meta["region"] == "ball" and r.meta["method"] == "pgd"


def test_adaptive_l2_with_unit_scale_is_the_ball(dense_quadratic, spectrum) -> None:
    # η = 1 at θ = 0 makes |θ| + η = 1: the adaptive set is the plain ball.
    _, h, _ = dense_quadratic
    land = quadratic_landscape(h)  # c = 0
    r = S.adaptive(land, 0.2, p=2, eta=1.0, steps=30)
    assert r.value == pytest.approx(0.5 * 0.04 * spectrum.max(), rel=1e-6)


@pytest.mark.parametrize("method", ["lbfgsb", "pgd"])
def test_box_worst_case_of_separable_quadratic(diagonal_quadratic, method) -> None:
    land, h, c = diagonal_quadratic
    eps = 1e-2
    radius = eps * (np.abs(c) + 1)
    truth = 0.5 * np.sum(h * radius**2)  # every coordinate at its bound
    r = S.epsilon(land, eps, region="box", method=method)
    assert r.increase == pytest.approx(truth, rel=1e-10)
    assert r.value == pytest.approx(100 * truth, rel=1e-10)  # L(θ) = 0
    np.testing.assert_allclose(np.abs(r.delta["theta"].numpy()), radius, rtol=1e-12)
    if method == "lbfgsb":
        # δ = 0 is the exact minimum: L-BFGS-B has no gradient to follow from there,
        # the random starts find the corner
        assert r.meta["restart_max_losses"][0] == 0.0


def test_adaptive_inf_is_keskar_box(diagonal_quadratic) -> None:
    land, h, c = diagonal_quadratic
    eps = 1e-2
    truth = 0.5 * np.sum(h * (eps * (np.abs(c) + 1)) ** 2)
    r = S.adaptive(land, eps, p="inf", eta=1.0)
    assert r.value == pytest.approx(truth, rel=1e-10)
    # η = 0: the box |δ_i| ≤ ρ|c_i|
    r0 = S.adaptive(land, eps, p="inf")
    assert r0.value == pytest.approx(0.5 * np.sum(h * (eps * np.abs(c)) ** 2), rel=1e-10)


def test_worst_case_away_from_the_minimum_matches_the_trust_region_solution() -> None:
    # L(θ+δ) - L(θ) = gᵀδ + ½ δᵀHδ with H PD: the maximum over ||δ|| ≤ ε lies on the
    # sphere, δ = (μI - H)⁻¹ g with μ > λ_max solving ||δ|| = ε (secular equation).
    from scipy.optimize import brentq

    rng = np.random.default_rng(4)
    n = 12
    q = _rotation(n, 5)
    lam = np.linspace(0.5, 3.0, n)
    h = q @ np.diag(lam) @ q.T
    h = (h + h.T) / 2
    c, s = rng.standard_normal(n), rng.standard_normal(n) * 0.1
    land = quadratic_landscape(h, center=c, start=s)
    g = h @ (s - c)
    eps = 0.5
    gq = q.T @ g

    def radius(mu: float) -> float:
        return float(np.linalg.norm(gq / (mu - lam))) - eps

    mu = brentq(radius, lam.max() + 1e-12, lam.max() + np.linalg.norm(g) / eps + 10)
    d = q @ (gq / (mu - lam))
    truth = g @ d + 0.5 * d @ h @ d
    r = S.epsilon(land, eps, region="ball", max_iter=60)
    assert r.increase == pytest.approx(truth, rel=1e-6)


# -------------------------------------------------------------------- average
@pytest.mark.parametrize("adaptive", [False, True])
def test_average_matches_closed_form_within_its_interval(dense_quadratic, adaptive) -> None:
    land, h, c = dense_quadratic
    sigma = 0.1
    # plain: E[½ σ² zᵀHz] = ½ σ² tr H; adaptive δ = σ|c|⊙z: ½ σ² Σ H_ii c_i²
    truth = 0.5 * sigma**2 * (np.sum(np.diag(h) * c**2) if adaptive else np.trace(h))
    z99 = normal.ppf(0.995)
    for seed in range(4):
        a = S.average(land, sigma, samples=300, adaptive=adaptive, seed=seed, chunk=64)
        assert abs(a.value - truth) < z99 * a.stderr  # inside its 99 % interval
        assert a.loss == pytest.approx(0.25, abs=1e-15)
        assert a.avg_loss == pytest.approx(0.25 + a.value, rel=1e-12)
        assert a.samples == 300 and a.losses.shape == (300,) and a.evaluations == 300
        # the standard error is that of ½σ² zᵀHz: sd = σ²·sqrt(½ Σ λ²) (plain case)
        if not adaptive:
            sd = sigma**2 * np.sqrt(0.5 * np.sum(np.linalg.eigvalsh(h) ** 2))
            assert a.stderr == pytest.approx(sd / np.sqrt(300), rel=0.25)


@pytest.mark.parametrize("adaptive", [False, True])
def test_average_interval_covers_the_truth_95_percent_of_the_time(
    dense_quadratic, adaptive
) -> None:
    land, h, c = dense_quadratic
    sigma = 0.1
    truth = 0.5 * sigma**2 * (np.sum(np.diag(h) * c**2) if adaptive else np.trace(h))
    runs = [
        S.average(land, sigma, samples=100, adaptive=adaptive, seed=1000 + s, chunk=100)
        for s in range(400)
    ]
    coverage = np.mean([r.ci[0] < truth < r.ci[1] for r in runs])
    # binomial sd of the coverage over 400 runs: 0.011; the t interval is slightly
    # optimistic for the skewed (chi-square-like) increases
    assert 0.91 <= coverage <= 0.985, coverage


def test_average_is_deterministic_and_seeded(diagonal_quadratic) -> None:
    land, _, _ = diagonal_quadratic
    a = S.average(land, 0.05, samples=30, seed=7, chunk=8)
    b = S.average(land, 0.05, samples=30, seed=7, chunk=8)
    c = S.average(land, 0.05, samples=30, seed=8, chunk=8)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert not np.array_equal(a.losses, c.losses)
    # the first chunk's draws do not depend on how many samples follow
    d = S.average(land, 0.05, samples=8, seed=7, chunk=8)
    np.testing.assert_array_equal(d.losses, a.losses[:8])


# ------------------------------------------------------------- rescaling (Dinh)
@pytest.fixture(scope="module")
def relu_pair() -> tuple[lm.Landscape, lm.Landscape, nn.Module, torch.Tensor]:
    """A 64-16-10 ReLU MLP on 300 digits (float64), and the same function with layer 1
    (weight and bias) ×5 and layer 2's weight ×1/5."""
    data = lm.examples.digits_data()
    x, y = data["train"]
    x, y = x[:300].double(), y[:300]
    model = lm.examples.make_mlp([64, 16, 10], seed=0).double()
    lm.examples.train(model, nn.CrossEntropyLoss(), x, y, epochs=5, batch_size=32, lr=1e-2)
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[0].weight.mul_(5.0)
        scaled[0].bias.mul_(5.0)
        scaled[2].weight.div_(5.0)
    a = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    b = lm.Landscape(scaled, nn.CrossEntropyLoss(), data=(x, y))
    return a, b, scaled, x


def test_rescaled_network_computes_the_same_function(relu_pair) -> None:
    a, b, scaled, x = relu_pair
    with torch.no_grad():
        np.testing.assert_allclose(scaled(x).numpy(), a.model(x).numpy(), rtol=1e-12, atol=1e-12)
    assert b.loss() == pytest.approx(a.loss(), rel=1e-12)


def _rel(u: float, v: float) -> float:
    return abs(u - v) / max(abs(u), abs(v))


def test_adaptive_sharpness_is_rescaling_invariant(relu_pair) -> None:
    a, b, _, _ = relu_pair
    for p, rho in ((2, 0.05), ("inf", 0.002)):
        sa = S.adaptive(a, rho, p=p, steps=10, restarts=1)
        sb = S.adaptive(b, rho, p=p, steps=10, restarts=1)
        assert sa.value > 1e-4
        assert _rel(sa.value, sb.value) < 1e-10, (p, sa.value, sb.value)
    avg_a = S.average(a, 0.05, samples=20, adaptive=True, seed=3)
    avg_b = S.average(b, 0.05, samples=20, adaptive=True, seed=3)
    assert avg_a.value > 1e-4
    assert _rel(avg_a.value, avg_b.value) < 1e-10


def test_plain_sharpness_is_not_rescaling_invariant(relu_pair) -> None:
    a, b, _, _ = relu_pair
    ea = S.epsilon(a, 1e-3, region="box", restarts=1)
    eb = S.epsilon(b, 1e-3, region="box", restarts=1)
    assert _rel(ea.value, eb.value) > 0.1, (ea.value, eb.value)
    pa = S.average(a, 0.02, samples=20, seed=3)
    pb = S.average(b, 0.02, samples=20, seed=3)
    assert _rel(pa.value, pb.value) > 0.1, (pa.value, pb.value)
    # η > 0 (Kwon et al.) breaks the exact invariance
    ka = S.adaptive(a, 0.05, eta=0.01, steps=10, restarts=1)
    kb = S.adaptive(b, 0.05, eta=0.01, steps=10, restarts=1)
    assert _rel(ka.value, kb.value) > 1e-4


# ------------------------------------------------------ the caller's model
def test_model_is_unchanged_by_every_call(relu_pair) -> None:
    a, _, _, _ = relu_pair
    model = a.model
    model.train()  # a non-default mode must survive too
    before = state_of(model)
    S.epsilon(a, 1e-3, max_iter=3, restarts=1)
    S.epsilon(a, 0.05, region="ball", max_iter=3, restarts=1)
    S.epsilon(a, 1e-3, method="pgd", max_iter=3, restarts=0)
    S.adaptive(a, 0.05, steps=3, restarts=0)
    S.average(a, 0.01, samples=4, adaptive=True)
    S.average(a, 0.01, samples=4)
    assert_unchanged(model, before)
    model.eval()
    assert all(p.grad is None for p in model.parameters())


def test_ignored_parameters_do_not_move(relu_pair) -> None:
    a, _, _, _ = relu_pair
    r = S.epsilon(a, 1e-3, ignore=("bias",), max_iter=3, restarts=1)
    assert float(r.delta["0.bias"].abs().max()) == 0.0
    assert float(r.delta["0.weight"].abs().max()) > 0.0
    with pytest.raises(ValueError, match="every parameter"):
        S.average(a, 0.01, samples=4, ignore=("*",))


# --------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda land: S.epsilon(land, 0.0), "eps must be a positive"),
        (lambda land: S.epsilon(land, -1e-3), "eps must be a positive"),
        (lambda land: S.epsilon(land, float("nan")), "eps must be a positive"),
        (lambda land: S.epsilon(land, 1e-3, region="cube"), "unknown region 'cube'.*'box', 'ball'"),
        (lambda land: S.epsilon(land, 1e-3, method="adam"), "unknown method 'adam'.*'lbfgsb'"),
        (lambda land: S.epsilon(land, 1e-3, region="ball", method="lbfgsb"), "use method='pgd'"),
        (lambda land: S.epsilon(land, 1e-3, restarts=-1), "restarts must be an integer >= 0"),
        (lambda land: S.adaptive(land, 0.0), "rho must be a positive"),
        (lambda land: S.adaptive(land, 0.1, p=1), "unknown p 1; choose one of 2, 'inf'"),
        (lambda land: S.adaptive(land, 0.1, eta=-1.0), "eta must be"),
        (lambda land: S.average(land, 0.0), "sigma must be a positive"),
        (lambda land: S.average(land, -0.1), "sigma must be a positive"),
        (lambda land: S.average(land, 0.1, samples=1), "samples must be an integer >= 2"),
        (lambda land: S.average(land, 0.1, chunk=0), "chunk must be an integer >= 1"),
        (lambda land: S.average(land, 0.1, dataset="test"), "unknown data set 'test'"),
    ],
)
def test_bad_input_is_refused(diagonal_quadratic, call, match) -> None:
    land, _, _ = diagonal_quadratic
    with pytest.raises(ValueError, match=match):
        call(land)


# ------------------------------------------------------------------ journal
class DictJournal:
    """A stand-in for lossmap.store.Journal: get/put on a dict, counting writes."""

    def __init__(self) -> None:
        self.data: dict[str, np.ndarray] = {}
        self.puts: list[str] = []

    def get(self, key: str) -> np.ndarray | None:
        return self.data.get(key)

    def put(self, key: str, value: np.ndarray) -> None:
        self.data[key] = np.array(value, copy=True)
        self.puts.append(key)


def test_average_resumes_from_a_journal_bit_identically(dense_quadratic, monkeypatch) -> None:
    land, _, _ = dense_quadratic
    kw = {"samples": 50, "seed": 5, "chunk": 10}
    full = DictJournal()
    ref = S.average(land, 0.1, journal=full, **kw)
    assert full.puts == [f"average/{i}" for i in range(5)]
    np.testing.assert_array_equal(np.concatenate([full.data[k] for k in full.puts]), ref.losses)

    # an interrupted run: only chunks 0, 1 and 3 were written
    half = DictJournal()
    half.data = {k: full.data[k].copy() for k in ("average/0", "average/1", "average/3")}
    calls: list[int] = []
    original = lm.Landscape.evaluate

    def counting(self, points, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(points))
        return original(self, points, **kwargs)

    monkeypatch.setattr(lm.Landscape, "evaluate", counting)
    resumed = S.average(land, 0.1, journal=half, **kw)
    assert calls == [1, 10, 10]  # L(θ), then chunks 2 and 4 only
    assert half.puts == ["average/2", "average/4"]
    np.testing.assert_array_equal(resumed.losses, ref.losses)
    assert resumed.value == ref.value and resumed.stderr == ref.stderr
    assert resumed.evaluations == 20 and resumed.meta["chunks_restored"] == 3

    # a journal from other settings is refused, not silently mixed in
    with pytest.raises(ValueError, match="fresh journal"):
        S.average(land, 0.1, journal=half, samples=50, seed=5, chunk=20)


def test_non_finite_loss_at_theta_is_refused(diagonal_quadratic) -> None:
    land, _, _ = diagonal_quadratic
    bad = {"theta": torch.full((N,), float("nan"), dtype=torch.float64)}
    for call in (
        lambda: S.epsilon(land, 1e-3, point=bad),
        lambda: S.adaptive(land, 0.1, point=bad),
        lambda: S.average(land, 0.1, samples=4, point=bad),
    ):
        with pytest.raises(ValueError, match="sharpness is undefined"):
            call()
