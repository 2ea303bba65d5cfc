"""Figures of results: curves, contours, heatmaps and 3-D surfaces (matplotlib).

Every drawing function takes ``ax=`` (a new figure when omitted) and returns the
:class:`~matplotlib.figure.Figure`; nothing is saved, shown or closed, and no backend
is chosen. :func:`save` writes the files and :func:`figures` draws the standard set.

A :class:`~lossmap.results.Surface` stores ``values[k]`` as ``[len(alpha), len(beta)]``
with ``indexing="ij"``; figures put ``alpha`` on the x axis and ``beta`` on the y axis
(matplotlib takes ``Z[y, x]``, so the values are transposed). Non-finite values (NaN)
are masked, and so are values ``<= 0`` on a log scale; titles give the counts.

``log=None`` (the default of the plane figures and of :func:`figures`) picks the scale
of a loss from its values: logarithmic when they are all positive, span at least a
decade, and their median sits nearer the middle of the colour range on a log scale
than on a linear one. A basin far below the rim then still shows its contours, while a
quadratic bowl stays linear; other statistics stay linear. ``True`` / ``False`` force
the scale.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> import lossmap as lm
>>> from lossmap import plot
>>> land = lm.examples.linear_regression()
>>> s = lm.plane(land, "weight", "bias", span=[(0, 6), (-1, 5)], steps=(21, 31))
>>> fig = plot.contour(s)
>>> [float(v) for v in (*fig.axes[0].get_xlim(), *fig.axes[0].get_ylim())]
[0.0, 6.0, -1.0, 5.0]
>>> import matplotlib.pyplot as plt
>>> plt.close(fig)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lossmap.results import Curve, Result, Spectrum, Surface, atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.figure import Figure, SubFigure
    from matplotlib.transforms import Transform

__all__ = [
    "compare",
    "contour",
    "curve",
    "figures",
    "heatmap",
    "save",
    "sharpness_history",
    "spectrum",
    "surface3d",
    "trajectory",
]

LOG_DECADES = 1.0
"""``log=None`` considers a log scale when the positive values span this many decades."""

_LINESTYLES = ("-", "--", ":", "-.")


# ---------------------------------------------------------------------------- helpers
def _figure(ax: Axes) -> Figure:
    """The top-level figure that holds ``ax`` (also inside a subfigure)."""
    from matplotlib.figure import Figure

    fig: Figure | SubFigure | None = ax.get_figure()
    while fig is not None and not isinstance(fig, Figure):
        fig = fig.figure if fig.figure is not fig else None
    if fig is None:
        raise ValueError("the axes given as ax= belong to no figure")
    return fig


def _new_axes(ax: Axes | None, *, figsize: tuple[float, float] = (5.6, 4.4)) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, new = plt.subplots(figsize=figsize, layout="constrained")
    return new


def _check_kind(result: object, cls: type, func: str, hint: str) -> None:
    if not isinstance(result, cls):
        raise TypeError(f"{func}() needs a {cls.__name__}, got {type(result).__name__}; {hint}")


def _title(key: str) -> str:
    """``"train/loss"`` -> ``"train loss"``."""
    return key.replace("/", " ")


def _notes(n_nan: int, n_nonpos: int) -> list[str]:
    notes = []
    if n_nan:
        notes.append(f"{n_nan} non-finite point{'s' * (n_nan != 1)} masked")
    if n_nonpos:
        notes.append(f"{n_nonpos} point{'s' * (n_nonpos != 1)} ≤ 0 masked (log scale)")
    return notes


def _set_title(ax: Axes, title: str, notes: Sequence[str], *, pad: float = 6.0) -> None:
    ax.set_title("\n".join([title, "; ".join(notes)] if notes else [title]), pad=pad)


def _points_down(ax: Axes, points: float) -> Transform:
    """A shift ``points`` typographic points downwards (for artists below the axes)."""
    from matplotlib.transforms import ScaledTranslation

    return ScaledTranslation(0.0, -points / 72.0, _figure(ax).dpi_scale_trans)


def _auto_log(values: np.ndarray, stat: str = "loss") -> bool:
    """Whether ``log=None`` means a log scale for ``values`` (see the module docstring)."""
    v = values[np.isfinite(values)]
    if stat != "loss" or v.size == 0 or v.min() <= 0 or v.max() / v.min() < 10.0**LOG_DECADES:
        return False
    lo, hi, med = float(v.min()), float(v.max()), float(np.median(v))
    mid_lin = (med - lo) / (hi - lo)
    mid_log = math.log(med / lo) / math.log(hi / lo)
    return abs(mid_log - 0.5) < abs(mid_lin - 0.5)


def _masked(values: np.ndarray, log: bool) -> tuple[np.ma.MaskedArray, int, int]:
    """``values`` with NaN (and, for ``log``, values ``<= 0``) masked, and the two counts."""
    z = np.ma.masked_invalid(np.asarray(values, dtype=np.float64))
    n_nan = int(np.ma.count_masked(z))
    n_nonpos = 0
    if log:
        z = np.ma.masked_less_equal(z, 0.0)
        n_nonpos = int(np.ma.count_masked(z)) - n_nan
    return z, n_nan, n_nonpos


def _direction_label(result: Result, i: int, symbol: str) -> str:
    """Axis label from ``meta["directions"][i]`` (and ``meta["view"]``), else ``symbol``."""
    if result.meta.get("view") == "interpolate":
        return "t (0 = a, 1 = b)"
    dirs = result.meta.get("directions")
    d = dirs[i] if isinstance(dirs, list) and i < len(dirs) and isinstance(dirs[i], dict) else {}
    kind = d.get("kind")
    if kind == "axis":
        return str(d.get("label") or d.get("parameter") or symbol)
    if kind == "random":
        norm = d.get("normalization")
        return f"{symbol} (random, {norm}-normalised)" if norm not in (None, "none") else symbol
    if kind == "between":
        return f"{symbol} (b − a)"
    return symbol


def _same_units(result: Surface) -> bool:
    """Both directions of the same kind and normalisation, and spans of similar size."""
    dirs = result.meta.get("directions")
    if not (isinstance(dirs, list) and len(dirs) >= 2 and all(isinstance(d, dict) for d in dirs)):
        return False
    a, b = dirs[0], dirs[1]
    if a.get("kind") is None or a.get("kind") != b.get("kind"):
        return False
    if a.get("normalization") != b.get("normalization"):
        return False
    wa, wb = np.ptp(result.alpha), np.ptp(result.beta)
    return bool(wa > 0 and wb > 0 and 1 / 4 <= wa / wb <= 4)


def _in_range(x: float, coords: np.ndarray) -> bool:
    return bool(coords.size and coords.min() <= x <= coords.max())


def _nice_log_levels(lo: float, hi: float, n: int) -> np.ndarray | None:
    """Round levels ``s * 10**k``, about evenly spaced in log, from ``<= lo`` to ``>= hi``.

    ``s`` runs over the series (1), (1, 3), (1, 2, 5), ... whose count is nearest ``n``;
    ``None`` when the range is too narrow for such levels (under a decade).
    """
    decades = math.log10(hi / lo)
    series: list[tuple[float, ...]] = [
        (1.0,),
        (1.0, 3.0),
        (1.0, 2.0, 5.0),
        (1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
        (1.0, 1.25, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0, 6.3, 8.0),  # Renard's R10, even in log
    ]
    best: np.ndarray | None = None
    for subs in series:
        k0, k1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
        cand = np.array(sorted(s * 10.0**k for k in range(k0, k1 + 1) for s in subs))
        first = max(int(np.searchsorted(cand, lo, side="right")) - 1, 0)
        last = min(int(np.searchsorted(cand, hi, side="left")), len(cand) - 1)
        levels = cand[first : last + 1]
        if best is None or abs(len(levels) - n) < abs(len(best) - n):
            best = levels
    if best is None or len(best) < max(4, n // 2) or decades < 1:
        return None
    return best


def _levels(z: np.ma.MaskedArray, levels: int | Sequence[float], log: bool) -> np.ndarray:
    """Contour levels covering the unmasked values of ``z``."""
    from matplotlib.ticker import MaxNLocator

    if not isinstance(levels, int | np.integer):
        arr = np.asarray(levels, dtype=np.float64)
        if arr.ndim != 1 or arr.size < 1 or not np.all(np.diff(arr) > 0):
            raise ValueError(f"levels must be an integer or increasing numbers, got {levels!r}")
        if log and arr.min() <= 0:
            raise ValueError(f"log=True needs positive levels, got {levels!r}; drop those <= 0")
        return arr
    if isinstance(levels, bool) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2 or a list of values, got {levels!r}")
    lo, hi = float(z.min()), float(z.max())
    if log:
        nice = _nice_log_levels(lo, hi, int(levels))
        if nice is not None:
            return nice
    locator = MaxNLocator(int(levels), steps=[1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10])
    out = np.asarray(locator.tick_values(lo, hi), dtype=np.float64)
    if log:
        out = out[out > 0]
        if out.size == 0 or out[0] > lo:
            out = np.concatenate([[lo], out])
    return out


def _norm(z: np.ma.MaskedArray, log: bool, levels: np.ndarray | None = None) -> Normalize:
    from matplotlib.colors import LogNorm, Normalize

    lo, hi = float(z.min()), float(z.max())
    if levels is not None:
        lo, hi = min(lo, float(levels[0])), max(hi, float(levels[-1]))
    return LogNorm(lo, hi) if log else Normalize(lo, hi)


def _line_cmap() -> Colormap:
    """Viridis without its palest yellow, so that every contour line shows on white."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.88, 256)), name="viridis_lines")


