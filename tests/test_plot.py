from pathlib import Path

import matplotlib
import numpy as np
import pytest

import lossmap as lm
from lossmap import plot
from lossmap.results import Curve, Spectrum, Surface


@pytest.fixture(autouse=True)
def _agg():
    """Draw off-screen, and close what each test opened."""
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    plt.switch_backend("Agg")
    yield
    plt.close("all")
    plt.switch_backend(backend)


def _grid(na: int = 7, nb: int = 11, *, centred: bool = False) -> tuple[np.ndarray, np.ndarray]:
    if centred:
        return np.linspace(-2.0, 2.0, na), np.linspace(-2.0, 2.0, nb)
    return np.linspace(-1.0, 2.0, na), np.linspace(-3.0, 1.0, nb)


def _bowl(na: int = 7, nb: int = 11, **meta) -> Surface:
    a, b = _grid(na, nb)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    loss = 0.1 + aa**2 + 0.5 * bb**2
    return Surface(
        {"alpha": a, "beta": b},
        {"train/loss": loss, "test/loss": 1.2 * loss, "train/accuracy": 1 / (1 + loss)},
        meta=meta,
    )


def _title(fig) -> str:
    return fig.axes[0].get_title()


# ------------------------------------------------------------------ orientation
def test_heatmap_puts_alpha_on_x_for_a_non_square_grid() -> None:
    a, b = _grid(7, 11)
    s = Surface({"alpha": a, "beta": b}, {"train/loss": np.repeat(a[:, None], 11, axis=1)})
    fig = plot.heatmap(s, log=False)
    ax = fig.axes[0]
    cells = np.asarray(ax.collections[0].get_array()).reshape(11, 7)  # [beta, alpha] = [y, x]
    np.testing.assert_allclose(cells, np.tile(a, (11, 1)))  # varies along x only
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert x0 < a[0] < a[-1] < x1 < a[-1] + 0.5 and y0 < b[0] < b[-1] < y1 < b[-1] + 0.5


def test_contour_lines_follow_alpha_for_a_non_square_grid() -> None:
    a, b = _grid(7, 11)
    s = Surface({"alpha": a, "beta": b}, {"train/loss": np.repeat(a[:, None], 11, axis=1)})
    fig = plot.contour(s, log=False, levels=[0.0, 0.5, 1.0])
    ax = fig.axes[0]
    assert ax.get_xlim() == (a[0], a[-1]) and ax.get_ylim() == (b[0], b[-1])
    cs = next(c for c in ax.collections if hasattr(c, "allsegs"))
    for level, segs in zip(cs.levels, cs.allsegs, strict=True):
        pts = np.concatenate(segs)
        # loss = alpha: every contour is the vertical line x = level spanning all of beta.
        np.testing.assert_allclose(pts[:, 0], level, atol=1e-12)
        assert pts[:, 1].min() == pytest.approx(b[0]) and pts[:, 1].max() == pytest.approx(b[-1])


def test_surface3d_puts_alpha_on_x(monkeypatch) -> None:
    from mpl_toolkits.mplot3d import Axes3D

    seen = {}
    original = Axes3D.plot_surface

    def spy(self, x, y, z, *args, **kwargs):
        seen.update(x=x, y=y, z=z)
        return original(self, x, y, z, *args, **kwargs)

    monkeypatch.setattr(Axes3D, "plot_surface", spy)
    a, b = _grid(7, 11)
    s = Surface({"alpha": a, "beta": b}, {"train/loss": np.repeat(a[:, None], 11, axis=1)})
    plot.surface3d(s, log=False)
    assert seen["x"].shape == seen["y"].shape == seen["z"].shape == (11, 7)
    np.testing.assert_array_equal(seen["x"], np.tile(a, (11, 1)))
    np.testing.assert_array_equal(seen["y"], np.tile(b[:, None], (1, 7)))
    np.testing.assert_array_equal(seen["z"], seen["x"])  # loss = alpha: height follows x


