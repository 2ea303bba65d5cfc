"""Mode connectivity: barriers against closed forms, paths against direct evaluation,
BatchNorm statistics against hand-computed activation moments, curve fits on a toy
ring where the straight path must cross a bump, and bit-exact resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import assert_unchanged, state_of
from torch import nn

import lossmap as lm
from lossmap import connect as C
from lossmap import vectors as V
from lossmap.examples import digits_data, make_mlp, train


class DictJournal:
    """Stand-in for lossmap.store.Journal: get/put over a dict."""

    def __init__(self) -> None:
        self.data: dict[str, np.ndarray] = {}

    def get(self, key: str) -> np.ndarray | None:
        v = self.data.get(key)
        return None if v is None else v.copy()

    def put(self, key: str, value: np.ndarray) -> None:
        self.data[key] = np.array(value, copy=True)


# ---------------------------------------------------------------- toy problems
class Ring(nn.Module):
    """L(w) = (|w|² - 1)² + tilt·w₁: zero at a = (1, 0) and b = (-1, 0); the straight
    path between them climbs to L(0) = 1 at the origin, a curve can go round the ring."""

    def __init__(self, tilt: float = 0.1) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 0.0], dtype=torch.float64))
        self.tilt = tilt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        return ((w @ w - 1.0) ** 2 + self.tilt * w[1]).expand(x.shape[0])


def ring_land(model: nn.Module | None = None) -> lm.Landscape:
    x = torch.zeros(64, 1, dtype=torch.float64)
    return lm.Landscape(
        model or Ring(), loss=lambda m, b: m(b[0]).mean(), data=(x, torch.zeros(64))
    )


RING_A = {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}
RING_B = {"w": torch.tensor([-1.0, 0.0], dtype=torch.float64)}


def logistic() -> lm.Landscape:
    """The seed's logistic regression data; any weights do for ground-truth checks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Linear(2, 1, dtype=torch.float64)
    x, y = lm.examples.logistic_regression_data()
    return lm.Landscape(model, nn.BCEWithLogitsLoss(), data=(x, y))


@pytest.fixture
def pair(mlp_data):
    """A landscape (tanh MLP, float32) and two different trained points."""
    model, x, y = mlp_data
    other = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        for p in other.parameters():
            p.data.normal_(0.0, 0.5)
    train(other, nn.CrossEntropyLoss(), x, y, steps=50, lr=0.1, optimizer="gd")
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    return land, land.point(), {k: v.detach().clone() for k, v in other.named_parameters()}


# ---------------------------------------------------------------- barrier
def test_barrier_closed_form_bump() -> None:
    # L(t) = 1 + t + 4 h t(1-t): excess over the chord is 4 h t(1-t), max h at t = 1/2;
    # max L at t* = 1/2 + 1/(8h), L(t*) - 3/2 = 1/2 + h + 1/(16 h) - 1 ... for h = 1: 1.0625.
    t = np.linspace(0.0, 1.0, 801)  # holds 0.5 and 0.625 exactly
    h = 1.0
    b = C.barrier(1.0 + t + 4.0 * h * t * (1.0 - t), t)
    assert b.height == pytest.approx(h, abs=1e-12)
    assert b.t_max == 0.5
    assert b.height_frankle == pytest.approx(2.5625 - 1.5, abs=1e-12)
    assert b.t_peak == 0.625
    assert (b.start, b.end, b.peak) == (1.0, 2.0, pytest.approx(2.5625))
    # Symmetric endpoints: both definitions agree.
    s = C.barrier(3.0 + 0.7 * np.sin(np.pi * t), t)
    assert s.height == pytest.approx(0.7, abs=1e-12) and s.height_frankle == pytest.approx(0.7)


def test_barrier_uses_only_the_unit_interval_of_a_curve() -> None:
    t = lm.slices.grid(-0.5, 1.5, 41)
    v = np.where((t < 0) | (t > 1), 100.0, 2.0 * t * (1 - t))  # huge outside [0, 1]
    curve = lm.Curve({"alpha": t}, {"train/loss": v, "train/accuracy": 1.0 - v})
    b = C.barrier(curve)
    assert b.height == pytest.approx(0.5) and b.n_points == 21
    acc = C.barrier(curve, key="accuracy")  # a drop in accuracy is a rise in error
    assert acc.key == "train/error" and acc.transform == "error = 1 - accuracy"
    assert acc.height == pytest.approx(0.5) and acc.start == 0.0 and acc.peak == pytest.approx(0.5)


