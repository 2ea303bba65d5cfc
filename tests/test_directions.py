import numpy as np
import pytest
import torch
from torch import nn

import lossmap as lm
from lossmap import vectors as V


def _land(model: nn.Module, n_in: int = 5, n_out: int = 3) -> lm.Landscape:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, n_in, generator=g, dtype=next(model.parameters()).dtype)
    y = torch.randint(0, n_out, (64,), generator=g)
    return lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))


@pytest.fixture
def land() -> lm.Landscape:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    return _land(model)


def test_filter_normalization_norms_exact(land) -> None:
    theta = land.point()
    (d,) = lm.directions.random(land, 1, normalization="filter", ignore=(), seed=1)
    for k in ("0.weight", "3.weight"):
        np.testing.assert_allclose(
            d[k].norm(dim=1).numpy(), theta[k].norm(dim=1).numpy(), rtol=1e-6
        )
    for k in ("0.bias", "1.weight", "1.bias", "3.bias"):  # 1-D tensors: one filter each
        assert float(d[k].norm()) == pytest.approx(float(theta[k].norm()), rel=1e-6)


def test_layer_model_unit_none(land) -> None:
    theta = land.point()
    (d,) = lm.directions.random(land, 1, normalization="layer", ignore=(), seed=1)
    for k in theta:
        assert float(d[k].norm()) == pytest.approx(float(theta[k].norm()), rel=1e-6)
    (d,) = lm.directions.random(land, 1, normalization="model", ignore=(), seed=1)
    assert float(V.norm(d)) == pytest.approx(float(V.norm(theta)), rel=1e-6)
    (d,) = lm.directions.random(land, 1, normalization="unit", ignore=(), seed=1)
    assert float(V.norm(d)) == pytest.approx(1.0, rel=1e-6)
    (d,) = lm.directions.random(land, 1, normalization="none", ignore=(), seed=1)
    g = torch.Generator().manual_seed(1)
    raw = {
        k: torch.randn(t.shape, generator=g, dtype=torch.float64).float() for k, t in theta.items()
    }
    assert all(torch.equal(d[k], raw[k]) for k in theta)


def test_ignore_rules_give_zero(land) -> None:
    (d,) = lm.directions.random(land, 1, ignore=("bias", "norm"), seed=0)
    assert set(d.meta["ignored"]) == {"0.bias", "1.weight", "1.bias", "3.bias"}
    for k in d.meta["ignored"]:
        assert not d[k].any()
    assert d["0.weight"].abs().sum() > 0
    (d,) = lm.directions.random(land, 1, ignore=("3.*",), seed=0)
    assert not d["3.weight"].any() and d["0.bias"].any()
    with pytest.raises(ValueError, match="unknown ignore rule 'biases'"):
        lm.directions.random(land, 1, ignore=("biases",))
    with pytest.raises(ValueError, match="unknown normalization 'filters'; choose one of filter"):
        lm.directions.random(land, 1, normalization="filters")


@pytest.mark.parametrize("normalization", ["filter", "layer", "model", "unit", "none"])
def test_orthogonal_keeps_normalization(land, normalization) -> None:
    theta = land.point()
    d1, d2, d3 = lm.directions.random(
        land, 3, normalization=normalization, ignore=("bias",), seed=4
    )
    for a, b in ((d1, d2), (d1, d3), (d2, d3)):
        assert abs(V.cosine(a, b)) < 1e-6
    if normalization == "filter":
        for d in (d2, d3):
            np.testing.assert_allclose(
                d["0.weight"].norm(dim=1).numpy(), theta["0.weight"].norm(dim=1).numpy(), rtol=1e-5
            )
    if normalization == "model":  # ||d|| = ||θ|| over the parameters that move
        moving = {k: t for k, t in theta.items() if not k.endswith("bias")}
        assert float(V.norm(d3)) == pytest.approx(float(V.norm(moving)), rel=1e-6)
    # Without orthogonalisation random directions are merely nearly orthogonal.
    e1, e2 = lm.directions.random(land, 2, normalization=normalization, orthogonal=False, seed=4)
    assert 1e-6 < abs(V.cosine(e1, e2)) < 0.5


def test_same_seed_same_directions_on_any_machine(land) -> None:
    a = lm.directions.random(land, 2, seed=7)
    b = lm.directions.random(land, 2, seed=7)
    c = lm.directions.random(land, 2, seed=8)
    assert all(torch.equal(a[i][k], b[i][k]) for i in range(2) for k in a[0])
    assert not torch.equal(a[0]["0.weight"], c[0]["0.weight"])
    # The draws come from torch's CPU Mersenne Twister in float64, whatever the device:
    # these are its first values for seed 0 on every platform.
    (d,) = lm.directions.random(land, 1, normalization="none", ignore=(), seed=0)
    first = d["0.weight"].reshape(-1)[:4].double()
    expected = torch.tensor(
        [-2.310411800234176, -0.3732508612577643, -1.0608166785462863, 0.9995093547811761]
    )
    torch.testing.assert_close(first, expected.float().double())


