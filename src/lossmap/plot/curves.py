"""Figures of values against one coordinate: a line or path, several curves on one axis,
and a Hessian eigenvalue density."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from lossmap.plot._style import (
    auto_log,
    check_kind,
    direction_label,
    figure_of,
    in_range,
    key_title,
    mask_notes,
    masked,
    new_axes,
    points_down,
    set_title_notes,
)
from lossmap.results import Curve, Spectrum

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

_LINESTYLES = ("-", "--", ":", "-.")


def curve(
    result: Curve,
    *,
    metrics: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    ax: Axes | None = None,
    logy: bool | None = False,
    mark_origin: bool = True,
    straight: Curve | None = None,
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
            (``t = 0, 1``) for an interpolation path; legend entries, not titles.
        straight: the straight path between the same end points, drawn under a fitted
            curve's values (grey, dashed) for comparison.

    A path whose ``meta["barrier"]`` holds the measured barrier of the loss (from
    :func:`lossmap.connect.linear` or :func:`lossmap.connect.curve`) shows it: the
    chord between the end points' values and an arrow from the chord up to the path at
    ``t_max``, labelled with the height.

    Returns:
        The figure.
    """
    check_kind(result, Curve, "curve", "use contour(), heatmap() or surface3d() for a plane")
    metrics, datasets, keys = _curve_keys(result, metrics, datasets)
    ax = new_axes(ax, figsize=(5.6, 3.8))
    left_metric = "loss" if "loss" in metrics else metrics[0]
    right = [m for m in metrics if m != left_metric]
    ax2 = ax.twinx() if right else None
    if logy is None:
        left = [result.values[k] for k in keys if k.endswith("/" + left_metric)]
        logy = auto_log(np.concatenate(left), left_metric)
    handles = []
    n_nan = n_nonpos = 0
    for k in keys:
        d, m = k.split("/", 1)
        on_left = m == left_metric
        target = ax if on_left or ax2 is None else ax2
        y, nn, npos = masked(result.values[k], bool(logy) and on_left)
        n_nan, n_nonpos = n_nan + nn, n_nonpos + npos
        (h,) = target.plot(
            result.alpha,
            y,
            color=f"C{metrics.index(m)}",
            linestyle=_LINESTYLES[datasets.index(d) % len(_LINESTYLES)],
            linewidth=1.6,
            label=key_title(k),
        )
        handles.append(h)
    if straight is not None:
        handles += _straight(ax, straight, left_metric, datasets, bool(logy))
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(left_metric)
    if right:
        ax.yaxis.label.set_color(f"C{metrics.index(left_metric)}")
    if ax2 is not None:
        ax2.set_ylabel(", ".join(right), color=f"C{metrics.index(right[0])}")
        if all(m == "accuracy" for m in right):
            ax2.set_ylim(-0.02, 1.02)
    ax.set_xlabel(direction_label(result, 0, "α"))
    ax.set_xlim(float(result.alpha.min()), float(result.alpha.max()))

    if mark_origin:
        handles += _mark_origin(ax, result)
    handles += _mark_barrier(ax, result, f"{datasets[0]}/{left_metric}")
    ax.grid(True, color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    # Below the axes: no place inside is free of both axes' lines in general.
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=ax.transAxes + points_down(ax, 36),
        ncols=min(len(handles), 4 if len(handles) <= 6 else 3),  # no wider than the axes
        fontsize=8,
        frameon=False,
        handlelength=2.6,
    )
    set_title_notes(ax, _curve_title(result, metrics), mask_notes(n_nan, n_nonpos))
    return figure_of(ax)


def _curve_title(result: Curve, metrics: Sequence[str]) -> str:
    what = " and ".join(metrics)
    path = result.meta.get("path")
    if result.meta.get("view") == "interpolate" and isinstance(path, str) and path != "line":
        return f"{what} along the fitted {path} curve from a to b"
    if result.meta.get("view") == "interpolate":
        return f"{what} along the straight path from a to b"
    return what