def test_barrier_errors_and_divergence() -> None:
    t = np.linspace(0.1, 1.0, 10)
    with pytest.raises(ValueError, match="t=0 not on the path's grid"):
        C.barrier(np.ones(10), t)
    t = np.linspace(0.0, 1.0, 5)
    with pytest.raises(ValueError, match="t=1 is nan"):
        C.barrier(np.array([0.0, 1.0, 2.0, 1.0, np.nan]), t)
    with pytest.raises(ValueError, match="same length"):
        C.barrier(np.ones(4), t)
    diverged = C.barrier(np.array([0.0, 1.0, np.nan, 1.0, 0.0]), t)
    assert diverged.height == np.inf and diverged.t_max == 0.5


# ---------------------------------------------------------------- linear
def test_linear_equals_loss_at_interpolated_points() -> None:
    land = logistic()
    before = state_of(land.model)
    a = land.point()
    g = torch.Generator().manual_seed(0)
    b = {k: v + torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in a.items()}
    path = C.linear(land, a, b, span=(-0.5, 1.5), steps=9)
    for i, t in enumerate(path.alpha):
        p = {k: (1 - t) * a[k] + t * b[k] for k in a}
        assert path["loss"][i] == pytest.approx(land.loss(p), abs=1e-6)
    assert set(path.meta["barrier"]) == {"train/loss", "train/error"}
    expect = C.barrier(path, key="loss")
    assert path.meta["barrier"]["train/loss"]["height"] == expect.height
    assert path.meta["reset_bn"] is False
    same = C.linear(land, a, a, span=(0, 1), steps=5)
    for rec in same.meta["barrier"].values():
        assert abs(rec["height"]) < 1e-12 and abs(rec["height_frankle"]) < 1e-12
    assert_unchanged(land.model, before)


def test_linear_grid_must_hold_0_and_1(pair) -> None:
    land, a, b = pair
    with pytest.raises(ValueError, match="t=0 and t=1 on the grid"):
        C.linear(land, a, b, span=(-0.5, 1.5), steps=6)


@pytest.mark.parametrize("steps", [2, 3, 6, 11, 12, 40, 41, 51])
def test_default_span_puts_0_and_1_on_the_grid_for_any_steps(pair, steps) -> None:
    """A user who asks for 11 points gets 11 points (the fixed span (-0.5, 1.5) holds
    t = 0 and t = 1 only when steps - 1 is a multiple of 4), and the loss at t = 0 and
    t = 1 is the loss at the endpoints themselves."""
    land, a, b = pair
    lo, hi = C.default_span(steps)
    assert lo <= 0.0 and hi >= 1.0 and (hi - lo) <= 3.0
    curve = C.linear(land, a, b, steps=steps)
    t = curve.alpha
    assert len(t) == steps and t[0] == lo and t[-1] == hi
    i0, i1 = int(np.argmin(np.abs(t))), int(np.argmin(np.abs(t - 1)))
    assert abs(t[i0]) < 1e-12 and abs(t[i1] - 1) < 1e-12
    ends = land.evaluate([a, b])["train/loss"]
    np.testing.assert_allclose(curve.values["train/loss"][[i0, i1]], ends, rtol=1e-6)
    if steps == 41:
        assert (lo, hi) == (-0.5, 1.5)


