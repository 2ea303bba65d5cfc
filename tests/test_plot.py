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
    # The coarse grid is subdivided (8 facets per cell of alpha, 5 per cell of beta),
    # every grid point kept: rows follow beta, columns alpha.
    assert seen["x"].shape == seen["y"].shape == seen["z"].shape == (51, 49)
    np.testing.assert_array_equal(seen["x"][::5, ::8], np.tile(a, (11, 1)))
    np.testing.assert_array_equal(seen["y"][::5, ::8], np.tile(b[:, None], (1, 7)))
    np.testing.assert_allclose(seen["z"], seen["x"], rtol=1e-12)  # loss = alpha


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
        # The label says what α is and its units (#13); the star is a legend entry.
        assert ax.get_xlabel() == "α: filter-normalised random direction 1, ‖θ‖-relative"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["θ0 (trained)"]
        assert "θ0" not in ax.get_title()
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
    # θ0 is a legend entry (#17: not a text above the axes that reads as a subtitle).
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["train loss", "test loss", "θ0 (trained)"]
    assert ax.get_xlabel() == "α" and ax.get_xlim() == (-1.0, 2.0)
    (vline,) = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    assert vline.get_xdata()[0] == 0.0
    assert not ax.texts and ax.get_title() == "loss"


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
    assert len(left.get_legend().get_texts()) == 5  # 4 lines and θ0
    assert "1 non-finite point masked" in left.get_title()
    assert left.get_xlabel() == "α: filter-normalised random direction 1, ‖θ‖-relative"
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
    assert not ax.texts
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[-2:] == ["a (t = 0)", "b (t = 1)"]
    marks = [ln for ln in ax.lines if ln.get_label() in ("a (t = 0)", "b (t = 1)")]
    assert [ln.get_xdata()[0] for ln in marks] == [0.0, 1.0]


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


# ------------------------------------------------ one style for a run (#13, #17)
def _is_log(fig) -> bool:  # type: ignore[no-untyped-def]
    """Whether a figure shows its quantity on a log scale: the colour bar's norm of a
    contour or heatmap, the z label of a 3-D surface (it plots log10), a curve's y axis."""
    from matplotlib.colors import LogNorm

    ax = fig.axes[0]
    if ax.name == "3d":
        return ax.get_zlabel().startswith("log₁₀")
    bar = getattr(fig.axes[-1], "_colorbar", None)
    if bar is not None:
        return isinstance(bar.mappable.norm, LogNorm)
    return ax.get_yscale() == "log"


def _drawn(monkeypatch, result, **kw) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    """``plot.figures(result, **kw)``: each figure's file stem and :func:`_is_log`, read
    before the figure is closed (nothing is written)."""
    from lossmap.plot import files

    seen: dict[str, bool] = {}

    def record(fig, stem, formats=("png",)):  # type: ignore[no-untyped-def]
        seen[Path(stem).name] = _is_log(fig)
        return []

    monkeypatch.setattr(files, "save", record)
    plot.figures(result, "unused", **kw)
    return seen


def _decades_plane(n: int) -> Surface:
    """A loss from 0.13 to 111 on an n x n grid: a deep narrow basin in a high rim."""
    a = np.linspace(-1.0, 1.0, n)
    aa, bb = np.meshgrid(a, a, indexing="ij")
    r2 = aa**2 + bb**2
    loss = 0.13 + 110.87 * (r2 / 2) ** 2
    return Surface({"alpha": a, "beta": a}, {"train/loss": loss, "test/loss": loss * 1.01})


def test_log_decided_once_per_quantity_for_every_figure_of_a_run(monkeypatch) -> None:
    coarse, fine = _decades_plane(3), _decades_plane(7)
    # auto_log's rule alone gives the two grids of one landscape different scales ...
    assert plot.auto_log(coarse["loss"]) != plot.auto_log(fine["loss"])
    # ... the run decides once, from every value of the quantity it holds.
    scales = plot.log_scales(coarse, fine)
    pooled = np.concatenate([coarse["loss"].ravel(), fine["loss"].ravel()] * 2)
    assert scales["loss"] == plot.auto_log(pooled)
    for s in (coarse, fine):
        drawn = _drawn(monkeypatch, s, log=scales)
        planes = {k: v for k, v in drawn.items() if "loss" in k}
        assert len(planes) == 6 and set(planes.values()) == {scales["loss"]}
    # One result alone: contour, heatmap and 3-D surface of both data sets agree,
    # though each data set on its own would get another scale.
    s = _decades_plane(9)
    s.values["test/loss"] = np.linspace(1.0, 2.0, 81).reshape(9, 9)
    assert plot.auto_log(s["train/loss"]) != plot.auto_log(s["test/loss"])
    drawn = _drawn(monkeypatch, s)
    assert len(drawn) == 6 and set(drawn.values()) == {plot.log_scales(s)["loss"]}


def test_heatmap_and_contour_share_the_norm() -> None:
    from matplotlib.colors import LogNorm

    s = _decades_plane(7)
    for log in (True, False):
        c = plot.contour(s, log=log).axes[-1]._colorbar.mappable.norm
        h = plot.heatmap(s, log=log).axes[-1]._colorbar.mappable.norm
        assert isinstance(c, LogNorm) == isinstance(h, LogNorm) == log