def _straight(
    ax: Axes, straight: Curve, metric: str, datasets: Sequence[str], logy: bool
) -> list[Line2D]:
    """The straight path's ``metric`` under a fitted curve's, grey and dashed."""
    check_kind(straight, Curve, "curve", "straight= must be the straight path's Curve")
    out = []
    for i, d in enumerate(datasets):
        if f"{d}/{metric}" not in straight.values:
            continue
        y, _, _ = masked(straight.values[f"{d}/{metric}"], logy)
        (h,) = ax.plot(
            straight.alpha,
            y,
            color="0.6",
            linestyle=_LINESTYLES[i % len(_LINESTYLES)],  # the data set's style, in grey
            linewidth=1.2,
            label=f"straight path: {d} {metric}",
            zorder=1,
        )
        out.append(h)
    return out


def _barrier_of(result: Curve, key: str) -> dict[str, float] | None:
    """The measured barrier of ``key`` recorded in the path's metadata, if any."""
    rec = result.meta.get("barrier")
    if isinstance(rec, dict) and ("curve" in rec or "line" in rec):
        rec = rec.get("line" if result.meta.get("path") == "line" else "curve")
    b = rec.get(key) if isinstance(rec, dict) else None
    need = ("height", "t_max", "start", "end")
    if isinstance(b, dict) and all(isinstance(b.get(k), int | float) for k in need):
        return {k: float(b[k]) for k in need}
    return None


def _mark_barrier(ax: Axes, result: Curve, key: str) -> list[Line2D]:
    """The chord between the end points and an arrow from it up to the path at t_max,
    labelled with the barrier height (Entezari et al. 2022's definition)."""
    b = _barrier_of(result, key) if result.meta.get("view") == "interpolate" else None
    if b is None:
        return []
    (chord,) = ax.plot(
        [0.0, 1.0],
        [b["start"], b["end"]],
        color="0.35",
        linestyle=(0, (1, 2)),
        linewidth=1.0,
        label="chord between a and b",
        zorder=1,
    )
    t = b["t_max"]
    base = (1 - t) * b["start"] + t * b["end"]
    if b["height"] > 0:
        ax.annotate(
            "",
            xy=(t, base + b["height"]),
            xytext=(t, base),
            arrowprops={"arrowstyle": "<->", "color": "0.2", "lw": 1.0, "shrinkA": 0, "shrinkB": 0},
        )
    lo, hi = (float(x) for x in result.alpha[[0, -1]])
    right = t <= lo + 0.6 * (hi - lo)  # the label on the side with room
    ax.annotate(
        f"barrier {b['height']:.4g}",
        xy=(t, base + 0.5 * b["height"]),
        xytext=(6 if right else -6, 0),
        textcoords="offset points",
        ha="left" if right else "right",
        va="center",
        fontsize=8,
        color="0.2",
        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
    )
    return [chord]


def _curve_keys(
    result: Curve, metrics: Sequence[str] | None, datasets: Sequence[str] | None
) -> tuple[list[str], list[str], list[str]]:
    """The metrics and data sets to draw (default all; checked) and their value keys."""
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
    return metrics, datasets, keys


def _mark_origin(ax: Axes, result: Curve) -> list[Line2D]:
    """Vertical lines at θ0, or at a and b (t = 0, 1), as legend entries."""
    t0 = result.theta0
    marks = [(t0[0], "θ0 (trained)", "#d62728", ":")] if t0 is not None else []
    if result.meta.get("view") == "interpolate":
        marks = [(0.0, "a (t = 0)", "#d62728", ":"), (1.0, "b (t = 1)", "#1f77b4", "-.")]
    out = []
    for x, text, color, style in marks:
        if in_range(x, result.alpha):
            out.append(
                ax.axvline(x, color=color, linewidth=1.0, linestyle=style, zorder=0, label=text)
            )
    return out