def test_real_plane_contour_has_the_span_and_the_minimum() -> None:
    land = lm.examples.linear_regression()
    s = lm.plane(land, "weight", "bias", span=[(0, 6), (-1, 5)], steps=(21, 31))
    fig = plot.contour(s)
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.0, 6.0) and ax.get_ylim() == (-1.0, 5.0)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("weight", "bias")
    # The innermost contour encloses the least-squares optimum (3, 2).
    cs = next(c for c in ax.collections if hasattr(c, "allsegs"))
    inner = np.concatenate(next(segs for segs in cs.allsegs if len(segs)))
    assert inner.mean(axis=0) == pytest.approx([3.0, 2.0], abs=0.2)
    # Raw parameter axes: θ0 is the least-squares point, and the star is there, not at (0, 0).
    (star,) = [ln for ln in ax.lines if ln.get_marker() == "*"]
    theta = land.point()
    assert star.get_xdata()[0] == pytest.approx(float(theta["weight"]))
    assert star.get_ydata()[0] == pytest.approx(float(theta["bias"]))
    assert len(fig.axes) == 2  # the colour bar


# ------------------------------------------------------------------ marks, labels
def test_star_at_theta0_for_random_directions_and_equal_aspect() -> None:
    dirs = [{"kind": "random", "normalization": "filter"}] * 2
    s = _bowl(directions=dirs, view="plane")
    for fig in (plot.contour(s), plot.heatmap(s), plot.contour(s, filled=True)):
        ax = fig.axes[0]
        (star,) = [ln for ln in ax.lines if ln.get_marker() == "*"]
        assert star.get_xydata().tolist() == [[0.0, 0.0]]
        assert ax.get_aspect() == 1.0
        assert ax.get_xlabel() == "α (random, filter-normalised)"
    assert not [ln for ln in plot.contour(s, mark_origin=False).axes[0].lines]
    # No direction metadata: plain labels, automatic aspect.
    ax = plot.contour(_bowl()).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_aspect()) == ("α", "β", "auto")


def test_no_star_when_origin_is_outside() -> None:
    a, b = np.linspace(1, 2, 5), np.linspace(-1, 1, 6)
    s = Surface({"alpha": a, "beta": b}, {"train/loss": np.ones((5, 6)) + a[:, None]})
    assert not plot.contour(s).axes[0].lines