def _label_fmt(levels: np.ndarray) -> Callable[[float], str]:
    """Short plain labels with enough digits to tell neighbouring levels apart."""
    steps = np.diff(levels)
    rel = float(np.min(steps / np.maximum(np.abs(levels[1:]), 1e-300))) if steps.size else 1.0
    digits = int(min(max(2, math.ceil(-math.log10(max(rel, 1e-12))) + 1), 6))

    def fmt(v: float) -> str:
        if v == 0 or 1e-4 <= abs(v) < 1e6:
            text = str(np.format_float_positional(v, precision=digits, fractional=False, trim="-"))
        else:
            text = f"{v:.{digits}g}"
        return text.replace("-", "\u2212")  # the minus sign of matplotlib's tick labels

    return fmt


def _empty(ax: Axes, title: str, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_title(title)


def _surface_axes(ax: Axes, result: Surface) -> None:
    ax.set_xlabel(_direction_label(result, 0, "α"))
    ax.set_ylabel(_direction_label(result, 1, "β"))
    if _same_units(result):
        ax.set_aspect("equal", adjustable="box")


def _mark_theta0(ax: Axes, result: Surface) -> None:
    t0 = result.theta0
    if t0 is not None and _in_range(t0[0], result.alpha) and _in_range(t0[1], result.beta):
        ax.plot(
            [t0[0]],
            [t0[1]],
            linestyle="none",
            marker="*",
            markersize=15,
            color="#d62728",
            markeredgecolor="white",
            zorder=5,
            label="θ0 (trained)",
        )


def _prepare(
    result: Surface, key: str, log: bool | None
) -> tuple[str, np.ma.MaskedArray, bool, list[str]]:
    """Full key, values transposed to ``[len(beta), len(alpha)]`` and masked, log, notes."""
    full = result.key(key)
    values = result.values[full]
    use_log = _auto_log(values, full.split("/", 1)[1]) if log is None else bool(log)
    z, n_nan, n_nonpos = _masked(values.T, use_log)
    return full, z, use_log, _notes(n_nan, n_nonpos)


def _cbar_label(full: str, log: bool) -> str:
    return f"{full.split('/', 1)[1]}" + (" (log scale)" if log else "")


# ---------------------------------------------------------------------------- figures
def curve(
    result: Curve,
    *,
    metrics: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    ax: Axes | None = None,
    logy: bool | None = False,
    mark_origin: bool = True,
) -> Figure:
    """The values of a :class:`~lossmap.results.Curve` against ``alpha``.

    The loss goes on the left axis, other metrics (accuracy) on a twin right axis; one
    colour per metric, one line style per data set (train solid, test dashed).

    Args:
        result: a line or an interpolation path.
        metrics: which statistics (default all, e.g. ``["loss", "accuracy"]``).
        datasets: which data sets (default all).
        ax: axes to draw in (default a new figure).
        logy: log scale for the left axis (values ``<= 0`` masked); ``None``: automatic.
        mark_origin: a vertical line at θ0 (``result.theta0``), or at ``a`` and ``b``
            (``t = 0, 1``) for an interpolation path.

    Returns:
        The figure.
    """
    _check_kind(result, Curve, "curve", "use contour(), heatmap() or surface3d() for a plane")
    metrics = list(result.metrics if metrics is None else metrics)
    datasets = list(result.datasets if datasets is None else datasets)
    for name, given, have in (
        ("metrics", metrics, result.metrics),
        ("datasets", datasets, result.datasets),
    ):
        bad = [m for m in given if m not in have]
        if bad or not given:
            raise ValueError(f"{name} {given!r}: unknown {bad!r}; available: {have}")
    keys = [f"{d}/{m}" for m in metrics for d in datasets if f"{d}/{m}" in result.values]
    if not keys:
        raise ValueError(f"no values for metrics {metrics} on data sets {datasets}")

    ax = _new_axes(ax, figsize=(5.6, 3.8))
    left_metric = "loss" if "loss" in metrics else metrics[0]
    right = [m for m in metrics if m != left_metric]
    ax2 = ax.twinx() if right else None
    if logy is None:
        left = [result.values[k] for k in keys if k.endswith("/" + left_metric)]
        logy = _auto_log(np.concatenate(left), left_metric)
    handles = []
    n_nan = n_nonpos = 0
    for k in keys:
        d, m = k.split("/", 1)
        on_left = m == left_metric
        target = ax if on_left or ax2 is None else ax2
        y, nn, npos = _masked(result.values[k], bool(logy) and on_left)
        n_nan, n_nonpos = n_nan + nn, n_nonpos + npos
        (h,) = target.plot(
            result.alpha,
            y,
            color=f"C{metrics.index(m)}",
            linestyle=_LINESTYLES[datasets.index(d) % len(_LINESTYLES)],
            linewidth=1.6,
            label=_title(k),
        )
        handles.append(h)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(left_metric)
    if right:
        ax.yaxis.label.set_color(f"C{metrics.index(left_metric)}")
    if ax2 is not None:
        ax2.set_ylabel(", ".join(right), color=f"C{metrics.index(right[0])}")
        if all(m == "accuracy" for m in right):
            ax2.set_ylim(-0.02, 1.02)
    ax.set_xlabel(_direction_label(result, 0, "α"))
    ax.set_xlim(float(result.alpha.min()), float(result.alpha.max()))

    marks: list[tuple[float, str]] = []
    if mark_origin:
        t0 = result.theta0
        marks = [(t0[0], "θ0")] if t0 is not None else []
        if result.meta.get("view") == "interpolate":
            marks = [(0.0, "a"), (1.0, "b")]
        marks = [(x, text) for x, text in marks if _in_range(x, result.alpha)]
    for x, text in marks:
        ax.axvline(x, color="0.45", linewidth=0.9, linestyle=":", zorder=0)
        ax.annotate(
            text,
            xy=(x, 1.0),
            xycoords=ax.get_xaxis_transform(),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
            color="0.3",
        )
    ax.grid(True, color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    # Below the axes: no place inside is free of both axes' lines in general.
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=ax.transAxes + _points_down(ax, 36),
        ncols=min(len(handles), 4),
        fontsize=8,
        frameon=False,
        handlelength=2.6,
    )
    _set_title(ax, " and ".join(metrics), _notes(n_nan, n_nonpos), pad=14.0 if marks else 6.0)
    return _figure(ax)


def contour(
    result: Surface,
    key: str = "loss",
    *,
    ax: Axes | None = None,
    levels: int | Sequence[float] = 20,
    log: bool | None = None,
    mark_origin: bool = True,
    filled: bool = False,
) -> Figure:
    """Contour lines of one statistic of a plane, with labelled levels and a colour bar.

    Args:
        result: a plane.
        key: ``"loss"`` (first data set), ``"test/loss"``, ``"accuracy"``, ...
        ax: axes to draw in (default a new figure).
        levels: about how many levels (nice round values), or the levels themselves.
        log: log colour scale and log-spaced levels (values ``<= 0`` masked);
            ``None``: automatic (see the module docstring).
        mark_origin: a star at θ0 (``result.theta0``) when it is in the plane.
        filled: filled contours (``contourf``) under thin labelled lines.

    Returns:
        The figure.
    """
    _check_kind(result, Surface, "contour", "use curve() for a line or a path")
    ax = _new_axes(ax)
    full, z, log, notes = _prepare(result, key, log)
    _surface_axes(ax, result)
    if z.count() == 0:
        _empty(ax, _title(full), "no finite values" + (" > 0" if log else ""))
        return _figure(ax)
    fig = _figure(ax)
    lv = _levels(z, levels, log)
    norm = _norm(z, log, lv)
    fmt = _label_fmt(lv)
    x, y = result.alpha, result.beta
    if z.min() == z.max():
        mesh = ax.pcolormesh(x, y, z, shading="nearest", cmap="viridis", norm=norm)
        fig.colorbar(mesh, ax=ax, label=_cbar_label(full, log))
        notes.append(f"constant {float(z.min()):.4g}")
    else:
        if filled:
            cf = ax.contourf(x, y, z, levels=lv, cmap="viridis", norm=norm)
            cs = ax.contour(x, y, z, levels=lv, colors="k", linewidths=0.4, alpha=0.6)
            cbar = fig.colorbar(cf, ax=ax, label=_cbar_label(full, log))
        else:
            cs = ax.contour(x, y, z, levels=lv, cmap=_line_cmap(), norm=norm, linewidths=1.0)
            cbar = fig.colorbar(cs, ax=ax, label=_cbar_label(full, log))
        drawn = [lev for lev, segs in zip(cs.levels, cs.allsegs, strict=True) if len(segs)]
        labelled = drawn[:: max(1, math.ceil(len(drawn) / 10))]
        ax.clabel(cs, labelled, inline=True, fontsize=7, fmt=fmt)
        ticks = lv[:: max(1, math.ceil(len(lv) / 8))]
        cbar.set_ticks(list(ticks), labels=[fmt(t) for t in ticks])
        cbar.ax.minorticks_off()
        ax.set_xlim(float(x.min()), float(x.max()))
        ax.set_ylim(float(y.min()), float(y.max()))
    if mark_origin:
        _mark_theta0(ax, result)
    _set_title(ax, _title(full), notes)
    return fig


def heatmap(
    result: Surface,
    key: str = "loss",
    *,
    ax: Axes | None = None,
    log: bool | None = None,
    mark_origin: bool = True,
) -> Figure:
    """One statistic of a plane as coloured cells centred on the grid points, with a colour bar.

    Args:
        result: a plane.
        key: ``"loss"`` (first data set), ``"test/loss"``, ``"accuracy"``, ...
        ax: axes to draw in (default a new figure).
        log: log colour scale (values ``<= 0`` masked); ``None``: automatic.
        mark_origin: a star at θ0 (``result.theta0``) when it is in the plane.

    Returns:
        The figure.
    """
    _check_kind(result, Surface, "heatmap", "use curve() for a line or a path")
    ax = _new_axes(ax)
    full, z, log, notes = _prepare(result, key, log)
    _surface_axes(ax, result)
    if z.count() == 0:
        _empty(ax, _title(full), "no finite values" + (" > 0" if log else ""))
        return _figure(ax)
    fig = _figure(ax)
    mesh = ax.pcolormesh(
        result.alpha,
        result.beta,
        z,
        shading="nearest",
        cmap="viridis",
        norm=_norm(z, log),
        rasterized=True,
    )
    fig.colorbar(mesh, ax=ax, label=_cbar_label(full, log))
    if mark_origin:
        _mark_theta0(ax, result)
    _set_title(ax, _title(full), notes)
    return fig


def surface3d(
    result: Surface,
    key: str = "loss",
    *,
    ax: Axes | None = None,
    log: bool | None = None,
) -> Figure:
    """One statistic of a plane as a 3-D surface (masked points leave gaps).

    Args:
        result: a plane.
        key: ``"loss"`` (first data set), ``"test/loss"``, ``"accuracy"``, ...
        ax: 3-D axes to draw in (``projection="3d"``; default a new figure).
        log: plot ``log10`` of the values (values ``<= 0`` masked); ``None``: automatic.

    Returns:
        The figure.
    """
    from matplotlib.ticker import MaxNLocator
    from mpl_toolkits.mplot3d import Axes3D

    _check_kind(result, Surface, "surface3d", "use curve() for a line or a path")
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.figure(figsize=(6.0, 5.0), layout="constrained").add_subplot(projection="3d")
    if not isinstance(ax, Axes3D):
        raise TypeError(
            f"surface3d() needs 3-D axes, got {type(ax).__name__}; "
            "make them with fig.add_subplot(projection='3d')"
        )
    full, z, log, notes = _prepare(result, key, log)
    ax.set_xlabel(_direction_label(result, 0, "α"))
    ax.set_ylabel(_direction_label(result, 1, "β"))
    stat = full.split("/", 1)[1]
    ax.set_zlabel(f"log₁₀ {stat}" if log else stat)
    if z.count() == 0:
        ax.set_title(_title(full) + "\nno finite values" + (" > 0" if log else ""))
        return _figure(ax)
    zz = np.ma.log10(z) if log else z
    x, y = np.meshgrid(result.alpha, result.beta)  # [len(beta), len(alpha)], like zz
    rows, cols = zz.shape
    surf = ax.plot_surface(
        x,
        y,
        zz.filled(np.nan),
        cmap="viridis",
        vmin=float(zz.min()),
        vmax=float(zz.max()),
        rcount=min(rows, 120),
        ccount=min(cols, 120),
        linewidth=0,
        antialiased=False,
        rasterized=True,
    )
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(5, steps=[1, 2, 2.5, 5, 10]))
    ax.tick_params(labelsize=8)
    _figure(ax).colorbar(surf, ax=ax, shrink=0.6, pad=0.1, label=ax.get_zlabel())
    _set_title(ax, _title(full), notes)
    return _figure(ax)