def test_barrier_is_annotated_with_its_measured_height() -> None:
    t = np.linspace(-0.5, 1.5, 21)
    loss = 1 + t + 4 * t * (1 - t)  # chord 1 + t; excess 4t(1 - t): height 1 at t = 0.5
    c = Curve({"alpha": t}, {"train/loss": loss}, meta={"view": "interpolate"})
    c.meta["barrier"] = {"train/loss": lm.connect.barrier(c, key="train/loss").as_dict()}
    measured = c.meta["barrier"]["train/loss"]["height"]
    assert measured == pytest.approx(1.0)
    ax = plot.curve(c).axes[0]
    (label,) = [x for x in ax.texts if x.get_text().startswith("barrier")]
    assert label.get_text() == f"barrier {measured:.4g}"
    (arrow,) = [x for x in ax.texts if x.get_text() == ""]
    assert arrow.xy == pytest.approx((0.5, 2.5)) and arrow.xyann == pytest.approx((0.5, 1.5))
    (chord,) = [ln for ln in ax.lines if ln.get_label() == "chord between a and b"]
    assert chord.get_ydata().tolist() == [1.0, 2.0]


def test_fitted_curve_figure_overlays_the_straight_path() -> None:
    t = np.linspace(0.0, 1.0, 11)
    straight = Curve({"alpha": t}, {"train/loss": 1 + 4 * t * (1 - t)}, {"view": "interpolate"})
    bent = Curve(
        {"alpha": t},
        {"train/loss": 1 + 0.2 * t * (1 - t)},
        {"view": "interpolate", "path": "bezier"},
    )
    ax = plot.curve(bent, straight=straight).axes[0]
    (line,) = [ln for ln in ax.lines if ln.get_label() == "straight path: train loss"]
    np.testing.assert_array_equal(line.get_ydata(), straight["loss"])
    assert "bezier curve" in ax.get_title()
    assert "straight path: train loss" in [x.get_text() for x in ax.get_legend().get_texts()]


def test_trajectory_legend_below_the_path_and_start_is_not_theta0() -> None:
    s = _bowl(centred=True, na=9, nb=9)
    s.meta["trajectory"] = {"coords": [[-1.5, 1.0], [-1.0, 0.5], [0.0, 0.0]]}
    fig = plot.trajectory(s)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    texts = [x.get_text() for x in legend.get_texts()]
    assert "start (first checkpoint)" in texts and not any("θ" in x for x in texts)
    # Entirely below the axes: it covers no part of the plane.
    assert legend.get_window_extent().y1 < ax.get_window_extent().y0


def test_spectrum_names_model_and_data_and_marks_the_top_eigenvalues() -> None:
    grid = np.linspace(-1.0, 5.0, 200)
    density = np.exp(-(grid**2) / 0.02)
    meta = {"model": "Sequential", "dataset": "train", "dataset_size": 1437, "top": [4.5, 3.25]}
    sp = Spectrum(grid, density, np.zeros((1, 4)), np.ones((1, 4)) / 4, 0.1, 12, meta)
    ax = plot.spectrum(sp).axes[0]
    assert ax.get_title().startswith(
        "Hessian eigenvalue density: Sequential on train\n1,437 samples"
    )
    marks = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert sorted(ln.get_xdata()[0] for ln in marks) == [3.25, 4.5]
    assert "λ₁ = 4.5" in ax.get_legend().get_texts()[1].get_text()


def test_surface3d_facets_follow_the_height_on_a_coarse_grid() -> None:
    """A 3 x 3 bowl: the four cells share one mean height, so plot_surface alone gives one
    colour; the refined facets range from the minimum to the rim, and θ0 is starred."""
    s = _decades_plane(3)
    s.meta.update(
        view="plane",
        directions=[{"kind": "random", "normalization": "filter", "index": i} for i in (0, 1)],
    )
    fig = plot.surface3d(s, log=False)
    ax = fig.axes[0]
    (surf,) = ax.collections
    heights = np.asarray(surf.get_array())
    assert heights.size >= 48 * 48
    lo, hi = float(s["loss"].min()), float(s["loss"].max())
    assert heights.min() < lo + 0.05 * (hi - lo) and heights.max() > hi - 0.05 * (hi - lo)
    (star,) = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert star.get_label() == "θ0 (trained)"
    assert ax.get_xlabel() == "α"
    assert "α: filter-normalised random direction 1, ‖θ‖-relative" in fig.texts[0].get_text()


def test_connect_writes_the_fitted_curve_over_the_straight_path(
    tmp_path, factories, capsys
) -> None:
    """`lossmap connect`: <kind>_curve.png (not curve_curve.png) holds both paths, the
    straight path's and the curve's figures share the loss's scale."""
    import torch
    import userfactories  # type: ignore[import-not-found]
    from conftest import run_cli
    from torch import nn

    torch.save(userfactories.good()[0].state_dict(), tmp_path / "a.pt")
    torch.manual_seed(7)
    torch.save(
        nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).state_dict(), tmp_path / "b.pt"
    )
    drawn: dict[str, object] = {}
    original = plot.save

    def spy(fig, stem, formats=("png", "pdf")):  # type: ignore[no-untyped-def]
        drawn[Path(stem).name] = ([ln.get_label() for ln in fig.axes[0].lines], _is_log(fig))
        return original(fig, stem, formats)

    import lossmap.plot.files as files

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plot, "save", spy)
        mp.setattr(files, "save", spy)
        out = tmp_path / "c"
        code, _, err = run_cli(
            [
                "connect",
                str(tmp_path / "a.pt"),
                str(tmp_path / "b.pt"),
                "--model",
                "userfactories:good",
                "--epochs",
                "1",
                "--steps",
                "9",
                "--out",
                str(out),
            ],
            capsys,
        )
    assert code == 0, err
    assert (out / "bezier_curve.png").exists() and not (out / "curve_curve.png").exists()
    assert (out / "curve.h5").exists() and (out / "path_curve.png").exists()
    labels, log_curve = drawn["bezier_curve"]
    assert "straight path: train loss" in labels
    assert log_curve == drawn["path_curve"][1]