def test_titles_and_keys() -> None:
    s = _bowl()
    assert _title(plot.contour(s)) == "train loss"
    assert _title(plot.heatmap(s, "test/loss")) == "test loss"
    assert _title(plot.contour(s, "accuracy")) == "train accuracy"
    with pytest.raises(KeyError, match="available"):
        plot.contour(s, "test/accuracy")
    with pytest.raises(TypeError, match="curve"):
        plot.contour(Curve({"alpha": [0.0, 1.0]}, {"train/loss": [1.0, 2.0]}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="levels"):
        plot.contour(s, levels=1)


# ------------------------------------------------------------------ NaN, log
def test_nan_rows_are_masked_and_counted() -> None:
    s = _bowl()
    s.values["train/loss"][2, :] = np.nan  # a whole alpha row: 11 points
    s.values["train/loss"][4, 3] = np.inf
    s = Surface(s.coords, s.values)  # inf -> NaN as on construction
    for draw in (plot.contour, plot.heatmap, plot.surface3d):
        fig = draw(s)
        assert "12 non-finite points masked" in _title(fig), draw.__name__
    fig = plot.contour(s, filled=True)
    assert "12 non-finite" in _title(fig)
    mesh = plot.heatmap(s).axes[0].collections[0].get_array()
    assert np.ma.count_masked(mesh) == 12


def test_all_nan_does_not_crash() -> None:
    a, b = _grid()
    s = Surface({"alpha": a, "beta": b}, {"train/loss": np.full((7, 11), np.nan)})
    for draw in (plot.contour, plot.heatmap, plot.surface3d):
        assert "train loss" in _title(draw(s))


def test_log_masks_non_positive_values() -> None:
    s = _bowl()
    z = s.values["train/loss"]
    z[0, 0], z[1, 1], z[2, 2] = 0.0, -1.0, np.nan
    for draw in (plot.contour, plot.heatmap, plot.surface3d):
        title = _title(draw(s, log=True))
        assert "1 non-finite point masked" in title and "2 points ≤ 0 masked" in title
    assert "≤ 0" not in _title(plot.contour(s, log=False))
    # Only zeros and negatives: nothing to draw on a log scale, still no crash.
    s.values["train/loss"][:] = 0.0
    plot.contour(s, log=True)
    plot.heatmap(s, log=True)


def test_log_levels_and_the_automatic_scale() -> None:
    from matplotlib.colors import LogNorm

    a, b = _grid(31, 41, centred=True)
    aa, bb = np.meshgrid(a, b, indexing="ij")
    sharp = 1e-3 * np.exp(4 * np.sqrt(aa**2 + bb**2))  # spans orders of magnitude
    s = Surface({"alpha": a, "beta": b}, {"train/loss": sharp})
    cs = next(c for c in plot.contour(s).axes[0].collections if hasattr(c, "allsegs"))
    assert isinstance(cs.norm, LogNorm)
    lv = np.asarray(cs.levels)
    assert lv[0] <= sharp.min() and lv[-1] >= sharp.max()
    ratios = lv[1:] / lv[:-1]
    assert ratios.max() / ratios.min() < 3  # about evenly spaced in log
    # A quadratic bowl over two decades stays linear, and so does a statistic other than loss.
    bowl = 0.2 + aa**2 + bb**2
    s = Surface({"alpha": a, "beta": b}, {"train/loss": bowl, "train/error": sharp})
    for key in ("loss", "error"):
        cs = next(c for c in plot.contour(s, key).axes[0].collections if hasattr(c, "allsegs"))
        assert not isinstance(cs.norm, LogNorm)


def test_constant_surface() -> None:
    a, b = _grid()
    s = Surface({"alpha": a, "beta": b}, {"train/loss": np.full((7, 11), 2.0)})
    assert "constant 2" in _title(plot.contour(s))
    plot.heatmap(s)
    plot.surface3d(s)


# ------------------------------------------------------------------ curves
def _line(**meta) -> Curve:
    t = np.linspace(-1.0, 2.0, 31)
    loss = 0.05 + (t - 0.5) ** 2
    return Curve({"alpha": t}, {"train/loss": loss, "test/loss": loss + 0.1}, meta=meta)


def test_curve_loss_only() -> None:
    fig = plot.curve(_line())
    (ax,) = fig.axes
    assert [ln.get_linestyle() for ln in ax.lines if ln.get_linestyle() != ":"] == ["-", "--"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train loss", "test loss"]
    assert ax.get_xlabel() == "α" and ax.get_xlim() == (-1.0, 2.0)
    (vline,) = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    assert vline.get_xdata()[0] == 0.0
    assert [t.get_text() for t in ax.texts] == ["θ0"]


def test_curve_loss_and_accuracy_on_two_axes() -> None:
    c = _line(directions=[{"kind": "random", "normalization": "filter"}], view="line")
    c.values["train/accuracy"] = np.linspace(0.5, 1.0, 31)
    c.values["test/accuracy"] = np.linspace(0.4, 0.9, 31)
    c.values["train/loss"][3] = np.nan
    fig = plot.curve(c)
    left, right = fig.axes
    assert left.get_ylabel() == "loss" and right.get_ylabel() == "accuracy"
    assert {ln.get_color() for ln in left.lines if ln.get_linestyle() != ":"} == {"C0"}
    assert {ln.get_color() for ln in right.lines} == {"C1"}
    assert [ln.get_linestyle() for ln in right.lines] == ["-", "--"]
    assert len(left.get_legend().get_texts()) == 4
    assert "1 non-finite point masked" in left.get_title()
    assert left.get_xlabel() == "α (random, filter-normalised)"
    fig = plot.curve(c, metrics=["accuracy"], datasets=["test"])
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "accuracy"
    with pytest.raises(ValueError, match="available"):
        plot.curve(c, metrics=["error"])


def test_curve_log_y_masks_non_positive() -> None:
    c = _line()
    c.values["train/loss"][:3] = [0.0, -1.0, np.nan]
    fig = plot.curve(c, logy=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert "1 non-finite point masked" in ax.get_title() and "2 points ≤ 0" in ax.get_title()


def test_interpolation_marks_a_and_b() -> None:
    c = _line(view="interpolate", directions=[{"kind": "between"}])
    ax = plot.curve(c).axes[0]
    assert ax.get_xlabel() == "t (0 = a, 1 = b)"
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    assert sorted(ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == ":") == [0.0, 1.0]


def test_axis_line_has_no_theta0_mark() -> None:
    c = _line(directions=[{"kind": "axis", "label": "bias"}], view="line")
    ax = plot.curve(c).axes[0]
    assert ax.get_xlabel() == "bias" and not ax.texts


def test_draws_into_given_axes() -> None:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2)
    assert plot.contour(_bowl(), ax=a1) is fig
    assert plot.curve(_line(), ax=a2) is fig
    with pytest.raises(TypeError, match="3d"):
        plot.surface3d(_bowl(), ax=a1)


# ------------------------------------------------------------------ files
def test_save_writes_png_and_pdf(tmp_path: Path) -> None:
    fig = plot.contour(_bowl())
    paths = plot.save(fig, tmp_path / "sub" / "span1.5")
    assert [p.name for p in paths] == ["span1.5.png", "span1.5.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert plot.save(fig, tmp_path / "c.png", formats=("png",)) == [tmp_path / "c.png"]
    with pytest.raises(ValueError, match="choose from"):
        plot.save(fig, tmp_path / "x", formats=("gif9",))


def test_figures_for_a_surface(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    paths = plot.figures(_bowl(), tmp_path / "out", prefix="s_")
    names = sorted(p.name for p in paths)
    expected = [
        f"s_{ds}_{kind}.{ext}"
        for ds, kind in [
            ("train", "loss_contour"),
            ("train", "loss_heatmap"),
            ("train", "loss_surface3d"),
            ("train", "accuracy_contour"),
            ("test", "loss_contour"),
            ("test", "loss_heatmap"),
            ("test", "loss_surface3d"),
        ]
        for ext in ("png", "pdf")
    ]
    assert names == sorted(expected)
    assert all(p.stat().st_size > 0 for p in paths)
    assert plt.get_fignums() == []  # every figure closed


def test_figures_for_a_curve(tmp_path: Path) -> None:
    paths = plot.figures(_line(), tmp_path, log=True)
    assert [p.name for p in paths] == ["curve.png", "curve.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_spectrum(tmp_path: Path) -> None:
    grid = np.linspace(-1.0, 5.0, 200)
    density = np.exp(-(grid**2) / 0.02) + 1e-3 * np.exp(-((grid - 4) ** 2) / 0.02)
    density[:20] = 0.0  # zeros are normal in a density: masked on the log axis, no note
    sp = Spectrum(grid, density, np.zeros((3, 4)), np.ones((3, 4)) / 4, 0.1, 12)
    ax = plot.spectrum(sp).axes[0]
    assert ax.get_yscale() == "log" and "3 probes" in ax.get_title()
    assert "masked" not in ax.get_title()
    paths = plot.figures(sp, tmp_path)
    assert [p.name for p in paths] == ["spectrum.png", "spectrum.pdf"]
    with pytest.raises(TypeError, match="Spectrum"):
        plot.spectrum(_line())  # type: ignore[arg-type]