def spectrum(result: Spectrum, *, ax: Axes | None = None, logy: bool = True) -> Figure:
    """A Hessian eigenvalue density (:class:`~lossmap.results.Spectrum`) against λ.

    Args:
        result: the density, e.g. from stochastic Lanczos quadrature.
        ax: axes to draw in (default a new figure).
        logy: log density axis (values ``<= 0`` masked), where outliers show.

    Returns:
        The figure.
    """
    _check_kind(result, Spectrum, "spectrum", "use curve() or contour() for slices")
    ax = _new_axes(ax, figsize=(5.6, 3.8))
    # Zeros of the density are expected on a log axis: masked, not reported.
    y, n_nan, _ = _masked(result.density, logy)
    ax.plot(result.grid, y, color="C0", linewidth=1.4)
    if logy and y.count():
        ax.set_yscale("log")
        ax.set_ylim(max(float(y.min()), float(y.max()) * 1e-12), float(y.max()) * 3)
    if _in_range(0.0, np.asarray(result.grid)):
        ax.axvline(0.0, color="0.45", linewidth=0.9, linestyle=":", zorder=0)
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density")
    ax.grid(True, color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    probes = np.shape(result.nodes)[0] if np.ndim(result.nodes) == 2 else None
    info = f"σ = {result.sigma:.3g}" + (f", {probes} probes" if probes else "")
    notes = [info, *_notes(n_nan, 0)]
    _set_title(ax, "Hessian eigenvalue density", ["; ".join(notes)])
    return _figure(ax)


# ---------------------------------------------------------------------------- files
def save(
    fig: Figure, path_stem: str | os.PathLike[str], formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write ``fig`` as ``path_stem.<format>`` for each format (PNG at 150 dpi).

    Parent folders are created; the figure is left open. A ``path_stem`` that already
    ends in one of the formats (``"contour.png"``) loses that suffix.

    Args:
        fig: the figure.
        path_stem: file name without the suffix, e.g. ``"runs/p/train_loss_contour"``.
        formats: file formats matplotlib writes (``"png"``, ``"pdf"``, ``"svg"``, ...).

    Returns:
        The paths written.
    """
    if isinstance(formats, str):
        formats = (formats,)
    supported = fig.canvas.get_supported_filetypes()
    bad = [f for f in formats if f not in supported]
    if bad or not formats:
        raise ValueError(
            f"formats {list(formats)!r}: choose from {sorted(supported)}, e.g. ('png', 'pdf')"
        )
    stem = Path(path_stem)
    if stem.suffix.lstrip(".") in formats:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        path = stem.parent / f"{stem.name}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150 if fmt == "png" else "figure", bbox_inches="tight")
        out.append(path)
    return out


def _file_part(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "set"


def figures(
    result: Result | Spectrum,
    out_dir: str | os.PathLike[str],
    *,
    log: bool | None = None,
    prefix: str = "",
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Draw and save the standard figures of a result into ``out_dir``.

    A curve: ``curve.<fmt>`` (every statistic and data set). A plane, for each data set:
    ``<set>_loss_contour``, ``<set>_loss_heatmap``, ``<set>_loss_surface3d``, and a
    contour of every other statistic (``<set>_accuracy_contour``). A spectrum:
    ``spectrum.<fmt>``. Each figure is closed after saving.

    Args:
        result: a :class:`~lossmap.results.Curve`, :class:`~lossmap.results.Surface` or
            :class:`~lossmap.results.Spectrum`.
        out_dir: folder for the files (created).
        log: log scale for the loss (``None``: automatic); other statistics stay linear.
        prefix: put before every file name (e.g. ``"surface_"``).
        formats: file formats, as in :func:`save`.

    Returns:
        The paths written.
    """
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Callable[[], Figure]]] = []
    if isinstance(result, Curve):
        jobs.append(("curve", lambda: curve(result, logy=log)))
    elif isinstance(result, Spectrum):
        jobs.append(("spectrum", lambda: spectrum(result, logy=log is not False)))
    elif isinstance(result, Surface):
        for ds in result.datasets:
            for stat in result.metrics:
                key = f"{ds}/{stat}"
                if key not in result.values:
                    continue
                stem = f"{_file_part(ds)}_{_file_part(stat)}"
                if stat == "loss":
                    jobs.append((f"{stem}_contour", _bind(contour, result, key, log=log)))
                    jobs.append((f"{stem}_heatmap", _bind(heatmap, result, key, log=log)))
                    jobs.append((f"{stem}_surface3d", _bind(surface3d, result, key, log=log)))
                else:
                    jobs.append((f"{stem}_contour", _bind(contour, result, key, log=False)))
    else:
        raise TypeError(
            f"figures() needs a Curve, Surface or Spectrum, got {type(result).__name__}"
        )
    paths: list[Path] = []
    for stem, draw in jobs:
        fig = draw()
        try:
            paths += save(fig, out / f"{prefix}{stem}", formats)
        finally:
            plt.close(fig)
    return paths


