import numpy as np
import pytest
import torch
from torch import nn

import lossmap as lm
from lossmap import vectors as V
from lossmap.evaluate import affine_plan


def test_linear_regression_plane_is_the_closed_form_mse() -> None:
    land = lm.examples.linear_regression()
    x, y = (t.numpy()[:, 0] for t in lm.examples.linear_regression_data())
    s = lm.plane(land, "weight", "bias", span=[(0, 6), (-1, 5)], steps=101)
    w, b = np.meshgrid(s.alpha, s.beta, indexing="ij")
    expected = ((w[..., None] * x + b[..., None] - y) ** 2).mean(-1)
    np.testing.assert_allclose(s["loss"], expected, rtol=1e-12)
    # The grid minimum is within one grid step of the least-squares solution.
    (w_ls, b_ls), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)
    i, j = np.unravel_index(np.argmin(s["loss"]), s["loss"].shape)
    assert abs(s.alpha[i] - w_ls) <= s.alpha[1] - s.alpha[0]
    assert abs(s.beta[j] - b_ls) <= s.beta[1] - s.beta[0]
    assert s.meta["directions"][0]["kind"] == "axis"
    # θ0 is the least-squares point, on the grid only by accident: not claimed here.
    assert s.theta0 == pytest.approx((w_ls, b_ls))
    assert "at_theta0" not in s.summary()
    c = lm.line(land, "bias", span=(b_ls - 1, b_ls + 1), steps=3)
    assert c.summary()["at_theta0"] == pytest.approx(land.loss(), rel=1e-12)


def test_logistic_regression_matches_numpy_formula() -> None:
    land = lm.examples.logistic_regression()
    x, y = (t.numpy() for t in lm.examples.logistic_regression_data())
    y = y[:, 0]
    d1, d2 = lm.directions.random(land, 2, normalization="unit", ignore=(), seed=0)
    s = lm.plane(land, d1, d2, span=1.5, steps=41)
    theta = land.point()
    rng = np.random.default_rng(0)
    for i, j in rng.integers(0, 41, size=(10, 2)):
        p = V.combine(theta, [d1, d2], [s.alpha[i], s.beta[j]])
        w, b = p["weight"].numpy()[0], float(p["bias"])
        z = x @ w + b
        prob = 1 / (1 + np.exp(-z))
        bce = -np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob))
        assert s["loss"][i, j] == pytest.approx(bce, rel=1e-10)
        assert s["accuracy"][i, j] == pytest.approx(np.mean((z > 0) == (y > 0.5)))


def _manual(land, d1, d2, a, b):
    return land.evaluate([V.combine(land.point(), [d1, d2], [a, b])], strategy="loop")


@pytest.mark.parametrize("fixture", ["mlp_data", "cnn_data"])
def test_strategies_agree(fixture, request) -> None:
    model, x, y = request.getfixturevalue(fixture)
    land = lm.Landscape(
        model, nn.CrossEntropyLoss(), data={"train": (x, y), "test": (x[:17], y[:17])}
    )
    assert affine_plan(land) is not None
    d1, d2 = lm.directions.random(land, 2, seed=0)
    surfaces = {
        s: lm.plane(land, d1, d2, steps=(6, 5), strategy=s)
        for s in ("loop", "vmap", "affine", "affine-vmap", "auto")
    }
    for name, s in surfaces.items():
        assert s.meta["engine"]["strategy"] == name or name == "auto"
        for k in s.values:
            np.testing.assert_allclose(
                s.values[k], surfaces["loop"].values[k], rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}"
            )
    # Non-square grid orientation: values[i, j] is at (alpha[i], beta[j]).
    s = surfaces["auto"]
    for i, j in ((0, 4), (5, 0), (2, 3)):
        ref = _manual(land, d1, d2, s.alpha[i], s.beta[j])
        assert s["test/loss"][i, j] == pytest.approx(ref["test/loss"][0], rel=1e-5)


def test_origin_on_grid_and_line_matches_loss(mlp_data) -> None:
    model, x, y = mlp_data
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    (d,) = lm.directions.random(land, 1, seed=2)
    c = lm.line(land, d, span=(-1, 1), steps=51)
    assert c.alpha[25] == 0.0
    assert c["loss"][25] == pytest.approx(land.loss(), rel=1e-6)
    s = lm.plane(land, d, lm.directions.random(land, 2, seed=3)[1], span=2.0, steps=41)
    assert s.alpha[20] == 0.0 and s.beta[20] == 0.0
    assert s.summary()["at_theta0"] == pytest.approx(land.loss(), rel=1e-6)
    assert s.meta["cosine"] == pytest.approx(V.cosine(d, lm.directions.random(land, 2, seed=3)[1]))


def test_interpolate_endpoints(mlp_data) -> None:
    model, x, y = mlp_data
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    a = land.point()
    b = V.add(a, lm.directions.random(land, 1, seed=5)[0], alpha=0.7)
    c = lm.interpolate(land, a, b, span=(-0.5, 1.5), steps=41)
    i0, i1 = np.argmin(np.abs(c.alpha)), np.argmin(np.abs(c.alpha - 1))
    assert c.alpha[i0] == 0.0 and c.alpha[i1] == pytest.approx(1.0)
    assert c["loss"][i0] == pytest.approx(land.loss(a), rel=1e-6)
    assert c["loss"][i1] == pytest.approx(land.loss(b), rel=1e-5)


