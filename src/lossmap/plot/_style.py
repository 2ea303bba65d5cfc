"""Shared by the figure modules: axes and figures, titles and their notes, masking, the
automatic log scale, axis labels from a result's direction metadata."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lossmap.results import Result

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure
    from matplotlib.transforms import Transform

COLORMAP = "viridis"
"""The colour map of every plane, in the figures and in the HTML report
(:mod:`lossmap.report`): perceptually uniform and readable with colour-blindness."""

THETA0_MARKER: dict[str, Any] = {
    "linestyle": "none",
    "marker": "*",
    "color": "#d62728",
    "markeredgecolor": "white",
    "label": "θ0 (trained)",
}
"""How θ0 (the trained point) is marked on a plane, flat or 3-D (the caller gives size
and zorder)."""

LOG_DECADES = 1.0
"""``log=None`` considers a log scale when the positive values span this many decades."""


def figure_of(ax: Axes) -> Figure:
    """The top-level figure that holds ``ax`` (also inside a subfigure)."""
    from matplotlib.figure import Figure

    fig: Figure | SubFigure | None = ax.get_figure()
    while fig is not None and not isinstance(fig, Figure):
        fig = fig.figure if fig.figure is not fig else None
    if fig is None:
        raise ValueError("the axes given as ax= belong to no figure")
    return fig


def new_axes(ax: Axes | None, *, figsize: tuple[float, float] = (5.6, 4.4)) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, new = plt.subplots(figsize=figsize, layout="constrained")
    return new


def check_kind(result: object, cls: type, func: str, hint: str) -> None:
    if not isinstance(result, cls):
        raise TypeError(f"{func}() needs a {cls.__name__}, got {type(result).__name__}; {hint}")


def key_title(key: str) -> str:
    """``"train/loss"`` -> ``"train loss"``."""
    return key.replace("/", " ")


def mask_notes(n_nan: int, n_nonpos: int) -> list[str]:
    notes = []
    if n_nan:
        notes.append(f"{n_nan} non-finite point{'s' * (n_nan != 1)} masked")
    if n_nonpos:
        notes.append(f"{n_nonpos} point{'s' * (n_nonpos != 1)} ≤ 0 masked (log scale)")
    return notes


def set_title_notes(ax: Axes, title: str, notes: Sequence[str], *, pad: float = 6.0) -> None:
    ax.set_title("\n".join([title, "; ".join(notes)] if notes else [title]), pad=pad)


def points_down(ax: Axes, points: float) -> Transform:
    """A shift ``points`` typographic points downwards (for artists below the axes)."""
    from matplotlib.transforms import ScaledTranslation

    return ScaledTranslation(0.0, -points / 72.0, figure_of(ax).dpi_scale_trans)


def legend_below(ax: Axes) -> None:
    """The legend under the axes (below the x label), where it covers neither the data
    nor the title (``loc="best"`` only avoids data points)."""
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=ax.transAxes + points_down(ax, 36),
        ncols=3,
        fontsize=8,
        frameon=False,
    )


def auto_log(values: np.ndarray, stat: str = "loss") -> bool:
    """Whether ``log=None`` means a log scale for ``values`` (see the module docstring)."""
    v = values[np.isfinite(values)]
    if stat != "loss" or v.size == 0 or v.min() <= 0 or v.max() / v.min() < 10.0**LOG_DECADES:
        return False
    lo, hi, med = float(v.min()), float(v.max()), float(np.median(v))
    mid_lin = (med - lo) / (hi - lo)
    mid_log = math.log(med / lo) / math.log(hi / lo)
    return abs(mid_log - 0.5) < abs(mid_lin - 0.5)


def log_scales(*results: Result) -> dict[str, bool]:
    """One scale per quantity for every figure of a run: ``{statistic: log?}``.

    :func:`auto_log`'s rule applied once to *all* the values of each statistic (every
    data set of every result given: a run's line, plane and path), so the line, the
    contour, the heatmap and the 3-D surface of one run agree on the loss's scale.

    >>> from lossmap.results import Curve
    >>> a = Curve({"alpha": [0, 1, 2]}, {"train/loss": [0.1, 0.2, 100.0]})
    >>> b = Curve({"alpha": [0, 1, 2]}, {"test/loss": [0.3, 0.4, 0.5], "test/accuracy": [1, 1, 1]})
    >>> log_scales(a, b)
    {'loss': True, 'accuracy': False}
    """
    pooled: dict[str, list[np.ndarray]] = {}
    for r in results:
        for key, v in r.values.items():
            pooled.setdefault(key.split("/", 1)[-1], []).append(np.ravel(v))
    return {stat: auto_log(np.concatenate(vs), stat) for stat, vs in pooled.items()}


def scale_for(log: bool | Mapping[str, bool] | None, stat: str, values: np.ndarray) -> bool:
    """The scale of one figure: ``log`` itself (a bool), its entry for ``stat`` (a
    mapping from :func:`log_scales`), else :func:`auto_log` of ``values``."""
    if isinstance(log, Mapping):
        log = log.get(stat)
    return auto_log(values, stat) if log is None else bool(log)


def masked(values: np.ndarray, log: bool) -> tuple[np.ma.MaskedArray, int, int]:
    """``values`` with NaN (and, for ``log``, values ``<= 0``) masked, and the two counts."""
    z = np.ma.masked_invalid(np.asarray(values, dtype=np.float64))
    n_nan = int(np.ma.count_masked(z))
    n_nonpos = 0
    if log:
        z = np.ma.masked_less_equal(z, 0.0)
        n_nonpos = int(np.ma.count_masked(z)) - n_nan
    return z, n_nan, n_nonpos


_RANDOM_UNITS = {
    "filter": "filter-normalised random direction {n}, ‖θ‖-relative",
    "layer": "layer-normalised random direction {n}, ‖θ‖-relative",
    "model": "random direction {n}, ‖d‖ = ‖θ‖",
    "unit": "random direction {n}, ‖d‖ = 1",
    "none": "raw Gaussian direction {n}",
}


def direction_label(result: Result, i: int, symbol: str) -> str:
    """Axis label from ``meta["directions"][i]`` (and ``meta["view"]``): what the
    coordinate is and its units, e.g. ``"α: filter-normalised random direction 1,
    ‖θ‖-relative"`` (Li et al. 2018: each filter of the direction has the norm of θ's
    filter, so α = 1 moves every filter by its own size); else ``symbol``."""
    if result.meta.get("view") == "interpolate":
        return "t (0 = a, 1 = b)"
    dirs = result.meta.get("directions")
    d = dirs[i] if isinstance(dirs, list) and i < len(dirs) and isinstance(dirs[i], dict) else {}
    kind = d.get("kind")
    index = d.get("index")
    n = int(index) + 1 if isinstance(index, int) else i + 1
    if kind == "axis":
        return str(d.get("label") or d.get("parameter") or symbol)
    if kind == "random" and d.get("normalization") in _RANDOM_UNITS:
        return f"{symbol}: " + _RANDOM_UNITS[str(d["normalization"])].format(n=n)
    if kind == "hessian":
        lam = d.get("eigenvalue")
        at = f" (λ = {lam:.4g})" if isinstance(lam, int | float) else ""
        return f"{symbol}: Hessian eigenvector {n}{at}, ‖d‖ = 1"
    if kind == "between":
        return f"{symbol}: b − a"
    if kind == "pca":
        return f"{symbol}: principal component {n}"
    return symbol


def in_range(x: float, coords: np.ndarray) -> bool:
    return bool(coords.size and coords.min() <= x <= coords.max())