def _bind(
    func: Callable[..., Figure], result: Surface, key: str, **kw: Any
) -> Callable[[], Figure]:
    return lambda: func(result, key, **kw)


# ---------------------------------------------------------------------- trajectories
def _pc_label(result: Surface, i: int, explained: Sequence[float] | None) -> str:
    """``"PC1 (93.1 %)"`` from ``explained`` or the surface's PCA direction metadata."""
    ratio: object = None
    if explained is not None and i < len(explained):
        ratio = explained[i]
    else:
        dirs = result.meta.get("directions")
        d = dirs[i] if isinstance(dirs, list) and i < len(dirs) else None
        if isinstance(d, dict) and d.get("kind") == "pca":
            ratio = d.get("explained_variance_ratio")
        if ratio is None:
            traj = result.meta.get("trajectory")
            ev = traj.get("explained_variance_ratio") if isinstance(traj, dict) else None
            if isinstance(ev, list) and i < len(ev):
                ratio = ev[i]
    if isinstance(ratio, int | float) and math.isfinite(ratio):
        return f"PC{i + 1} ({100 * ratio:.1f} %)"
    return f"PC{i + 1}"


def trajectory(
    surface: Surface,
    coords: np.ndarray | Sequence[Sequence[float]] | None = None,
    *,
    key: str = "loss",
    ax: Axes | None = None,
    explained: Sequence[float] | None = None,
    levels: int | Sequence[float] = 20,
    log: bool | None = None,
    filled: bool = False,
    color: str = "#d62728",
    arrows: int = 8,
) -> Figure:
    """An optimisation path drawn over the contours of its PCA plane (Li et al. 2018, §7).

    Args:
        surface: the plane, e.g. from :func:`lossmap.trajectory.pca_plane`.
        coords: the path's coordinates ``[n_checkpoints, 2]`` on the plane's axes;
            default ``surface.meta["trajectory"]["coords"]``.
        key: the statistic to contour (``"loss"``, ``"test/loss"``, ...).
        ax: axes to draw in (default a new figure).
        explained: explained variance ratio per axis for the labels
            (``"PC1 (93.1 %)"``); default from the surface's direction metadata.
        levels, log, filled: as in :func:`contour`.
        color: colour of the path.
        arrows: about how many arrowheads show the direction of travel (0: none).

    Returns:
        The figure: the path as a line with markers, its start (θ_0, a hollow circle)
        and end (the final point, a star) marked.
    """
    _check_kind(surface, Surface, "trajectory", "it draws a path over a plane")
    if coords is None:
        traj = surface.meta.get("trajectory")
        if not (isinstance(traj, dict) and traj.get("coords") is not None):
            raise ValueError(
                "no coords given and the surface has no meta['trajectory']['coords']; "
                "pass coords= (e.g. from lossmap.directions.project) or use pca_plane()"
            )
        coords = traj["coords"]
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] < 1:
        raise ValueError(f"coords must be an array [n_points, 2], got shape {c.shape}")
    if not isinstance(arrows, int) or arrows < 0:
        raise ValueError(f"arrows must be an integer >= 0, got {arrows!r}")
    ax = _new_axes(ax, figsize=(5.8, 4.8))
    fig = contour(surface, key, ax=ax, levels=levels, log=log, mark_origin=False, filled=filled)
    ax.set_xlabel(_pc_label(surface, 0, explained))
    ax.set_ylabel(_pc_label(surface, 1, explained))
    # Both axes are distances in parameter space: same scale, unless that would squash
    # the plane into a strip (then the labels' percentages tell the proportions).
    wa, wb = float(np.ptp(surface.alpha)), float(np.ptp(surface.beta))
    ax.set_aspect("equal" if wa > 0 and wb > 0 and 1 / 2.5 <= wa / wb <= 2.5 else "auto")
    ax.plot(
        c[:, 0],
        c[:, 1],
        color=color,
        linewidth=1.4,
        marker="o",
        markersize=3.5,
        markeredgecolor="white",
        markeredgewidth=0.5,
        zorder=6,
        label=f"path ({len(c)} checkpoints)",
    )
    seg = np.linalg.norm(np.diff(c, axis=0), axis=1) if len(c) > 1 else np.zeros(0)
    if arrows and seg.size and seg.max() > 0:
        # Arrowheads at evenly spaced distances along the path, mid-segment.
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        for s in np.linspace(0, cum[-1], arrows + 2)[1:-1]:
            i = int(min(np.searchsorted(cum, s, side="right") - 1, len(seg) - 1))
            if seg[i] == 0:
                continue
            mid = 0.5 * (c[i] + c[i + 1])
            ax.annotate(
                "",
                xy=mid + 0.01 * (c[i + 1] - c[i]) / seg[i] * cum[-1],
                xytext=mid,
                arrowprops={"arrowstyle": "-|>", "color": color, "lw": 0, "mutation_scale": 12},
                zorder=7,
            )
    ax.plot(
        [c[0, 0]],
        [c[0, 1]],
        linestyle="none",
        marker="o",
        markersize=10,
        markerfacecolor="none",
        markeredgecolor=color,
        markeredgewidth=2,
        zorder=7,
        label="start θ₀",
    )
    ax.plot(
        [c[-1, 0]],
        [c[-1, 1]],
        linestyle="none",
        marker="*",
        markersize=15,
        color=color,
        markeredgecolor="white",
        zorder=8,
        label="final θₙ",
    )
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    n = len(c)
    ax.set_title(f"{_title(surface.key(key))} on the PCA plane of {n} checkpoints")
    return fig