# ---------------------------------------------------------------- BatchNorm
@pytest.fixture(scope="module")
def bn_pair():
    data = digits_data()
    x, y = data["train"]
    models = []
    for seed in (0, 1):
        m = make_mlp([64, 12, 10], seed=seed, batchnorm=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            train(m, nn.CrossEntropyLoss(), x, y, epochs=2, batch_size=64, lr=1e-2, seed=seed)
        models.append(m)
    return models[0], models[1], data


def _bn_by_hand(model: nn.Sequential, x: torch.Tensor, batches=None):
    """Mean and unbiased variance of the pre-BN activations (layer 0 output)."""
    with torch.no_grad():
        z = model[0](x).double()
    if batches is None:
        return z.mean(0), z.var(0, unbiased=True)
    mean = sum(z[s].mean(0) * len(z[s]) for s in batches) / len(z)
    var = sum(z[s].var(0, unbiased=True) * len(z[s]) for s in batches) / len(z)
    return mean, var


def _with_stats(model: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> nn.Module:
    m = copy.deepcopy(model)
    m[1].running_mean.copy_(mean.float())
    m[1].running_var.copy_(var.float())
    return m.eval()


def test_recompute_bn_is_the_data_moments(bn_pair) -> None:
    model_a, _, data = bn_pair
    x, y = data["train"]
    land = lm.Landscape(model_a, nn.CrossEntropyLoss(), data=data)
    before = state_of(model_a)
    bufs = C.recompute_bn(land)
    mean, var = _bn_by_hand(model_a, x)
    torch.testing.assert_close(bufs["1.running_mean"].double(), mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(bufs["1.running_var"].double(), var, atol=1e-5, rtol=1e-6)
    # Uneven batches: the mean is still the exact data-set mean (batch-size weights).
    loader = [(x[:1000], y[:1000]), (x[1000:], y[1000:])]
    mean2, var2 = _bn_by_hand(model_a, x, [slice(0, 1000), slice(1000, None)])
    bufs2 = C.recompute_bn(land, data=loader)
    torch.testing.assert_close(bufs2["1.running_mean"].double(), mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(bufs2["1.running_mean"].double(), mean2, atol=1e-5, rtol=0)
    torch.testing.assert_close(bufs2["1.running_var"].double(), var2, atol=1e-5, rtol=1e-6)
    assert_unchanged(model_a, before)


def test_linear_reset_bn_endpoints_and_middle(bn_pair) -> None:
    model_a, model_b, data = bn_pair
    x, y = data["train"]
    xt, yt = data["test"]
    land = lm.Landscape(model_a, nn.CrossEntropyLoss(), data=data)
    before_a, before_b = state_of(model_a), state_of(model_b)
    a = land.point()
    b = {k: v.detach().clone() for k, v in model_b.named_parameters()}
    path = C.linear(land, a, b, span=(0, 1), steps=5, reset_bn=True)
    assert path.meta["reset_bn"] is True
    ce = nn.functional.cross_entropy
    for i, model in ((0, model_a), (-1, model_b)):
        ref = _with_stats(model, *_bn_by_hand(model, x))
        with torch.no_grad():
            assert path["train/loss"][i] == pytest.approx(float(ce(ref(x), y)), abs=1e-5)
            assert path["test/loss"][i] == pytest.approx(float(ce(ref(xt), yt)), abs=1e-5)
            acc = float((ref(xt).argmax(1) == yt).float().mean())
            assert path["test/accuracy"][i] == pytest.approx(acc, abs=1e-6)
    # The middle: recomputed statistics are not the interpolation of the endpoints'.
    mid = {k: 0.5 * a[k] + 0.5 * b[k] for k in a}
    m_mid = copy.deepcopy(model_a)
    with torch.no_grad():
        for k, p in m_mid.named_parameters():
            p.copy_(mid[k])
    mean_mid, var_mid = _bn_by_hand(m_mid, x)
    bufs = C.recompute_bn(land, mid)
    torch.testing.assert_close(bufs["1.running_mean"].double(), mean_mid, atol=1e-5, rtol=0)
    torch.testing.assert_close(bufs["1.running_var"].double(), var_mid, atol=1e-5, rtol=1e-6)
    # The pre-BN mean is linear in the weights, so it does interpolate; the variance,
    # quadratic in them, does not: Var(z_a + z_b)/4 != (Var z_a + Var z_b)/2.
    var_a, var_b = _bn_by_hand(model_a, x)[1], _bn_by_hand(model_b, x)[1]
    gap = (bufs["1.running_var"].double() - (var_a + var_b) / 2).abs() / var_mid
    assert gap.max() > 0.2
    ref_mid = _with_stats(m_mid, mean_mid, var_mid)
    with torch.no_grad():
        assert path["train/loss"][2] == pytest.approx(float(ce(ref_mid(x), y)), abs=1e-5)
    with pytest.warns(UserWarning, match="foreign"):
        plain = C.linear(land, a, b, span=(0, 1), steps=5, reset_bn=False)
    assert abs(plain["train/loss"][2] - path["train/loss"][2]) > 1e-3
    assert_unchanged(model_a, before_a)
    assert_unchanged(model_b, before_b)


def test_reset_bn_without_batchnorm(pair) -> None:
    land, a, b = pair
    with pytest.raises(ValueError, match="no BatchNorm"):
        C.linear(land, a, b, reset_bn=True)


# ---------------------------------------------------------------- curves
def _random_points(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(2, generator=g, dtype=torch.float64)} for _ in range(n)]


def test_curve_parametrisations_are_exact() -> None:
    land = ring_land()
    fit = C.curve(land, RING_A, RING_B, epochs=0, steps=5)
    torch.testing.assert_close(fit.bend["w"], (RING_A["w"] + RING_B["w"]) / 2, rtol=0, atol=0)
    a, theta, b = _random_points()
    fit.a, fit.bend, fit.b = a, theta, b
    assert torch.equal(fit.point(0.0)["w"], a["w"]) and torch.equal(fit.point(1.0)["w"], b["w"])
    mid = 0.25 * a["w"] + 0.5 * theta["w"] + 0.25 * b["w"]
    torch.testing.assert_close(fit.point(0.5)["w"], mid, rtol=0, atol=1e-15)
    t = 0.3
    bez = (1 - t) ** 2 * a["w"] + 2 * t * (1 - t) * theta["w"] + t**2 * b["w"]
    torch.testing.assert_close(fit.point(t)["w"], bez, rtol=0, atol=1e-15)
    fit.kind = "polychain"
    assert torch.equal(fit.point(0.0)["w"], a["w"]) and torch.equal(fit.point(1.0)["w"], b["w"])
    torch.testing.assert_close(fit.point(0.5)["w"], theta["w"], rtol=0, atol=1e-15)
    torch.testing.assert_close(fit.point(0.25)["w"], (a["w"] + theta["w"]) / 2, atol=1e-15, rtol=0)
    torch.testing.assert_close(fit.point(0.75)["w"], (theta["w"] + b["w"]) / 2, atol=1e-15, rtol=0)
    np.testing.assert_allclose(C.coefficients("bezier", np.linspace(0, 1, 7)).sum(1), 1.0)


def test_curve_goes_round_the_ring() -> None:
    model = Ring()
    before = state_of(model)
    land = ring_land(model)
    fits = {
        kind: C.curve(land, RING_A, RING_B, kind=kind, epochs=30, lr=lr, batch_size=8, seed=0)
        for kind, lr in (("bezier", 0.05), ("polychain", 0.01))
    }
    for kind, fit in fits.items():
        line = fit.barrier_line
        assert line.height == pytest.approx(1.0, abs=1e-12) and line.t_max == 0.5
        # The values along the curve are the loss at φ(t), evaluated directly.
        for i in (0, 7, 20, 33, 40):
            w = fit.point(float(fit.t[i]))["w"]
            direct = float((w @ w - 1) ** 2 + 0.1 * w[1])
            assert fit.values["train/loss"][i] == pytest.approx(direct, abs=1e-12), kind
        assert fit.history.shape == (30,)
    assert fits["bezier"].barrier_curve.height < 0.1 * fits["bezier"].barrier_line.height
    # Two straight segments cannot follow the ring: their best max is about 0.15.
    assert fits["polychain"].barrier_curve.height < 0.5 * fits["polychain"].barrier_line.height
    assert_unchanged(model, before)


def test_curve_resume_is_bit_identical(pair) -> None:
    land, a, b = pair
    before = state_of(land.model)
    kw = {"epochs": 5, "lr": 0.05, "batch_size": 16, "seed": 3, "steps": 5}
    full = C.curve(land, a, b, **kw)
    journal = DictJournal()
    C.curve(land, a, b, **{**kw, "epochs": 2}, journal=journal)
    assert journal.get("curve/epoch/1") is not None and journal.get("curve/epoch/2") is None
    assert journal.get("curve/bend/1").dtype == np.float32  # the parameters' dtype
    resumed = C.curve(land, a, b, **kw, journal=journal)
    assert resumed.meta["resumed_from_epoch"] == 2
    for k in full.bend:
        assert torch.equal(full.bend[k], resumed.bend[k]), k
    np.testing.assert_array_equal(full.history, resumed.history)
    np.testing.assert_array_equal(full.values["train/loss"], resumed.values["train/loss"])
    # Everything stored: a third call trains nothing and returns the same bend.
    again = C.curve(land, a, b, **kw, journal=journal)
    assert again.meta["resumed_from_epoch"] == 5 and torch.equal(
        again.bend["0.weight"], full.bend["0.weight"]
    )
    other = C.curve(land, a, b, **{**kw, "seed": 4})
    assert not torch.equal(other.bend["0.weight"], full.bend["0.weight"])
    with pytest.raises(ValueError, match="other settings"):
        C.curve(land, a, b, **{**kw, "lr": 0.1}, journal=journal)
    assert_unchanged(land.model, before)


def test_curve_result_saves_and_loads(tmp_path, pair) -> None:
    land, a, b = pair
    fit = C.curve(land, a, b, epochs=1, steps=5, kind="polychain")
    back = lm.load(fit.to_curve().save(tmp_path / "curve.h5"))
    np.testing.assert_array_equal(back["loss"], fit.values["train/loss"])
    line = fit.to_curve("line")
    np.testing.assert_allclose(
        line["loss"], C.linear(land, a, b, span=(0, 1), steps=5)["loss"], atol=1e-6
    )
    assert fit.barrier("accuracy", path="line").key == "train/error"
    assert set(fit.meta["barrier"]["curve"]) == {"train/loss", "train/error"}


# ---------------------------------------------------------------- plane3
def test_plane3_axes_and_points() -> None:
    land = logistic()
    before = state_of(land.model)
    a = land.point()
    g = torch.Generator().manual_seed(1)
    b = {k: v + torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in a.items()}
    c = {k: v + torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in a.items()}
    surf = C.plane3(land, a, b, c, steps=(5, 4))
    fa, fb, fc = (V.flatten(p).numpy() for p in (a, b, c))
    u = (fb - fa) / np.linalg.norm(fb - fa)
    w = fc - fa - ((fc - fa) @ u) * u
    v = w / np.linalg.norm(w)
    pts = surf.meta["points"]
    for name, f in (("b", fb), ("c", fc)):
        x, y = pts[name]
        np.testing.assert_allclose(fa + x * u + y * v, f, atol=1e-10)
    assert pts["a"] == [0.0, 0.0]
    # The box holds the three points with the margin.
    assert surf.alpha.min() < 0 < pts["b"][0] < surf.alpha.max()
    assert surf.beta.min() < 0 < pts["c"][1] < surf.beta.max()
    for i, j in ((0, 0), (2, 1), (4, 3)):
        p = V.unflatten(torch.tensor(fa + surf.alpha[i] * u + surf.beta[j] * v), a)
        assert surf["loss"][i, j] == pytest.approx(land.loss(p), abs=1e-9)
    with pytest.raises(ValueError, match="lies on the line"):
        C.plane3(land, a, b, {k: 2 * b[k] - a[k] for k in a})
    assert_unchanged(land.model, before)


# ---------------------------------------------------------------- bad input
def test_bad_input(pair) -> None:
    land, a, b = pair
    missing = {k: v for k, v in b.items() if k != "2.bias"}
    with pytest.raises(ValueError, match=r"different architectures: missing 2\.bias"):
        C.linear(land, a, missing)
    wrong = {**b, "0.weight": torch.zeros(4, 5)}
    with pytest.raises(ValueError, match=r"0\.weight: \(4, 5\) vs expected \(8, 5\)"):
        C.curve(land, a, wrong)
    with pytest.raises(ValueError, match="choose one of bezier, polychain"):
        C.curve(land, a, b, kind="spline")
    with pytest.raises(ValueError, match="non-finite"):
        C.linear(land, a, {**b, "2.bias": torch.full((3,), float("nan"))})

    class Pole(Ring):  # infinite loss on the ring itself
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.w
            return (1.0 / (w @ w - 1.0) ** 2).expand(x.shape[0])

    pole = ring_land(Pole())
    with pytest.raises(ValueError, match="loss at endpoint a is (inf|nan)"):
        C.curve(pole, RING_A, RING_B)
    with pytest.raises(ValueError, match="loss at endpoint a is (inf|nan)"):
        C.linear(pole, RING_A, RING_B)


def test_curve_on_batchnorm_recomputes_statistics(bn_pair) -> None:
    """With BatchNorm the curve is fitted in train mode and every evaluated point gets
    its own statistics: at t = 0 and 1 (where curve and line meet the endpoints) the
    values equal the straight path's with reset_bn=True, and the model is untouched."""
    model_a, model_b, data = bn_pair
    land = lm.Landscape(model_a, nn.CrossEntropyLoss(), data=data)
    before = state_of(model_a)
    b = {k: v.detach().clone() for k, v in model_b.named_parameters()}
    fit = C.curve(land, land.point(), b, epochs=2, steps=5, batch_size=256)
    line = C.linear(land, land.point(), b, span=(0.0, 1.0), steps=5, reset_bn=True)
    assert_unchanged(model_a, before)
    for key in ("train/loss", "test/loss", "test/accuracy"):
        for i in (0, -1):
            assert fit.values[key][i] == pytest.approx(line[key][i], rel=1e-5, abs=1e-7), key
        np.testing.assert_allclose(fit.line_values[key], line[key], rtol=1e-5, atol=1e-7)
    assert "recomputed" in fit.meta["batchnorm"]
    # Recomputed statistics matter: the plain (interpolated-statistics) path differs.
    with pytest.warns(UserWarning, match="foreign"):
        plain = C.linear(land, land.point(), b, span=(0.0, 1.0), steps=5, reset_bn=False)
    assert abs(plain["train/loss"][2] - line["train/loss"][2]) > 1e-3