class _LogModel(nn.Module):
    """log(w) * x: undefined (NaN) for w < 0, -inf at w = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.w) * x


def test_nonfinite_values_are_nan_and_counted() -> None:
    x = torch.linspace(-1, 1, 20)[:, None]
    land = lm.Landscape(_LogModel(), nn.MSELoss(), data=(x, 2 * x))
    c = lm.line(land, "w", span=(-1, 2), steps=31)
    neg = c.alpha <= 0
    assert np.isnan(c["loss"][neg]).all() and np.isfinite(c["loss"][~neg]).all()
    assert c.meta["engine"]["nonfinite"] == int(neg.sum())
    assert c.summary()["nonfinite"] == int(neg.sum())


def test_bad_spans_and_steps(mlp_data) -> None:
    model, x, y = mlp_data
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    d1, d2 = lm.directions.random(land, 2)
    with pytest.raises(ValueError, match="steps must be at least 2"):
        lm.line(land, d1, steps=1)
    with pytest.raises(ValueError, match="empty or inverted"):
        lm.line(land, d1, span=(1, 1))
    with pytest.raises(ValueError, match="empty or inverted"):
        lm.plane(land, d1, d2, span=[(-1, 1), (2, -2)])
    with pytest.raises(ValueError, match="too many"):
        lm.plane(land, d1, d2, steps=1_000_000)
    with pytest.raises(ValueError, match="unknown strategy 'fast'"):
        lm.line(land, d1, strategy="fast")
    with pytest.raises(ValueError, match="does not match the model"):
        lm.line(land, {"0.weight": torch.zeros(8, 5)})


# ------------------------------------------- `lossmap line/plane --directions ...`
def test_cli_plane_reuses_saved_directions_exactly(tmp_path, factories, capsys) -> None:
    from conftest import run_cli

    first = ["plane", "--model", "userfactories:good", "--steps", "5", "--seed", "7"]
    code, _, err = run_cli([*first, "--out", str(tmp_path / "p")], capsys)
    assert code == 0, err
    saved = tmp_path / "p" / "surface.h5"
    # Another seed, another normalisation: ignored, the saved directions are used.
    again = ["plane", "--model", "userfactories:good", "--steps", "5", "--seed", "1"]
    code, _, err = run_cli(
        [
            *again,
            "--normalization",
            "unit",
            "--directions",
            str(saved),
            "--out",
            str(tmp_path / "q"),
        ],
        capsys,
    )
    assert code == 0, err
    a, b = lm.load(saved), lm.load(tmp_path / "q" / "surface.h5")
    np.testing.assert_array_equal(b["loss"], a["loss"])  # bit for bit
    for da, db in zip(a.directions, b.directions, strict=True):
        assert all(np.array_equal(da[k], db[k]) for k in da)
    # A line along the plane's first direction is the plane's row through β = 0.
    code, _, err = run_cli(
        [
            "line",
            "--model",
            "userfactories:good",
            "--steps",
            "5",
            "--directions",
            str(saved),
            "--out",
            str(tmp_path / "l"),
        ],
        capsys,
    )
    assert code == 0, err
    np.testing.assert_array_equal(lm.load(tmp_path / "l" / "line.h5")["loss"], a["loss"][:, 2])


def test_cli_saved_directions_of_another_model_one_line(tmp_path, factories, capsys) -> None:
    from conftest import run_cli

    code, _, err = run_cli(
        ["plane", "--model", "userfactories:good", "--steps", "3", "--out", str(tmp_path / "p")],
        capsys,
    )
    assert code == 0, err
    out = tmp_path / "o"
    code, _, err = run_cli(
        [
            "plane",
            "--model",
            "userfactories:other_arch",
            "--steps",
            "3",
            "--directions",
            str(tmp_path / "p" / "surface.h5"),
            "--out",
            str(out),
        ],
        capsys,
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "--directions" in lines[0] and "do not fit the model's parameters" in lines[0]
    assert "0.weight: (6, 4) vs expected (5, 4)" in lines[0]
    assert not (out / "surface.h5").exists()  # nothing evaluated
    # A path holds no directions; a missing file is named.
    code, _, err = run_cli(
        ["line", "--model", "userfactories:good", "--directions", str(tmp_path / "nope.h5")],
        capsys,
    )
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1


def test_cli_hessian_directions_are_eigenvectors(tmp_path, factories, capsys) -> None:
    from conftest import run_cli

    code, _, err = run_cli(
        [
            "plane",
            "--model",
            "userfactories:good",
            "--steps",
            "3",
            "--directions",
            "hessian",
            "--out",
            str(tmp_path / "h"),
        ],
        capsys,
    )
    assert code == 0, err
    s = lm.load(tmp_path / "h" / "surface.h5")
    import userfactories  # type: ignore[import-not-found]

    net, criterion, data = userfactories.good()
    land = lm.Landscape(net.double(), criterion, data=(data[0].double(), data[1]))
    H = lm.hessian.dense(land).numpy()
    top = np.linalg.eigvalsh(H)[::-1]
    for i, d in enumerate(lm.directions.load(s)):
        v = V.flatten(d).double().numpy()
        lam = float(d.meta["eigenvalue"])
        assert d.meta["kind"] == "hessian" and lam == pytest.approx(top[i], rel=1e-3)
        # float32 Lanczos against the float64 dense Hessian
        assert np.linalg.norm(H @ v - lam * v) < 1e-3 * top[0]
    assert "Hessian eigenvector 1" in _xlabel_of(s)


def _xlabel_of(s) -> str:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = lm.plot.contour(s)
    try:
        return fig.axes[0].get_xlabel()
    finally:
        plt.close(fig)