def _history_arrays(
    label: str, h: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float | None]:
    """``(lambda steps, lambdas, loss steps, losses, 2/η or None)`` from a history."""
    if hasattr(h, "sharpness_steps") and hasattr(h, "loss"):
        hist: Any = h  # a lossmap.trajectory.SharpnessHistory (not imported: no torch here)
        loss = np.asarray(hist.loss, dtype=np.float64)
        return (
            np.asarray(hist.sharpness_steps, dtype=np.float64),
            np.asarray(hist.sharpness, dtype=np.float64),
            np.arange(len(loss), dtype=np.float64),
            loss,
            float(hist.threshold),
        )
    if isinstance(h, tuple | list) and len(h) == 3:
        steps, lams, losses = (np.asarray(a, dtype=np.float64) for a in h)
        if steps.shape != lams.shape or steps.ndim != 1:
            raise ValueError(
                f"history {label!r}: steps and lambdas must be 1-D of one length, "
                f"got {steps.shape} and {lams.shape}"
            )
        loss_steps = steps if losses.shape == steps.shape else np.arange(len(losses), dtype=float)
        return steps, lams, loss_steps, losses, None
    raise TypeError(
        f"history {label!r} must be a SharpnessHistory or a tuple (steps, lambdas, losses), "
        f"got {type(h).__name__}"
    )


