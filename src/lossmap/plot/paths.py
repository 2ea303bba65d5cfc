"""Figures of optimisation paths: a trajectory over its PCA plane, and sharpness
histories at the edge of stability."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lossmap.plot._style import (
    check_kind,
    figure_of,
    key_title,
    legend_below,
    masked,
    new_axes,
)
from lossmap.plot.planes import contour
from lossmap.results import Surface

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
        The figure: the path as a line with markers, its start (the first checkpoint,
        a hollow circle) and end (the last checkpoint, a star) marked; the legend sits
        below the axes, off the path.
    """
    check_kind(surface, Surface, "trajectory", "it draws a path over a plane")
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
    ax = new_axes(ax, figsize=(5.8, 4.8))
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
    _arrowheads(ax, c, color, arrows)
    _ends(ax, c, color)
    legend_below(ax)  # where it cannot cover the path
    n = len(c)
    ax.set_title(f"{key_title(surface.key(key))} on the PCA plane of {n} checkpoints")
    return fig


def _arrowheads(ax: Axes, c: np.ndarray, color: str, arrows: int) -> None:
    """About ``arrows`` arrowheads at evenly spaced distances along the path, mid-segment."""
    seg = np.linalg.norm(np.diff(c, axis=0), axis=1) if len(c) > 1 else np.zeros(0)
    if arrows and seg.size and seg.max() > 0:
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


def _ends(ax: Axes, c: np.ndarray, color: str) -> None:
    """The path's start (the first checkpoint, a hollow circle) and end (the last, a star);
    not "θ₀", which lossmap keeps for the trained point the plane is centred on."""
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
        label="start (first checkpoint)",
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
        label="end (last checkpoint)",
    )


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
        y, _, _ = masked(losses, logloss)
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
    fig = figure_of(ax_l)
    if title:
        fig.suptitle(title)
    return fig