def spectrum(result: Spectrum, *, ax: Axes | None = None, logy: bool = True) -> Figure:
    """A Hessian eigenvalue density (:class:`~lossmap.results.Spectrum`) against λ.

    The title names the model and the data set when ``meta`` records them
    (``"model"``, ``"dataset"``, ``"n_parameters"``); the top eigenvalues of the same
    run (``meta["top"]``, from Lanczos) are marked as vertical lines, a legend entry.

    Args:
        result: the density, e.g. from stochastic Lanczos quadrature.
        ax: axes to draw in (default a new figure).
        logy: log density axis (values ``<= 0`` masked), where outliers show.

    Returns:
        The figure.
    """
    check_kind(result, Spectrum, "spectrum", "use curve() or contour() for slices")
    ax = new_axes(ax, figsize=(5.6, 3.8))
    # Zeros of the density are expected on a log axis: masked, not reported.
    y, n_nan, _ = masked(result.density, logy)
    ax.plot(result.grid, y, color="C0", linewidth=1.4, label="density (SLQ)")
    if logy and y.count():
        ax.set_yscale("log")
        ax.set_ylim(max(float(y.min()), float(y.max()) * 1e-12), float(y.max()) * 3)
    if in_range(0.0, np.asarray(result.grid)):
        ax.axvline(0.0, color="0.45", linewidth=0.9, linestyle=":", zorder=0)
    top = result.meta.get("top")
    top = [float(v) for v in top if isinstance(v, int | float)] if isinstance(top, list) else []
    for i, lam in enumerate(top):
        ax.axvline(
            lam,
            color="#d62728",
            linewidth=0.9,
            linestyle="--",
            label=f"top {len(top)} eigenvalues (Lanczos): λ₁ = {max(top):.4g}" if i == 0 else None,
        )
    if top:
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(lo, min(top)), max(hi, max(top) + 0.02 * (hi - lo)))
        ax.legend(loc="upper center", fontsize=8, framealpha=0.85)
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density")
    ax.grid(True, color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    probes = np.shape(result.nodes)[0] if np.ndim(result.nodes) == 2 else None
    info = f"σ = {result.sigma:.3g}" + (
        f", {probes} probe{'' if probes == 1 else 's'}" if probes else ""
    )
    title, facts = _spectrum_title(result.meta)
    set_title_notes(ax, title, ["; ".join([*facts, info, *mask_notes(n_nan, 0)])])
    return figure_of(ax)


def _spectrum_title(meta: Mapping[str, object]) -> tuple[str, list[str]]:
    """``"Hessian eigenvalue density: MLP on train"`` and its sizes
    (``["1,437 samples", "2,410 parameters"]``) from what ``meta`` records."""
    what = " on ".join(str(x) for x in (meta.get("model"), meta.get("dataset")) if x)
    facts = []
    if isinstance(meta.get("dataset_size"), int):
        facts.append(f"{meta['dataset_size']:,} samples")
    if isinstance(meta.get("n_parameters"), int):
        facts.append(f"{meta['n_parameters']:,} parameters")
    return "Hessian eigenvalue density" + (f": {what}" if what else ""), facts


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
        check_kind(c, Curve, "compare", f"curves[{label!r}] must be a Curve")
    ax = new_axes(ax)
    values = {label: np.asarray(c[key], dtype=float) for label, c in curves.items()}
    stacked = np.concatenate([v[np.isfinite(v)] for v in values.values()] or [np.zeros(0)])
    log = auto_log(stacked, key.split("/")[-1]) if logy is None else bool(logy)
    for label, c in curves.items():
        v, _, _ = masked(values[label], log)
        ax.plot(c.alpha, v, label=label, lw=1.6)
    if log:
        ax.set_yscale("log")
    ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(key_title(key))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title if title is not None else key_title(key))
    return figure_of(ax)