def sharpness_history(
    histories: Mapping[str, object],
    thresholds: Mapping[str, float] | None = None,
    *,
    axes: Sequence[Axes] | None = None,
    logloss: bool = True,
    title: str | None = "Sharpness during full-batch gradient descent",
) -> Figure:
    """λ_max over training steps for several runs, with their 2/η lines, and the loss below.

    The picture of Cohen et al. 2021 ("Gradient Descent on Neural Networks Typically
    Occurs at the Edge of Stability"): λ_max rises until it reaches the dashed line
    2/η of its run, then hovers there.

    Args:
        histories: ``{label: history}`` where a history is a
            :class:`~lossmap.trajectory.SharpnessHistory` or a tuple
            ``(steps, lambdas, losses)`` (``losses`` either at ``steps`` or one per step
            from 0).
        thresholds: ``{label: 2/η}``; default from the histories that know their η.
        axes: two axes (sharpness, loss) to draw in; default a new figure.
        logloss: log scale for the loss.
        title: figure title (``None``: none).

    Returns:
        The figure.
    """
    if not histories:
        raise ValueError("histories is empty; pass {label: history} for at least one run")
    thresholds = dict(thresholds or {})
    unknown = [k for k in thresholds if k not in histories]
    if unknown:
        raise ValueError(f"thresholds for unknown runs {unknown}; runs: {list(histories)}")
    if axes is None:
        import matplotlib.pyplot as plt

        _, (ax_l, ax_s) = plt.subplots(
            2, 1, figsize=(6.4, 5.6), sharex=True, layout="constrained", height_ratios=(3, 2)
        )
    else:
        if len(axes) != 2:
            raise ValueError(f"axes must be two axes (sharpness, loss), got {len(axes)}")
        ax_l, ax_s = axes
    for i, (label, h) in enumerate(histories.items()):
        steps, lams, lsteps, losses, thr = _history_arrays(label, h)
        thr = thresholds.get(label, thr)
        col = f"C{i}"
        ax_l.plot(steps, lams, color=col, linewidth=1.3, label=label)
        if thr is not None:
            ax_l.axhline(thr, color=col, linestyle="--", linewidth=1.0, alpha=0.9)
            ax_l.annotate(
                f"2/η = {thr:.3g}",
                xy=(1.0, thr),
                xycoords=ax_l.get_yaxis_transform(),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
                color=col,
            )
        y, _, _ = _masked(losses, logloss)
        ax_s.plot(lsteps, y, color=col, linewidth=1.0, label=label)
    ax_l.set_ylabel("sharpness λ_max")
    ax_l.set_ylim(bottom=0)
    ax_l.legend(loc="lower right", fontsize=8)
    ax_l.grid(True, color="0.92", linewidth=0.6)
    ax_s.set_ylabel("training loss")
    ax_s.set_xlabel("step")
    if logloss:
        ax_s.set_yscale("log")
    ax_s.grid(True, color="0.92", linewidth=0.6, which="both")
    fig = _figure(ax_l)
    if title:
        fig.suptitle(title)
    return fig