def test_batchnorm_rescaling_invariance() -> None:
    """Li et al. 2018: with filter normalisation, rescaling the weights before a BatchNorm
    (which leaves the network's function unchanged) leaves the 1-D plot unchanged."""

    def build(c: float) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            m = nn.Sequential(
                nn.Linear(5, 8), nn.BatchNorm1d(8, eps=1e-12), nn.ReLU(), nn.Linear(8, 3)
            ).double()
        with torch.no_grad():
            m[1].running_mean.copy_(torch.linspace(-0.5, 0.5, 8, dtype=torch.float64))
            m[1].running_var.copy_(torch.linspace(0.5, 2.0, 8, dtype=torch.float64))
            m[0].weight.mul_(c)
            m[0].bias.mul_(c)
            m[1].running_mean.mul_(c)
            m[1].running_var.mul_(c * c)
        return m

    lands = [_land(build(c)) for c in (1.0, 10.0)]
    assert lands[0].loss() == pytest.approx(lands[1].loss(), rel=1e-9)  # same function
    curves = {}
    for norm in ("filter", "none"):
        curves[norm] = [
            lm.line(
                la,
                lm.directions.random(la, 1, normalization=norm, ignore=("norm",), seed=0)[0],
                steps=21,
            )["loss"]
            for la in lands
        ]
    np.testing.assert_allclose(curves["filter"][0], curves["filter"][1], rtol=1e-8)
    assert np.max(np.abs(curves["none"][0] - curves["none"][1])) > 1e-2


def test_between_and_coordinate() -> None:
    land = lm.examples.linear_regression()
    a, b = land.point(), V.scale(land.point(), 2.0)
    d = lm.directions.between(a, b)
    assert torch.equal(d["weight"], a["weight"]) and d.meta["kind"] == "between"
    e = lm.directions.coordinate(land, "weight")
    assert float(e["weight"]) == 1.0 and float(e["bias"]) == 0.0
    with pytest.raises(ValueError, match="unknown parameter 'w'"):
        lm.directions.coordinate(land, "w")


# ------------------------------------------------- directions saved with a slice
def _float64_land() -> lm.Landscape:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    return _land(model)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_saved_directions_round_trip_bit_identical(land, dtype, tmp_path) -> None:
    land = land if dtype == "float32" else _float64_land()
    dirs = lm.directions.random(land, 2, seed=3)
    s = lm.plane(land, *dirs, span=0.5, steps=3)
    line = lm.line(land, dirs[0], span=0.5, steps=3)
    s.save(tmp_path / "s.h5")
    line.save(tmp_path / "l.h5")
    back = lm.directions.load(tmp_path / "s.h5", land)
    assert lm.load(tmp_path / "s.h5").directions is not None
    assert len(back) == 2 and len(lm.directions.load(tmp_path / "l.h5")) == 1
    for d, b in zip(dirs, back, strict=True):
        assert list(b) == list(d)
        for k in d:
            assert b[k].dtype == d[k].dtype == getattr(torch, dtype)
            assert torch.equal(b[k], d[k])  # every bit
        assert b.meta["seed"] == 3 and b.meta["kind"] == "random"
    # A plane made again from the loaded directions is the same plane, bit for bit.
    again = lm.plane(land, *back, span=0.5, steps=3)
    np.testing.assert_array_equal(again["loss"], s["loss"])


def test_files_without_directions_still_load(land, tmp_path) -> None:
    s = lm.plane(land, *lm.directions.random(land, 2), span=0.5, steps=3)
    old = lm.Surface(s.coords, s.values, s.meta)  # what lossmap wrote before directions
    old.save(tmp_path / "old.h5")
    back = lm.load(tmp_path / "old.h5")
    assert back.directions is None
    np.testing.assert_array_equal(back["loss"], s["loss"])
    with pytest.raises(ValueError, match="holds no direction tensors"):
        lm.directions.load(tmp_path / "old.h5")
    path = lm.interpolate(land, land.point(), V.scale(land.point(), 1.1), steps=3)
    assert path.directions is None  # a path is made again from its two end points


def test_saved_directions_refuse_another_model(land, tmp_path) -> None:
    s = lm.plane(land, *lm.directions.random(land, 2), span=0.5, steps=3)
    s.save(tmp_path / "s.h5")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        other = _land(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)))
    with pytest.raises(ValueError, match="do not fit the model's parameters") as e:
        lm.directions.load(tmp_path / "s.h5", other)
    assert "\n" not in str(e.value) and "0.weight: (8, 5) vs expected (7, 5)" in str(e.value)


def test_hessian_directions_are_eigenvectors_of_the_dense_hessian() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    land = _land(model, n_in=3, n_out=2)
    H = lm.hessian.dense(land).numpy()
    truth = np.linalg.eigvalsh(H)[::-1]
    dirs = lm.directions.hessian(land, 2, tol=1e-10)
    for i, d in enumerate(dirs):
        v = V.flatten(d).numpy()
        lam = float(d.meta["eigenvalue"])
        assert lam == pytest.approx(truth[i], rel=1e-6)
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-9)
        assert np.linalg.norm(H @ v - lam * v) < 1e-6 * abs(truth[0])
