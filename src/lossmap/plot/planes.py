"""A plane's figures: contour lines, heatmap and 3-D surface of one statistic.

A :class:`~lossmap.results.Surface` stores ``values[k]`` as ``[len(alpha), len(beta)]``
with ``indexing="ij"``; these figures put ``alpha`` on x and ``beta`` on y (the values
are transposed, as matplotlib takes ``Z[y, x]``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from lossmap.plot._style import (
    COLORMAP,
    THETA0_MARKER,
    auto_log,
    check_kind,
    direction_label,
    figure_of,
    in_range,
    key_title,
    legend_below,
    mask_notes,
    masked,
    new_axes,
    set_title_notes,
)
from lossmap.results import Surface

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.figure import Figure


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

    return ListedColormap(colormaps[COLORMAP](np.linspace(0.0, 0.88, 256)), name="viridis_lines")


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
    ax.set_xlabel(direction_label(result, 0, "α"))
    ax.set_ylabel(direction_label(result, 1, "β"))
    if _same_units(result):
        ax.set_aspect("equal", adjustable="box")


def _mark_theta0(ax: Axes, result: Surface) -> None:
    t0 = result.theta0
    if t0 is not None and in_range(t0[0], result.alpha) and in_range(t0[1], result.beta):
        ax.plot([t0[0]], [t0[1]], markersize=15, zorder=5, **THETA0_MARKER)
        legend_below(ax)


# A facet of plot_surface takes the colour of the mean of its four corners: on a coarse
# grid (3 x 3 around a minimum) every facet has the same mean and one colour. Facets at
# least this many per axis follow the height.
_MIN_FACETS = 48


def _refined(
    a: np.ndarray, b: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A coarse grid subdivided by bilinear interpolation inside each cell (the grid
    points keep their values; NaN spreads to the cells around it), so that facets are
    coloured by their own height; grids of ``_MIN_FACETS`` cells per axis stay as they are.
    ``z`` is ``[len(b), len(a)]``."""

    def fine(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(c) - 1
        k = max(1, math.ceil(_MIN_FACETS / max(n, 1)))
        pos = np.linspace(0.0, float(n), n * k + 1)  # in units of cells
        return np.interp(pos, np.arange(n + 1), c), pos

    if min(len(a), len(b)) < 2 or min(len(a), len(b)) - 1 >= _MIN_FACETS:
        return a, b, z
    fa, pa = fine(a)
    fb, pb = fine(b)

    def along(values: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
        i = np.clip(np.floor(pos).astype(int), 0, values.shape[axis] - 2)
        w = pos - i
        lo, hi = np.take(values, i, axis=axis), np.take(values, i + 1, axis=axis)
        shape = [1, 1]
        shape[axis] = -1
        w = w.reshape(shape)
        # exact at the grid points (w = 0): a NaN neighbour does not leak onto them
        return np.where(w == 0, lo, (1 - w) * lo + w * hi)

    return fa, fb, along(along(z, pa, 1), pb, 0)


def _labels_3d(ax: Axes, result: Surface) -> None:
    """Short axis labels (α, β) on the 3-D axes, where long ones run into the ticks; what
    α and β are in a caption under the figure."""
    long = [direction_label(result, 0, "α"), direction_label(result, 1, "β")]
    short = [label.split(":", 1)[0] for label in long]
    ax.set_xlabel(short[0])
    ax.set_ylabel(short[1])
    if long != short:
        caption = "\n".join(x for x, y in zip(long, short, strict=True) if x != y)
        figure_of(ax).text(0.5, 0.0, caption, ha="center", va="top", fontsize=8)


def _mark_theta0_3d(ax: Axes, result: Surface, zz: np.ma.MaskedArray) -> None:
    """A star at θ0 on the surface (when θ0 is a grid point), drawn over the facets."""
    t0 = result.theta0
    if t0 is None:
        return
    i = int(np.argmin(np.abs(result.alpha - t0[0])))
    j = int(np.argmin(np.abs(result.beta - t0[1])))
    on_grid = np.isclose(result.alpha[i], t0[0]) and np.isclose(result.beta[j], t0[1])
    if not on_grid or np.ma.is_masked(zz[j, i]):
        return
    ax.computed_zorder = False  # type: ignore[attr-defined]  # the star over the facets
    ax.plot([t0[0]], [t0[1]], [float(zz[j, i])], markersize=14, zorder=10, **THETA0_MARKER)
    ax.legend(loc="upper left", fontsize=8, frameon=False)


def _prepare(
    result: Surface, key: str, log: bool | None
) -> tuple[str, np.ma.MaskedArray, bool, list[str]]:
    """Full key, values transposed to ``[len(beta), len(alpha)]`` and masked, log, notes."""
    full = result.key(key)
    values = result.values[full]
    use_log = auto_log(values, full.split("/", 1)[1]) if log is None else bool(log)
    z, n_nan, n_nonpos = masked(values.T, use_log)
    return full, z, use_log, mask_notes(n_nan, n_nonpos)


def _cbar_label(full: str, log: bool) -> str:
    return f"{full.split('/', 1)[1]}" + (" (log scale)" if log else "")


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
    check_kind(result, Surface, "contour", "use curve() for a line or a path")
    ax = new_axes(ax)
    full, z, log, notes = _prepare(result, key, log)
    _surface_axes(ax, result)
    if z.count() == 0:
        _empty(ax, key_title(full), "no finite values" + (" > 0" if log else ""))
        return figure_of(ax)
    fig = figure_of(ax)
    lv = _levels(z, levels, log)
    norm = _norm(z, log, lv)
    fmt = _label_fmt(lv)
    x, y = result.alpha, result.beta
    if z.min() == z.max():
        mesh = ax.pcolormesh(x, y, z, shading="nearest", cmap=COLORMAP, norm=norm)
        fig.colorbar(mesh, ax=ax, label=_cbar_label(full, log))
        notes.append(f"constant {float(z.min()):.4g}")
    else:
        if filled:
            cf = ax.contourf(x, y, z, levels=lv, cmap=COLORMAP, norm=norm)
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
    set_title_notes(ax, key_title(full), notes)
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
    check_kind(result, Surface, "heatmap", "use curve() for a line or a path")
    ax = new_axes(ax)
    full, z, log, notes = _prepare(result, key, log)
    _surface_axes(ax, result)
    if z.count() == 0:
        _empty(ax, key_title(full), "no finite values" + (" > 0" if log else ""))
        return figure_of(ax)
    fig = figure_of(ax)
    mesh = ax.pcolormesh(
        result.alpha,
        result.beta,
        z,
        shading="nearest",
        cmap=COLORMAP,
        norm=_norm(z, log),
        rasterized=True,
    )
    cbar = fig.colorbar(mesh, ax=ax, label=_cbar_label(full, log))
    if log and z.min() < z.max():
        # The contour's round levels and plain labels, not matplotlib's "3 × 10⁰".
        lv = _levels(z, 8, True)
        ticks = lv[(lv >= z.min()) & (lv <= z.max())]
        if ticks.size >= 2:
            fmt = _label_fmt(lv)
            cbar.set_ticks(list(ticks), labels=[fmt(t) for t in ticks])
            cbar.ax.minorticks_off()
    if mark_origin:
        _mark_theta0(ax, result)
    set_title_notes(ax, key_title(full), notes)
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

    check_kind(result, Surface, "surface3d", "use curve() for a line or a path")
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.figure(figsize=(6.0, 5.0), layout="constrained").add_subplot(projection="3d")
    if not isinstance(ax, Axes3D):
        raise TypeError(
            f"surface3d() needs 3-D axes, got {type(ax).__name__}; "
            "make them with fig.add_subplot(projection='3d')"
        )
    full, z, log, notes = _prepare(result, key, log)
    _labels_3d(ax, result)
    stat = full.split("/", 1)[1]
    ax.set_zlabel(f"log₁₀ {stat}" if log else stat)
    if z.count() == 0:
        ax.set_title(key_title(full) + "\nno finite values" + (" > 0" if log else ""))
        return figure_of(ax)
    zz = np.ma.log10(z) if log else z
    fa, fb, fz = _refined(result.alpha, result.beta, zz.filled(np.nan))
    x, y = np.meshgrid(fa, fb)  # [len(beta), len(alpha)], like zz
    rows, cols = fz.shape
    surf = ax.plot_surface(
        x,
        y,
        fz,
        cmap=COLORMAP,
        vmin=float(zz.min()),
        vmax=float(zz.max()),
        rcount=min(rows, 120),
        ccount=min(cols, 120),
        linewidth=0,
        antialiased=False,
        rasterized=True,
    )
    _mark_theta0_3d(ax, result, zz)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(5, steps=[1, 2, 2.5, 5, 10]))
    ax.tick_params(labelsize=8)
    figure_of(ax).colorbar(surf, ax=ax, shrink=0.6, pad=0.1, label=ax.get_zlabel())
    set_title_notes(ax, key_title(full), notes)
    return figure_of(ax)