def compare(
    curves: Mapping[str, Curve],
    key: str = "loss",
    *,
    ax: Axes | None = None,
    logy: bool | None = False,
    xlabel: str = "α",
    title: str | None = None,
) -> Figure:
    """Several :class:`~lossmap.results.Curve` results on one axis, one line each.

    Args:
        curves: ``{label: curve}``, e.g. the loss along a worst-case and a random
            direction.
        key: the statistic (``"loss"``, ``"test/loss"``, ``"accuracy"``, ...).
        ax: axes to draw in (default a new figure).
        logy: log scale (values ``<= 0`` masked); ``None``: automatic.
        xlabel: the coordinate's label.
        title: the title (default: the statistic).

    Returns:
        The figure.
    """
    if not curves:
        raise ValueError("curves is empty; pass {label: Curve}")
    for label, c in curves.items():
        _check_kind(c, Curve, "compare", f"curves[{label!r}] must be a Curve")
    ax = _new_axes(ax)
    values = {label: np.asarray(c[key], dtype=float) for label, c in curves.items()}
    stacked = np.concatenate([v[np.isfinite(v)] for v in values.values()] or [np.zeros(0)])
    log = _auto_log(stacked, key.split("/")[-1]) if logy is None else bool(logy)
    for label, c in curves.items():
        v, _, _ = _masked(values[label], log)
        ax.plot(c.alpha, v, label=label, lw=1.6)
    if log:
        ax.set_yscale("log")
    ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_title(key))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title if title is not None else _title(key))
    return _figure(ax)
