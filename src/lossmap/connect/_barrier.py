"""The barrier on a path ``L(t)``, ``t ∈ [0, 1]``: pure numpy, no model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lossmap.results import Result

T_TOL = 1e-9  # how close a grid point must be to 0 or 1 to count as the endpoint


@dataclass(frozen=True)
class Barrier:
    """The barrier on a path ``L(t)``, ``t ∈ [0, 1]`` (see :func:`barrier`).

    Attributes:
        key: the statistic (``"train/loss"``, ``"test/error"``, or ``"values"``).
        height: ``max_t [L(t) - ((1 - t) L(0) + t L(1))]``, the largest excess over the
            chord between the endpoint values (Entezari et al. 2022).
        height_frankle: ``max_t L(t) - (L(0) + L(1)) / 2`` (Frankle et al. 2020).
        t_max: where ``height`` is reached.
        peak: ``max_t L(t)``; ``t_peak``: where.
        start, end: ``L(0)``, ``L(1)``.
        transform: ``"none"``, or ``"error = 1 - accuracy"`` when the values were an
            accuracy (a barrier is then a drop in accuracy, reported as a rise in error).
        n_points: grid points in ``[0, 1]``.
    """

    key: str
    height: float
    height_frankle: float
    t_max: float
    peak: float
    t_peak: float
    start: float
    end: float
    transform: str = "none"
    n_points: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_higher_better(stat: str) -> bool:
    return stat.split("/")[-1].endswith("accuracy")


def barrier(
    curve_or_values: Result | Sequence[float] | np.ndarray,
    t: Sequence[float] | np.ndarray | None = None,
    key: str = "loss",
    *,
    higher_is_better: bool | None = None,
) -> Barrier:
    """The barrier height of a path, from its values on a grid of ``t`` containing 0 and 1.

    Only ``t ∈ [0, 1]`` is used (a path evaluated on ``span=(-0.5, 1.5)`` is cut). Two
    definitions are returned:

    - ``height = max_t [L(t) - ((1 - t) L(0) + t L(1))]``: the excess over the straight
      line between the endpoint values (Entezari et al. 2022, "The Role of Permutation
      Invariance in Linear Mode Connectivity of Neural Networks", ICLR);
    - ``height_frankle = max_t L(t) - (L(0) + L(1)) / 2``: Frankle et al. 2020, "Linear
      Mode Connectivity and the Lottery Ticket Hypothesis" (ICML, arXiv:1912.05671),
      §2, where it is the *error barrier height* ``E_sup - mean(E(W1), E(W2))`` that
      measures instability.

    The two agree when ``L(0) = L(1)``. Accuracies (a statistic whose name ends in
    ``accuracy``, or ``higher_is_better=True``) are turned into errors ``1 - accuracy``
    first, so a barrier is always a positive bump: the largest *drop* in accuracy.
    A non-finite value inside the path (a diverged loss) gives infinite heights.

    Args:
        curve_or_values: a :class:`~lossmap.results.Curve` whose ``alpha`` is ``t`` (as
            returned by :func:`lossmap.interpolate` or :func:`linear`), or the values.
        t: the path coordinates when values are given (1-D, same length).
        key: which statistic of a Curve (``"loss"``, ``"test/loss"``, ``"accuracy"``).
        higher_is_better: treat the values as an accuracy; default: from the name.

    Returns:
        A :class:`Barrier`.

    Raises:
        ValueError: ``t = 0`` or ``t = 1`` is not on the grid, lengths differ, or an
            endpoint value is not finite.

    >>> tt = np.linspace(0, 1, 5)
    >>> b = barrier(1 + tt + 4 * tt * (1 - tt), tt)
    >>> b.height, b.t_max
    (1.0, 0.5)
    """
    full, values, tt = _path_values(curve_or_values, t, key)
    hib = _is_higher_better(full) if higher_is_better is None else bool(higher_is_better)
    transform = "none"
    if hib:
        values = 1.0 - values
        transform = "error = 1 - accuracy"
        if full.endswith("accuracy"):
            full = full[: -len("accuracy")] + "error"
    i0 = np.flatnonzero(np.abs(tt) <= T_TOL)
    i1 = np.flatnonzero(np.abs(tt - 1.0) <= T_TOL)
    if i0.size == 0 or i1.size == 0:
        missing = " and ".join(f"t={x}" for x, i in ((0, i0), (1, i1)) if i.size == 0)
        raise ValueError(
            f"{missing} not on the path's grid (t from {tt.min():.4g} to {tt.max():.4g}, "
            f"{tt.size} points); evaluate on a grid through 0 and 1, e.g. span=(0, 1) or "
            "span=(-0.5, 1.5) with steps=41"
        )
    start, end = float(values[i0[0]]), float(values[i1[0]])
    for name, v in (("t=0", start), ("t=1", end)):
        if not math.isfinite(v):
            raise ValueError(
                f"{full} at {name} is {v}: an endpoint of the path has a non-finite value; "
                "check that both endpoints are trained models with a finite loss"
            )
    inside = (tt >= -T_TOL) & (tt <= 1.0 + T_TOL)
    ts, vs = tt[inside], values[inside]
    order = np.argsort(ts, kind="stable")
    ts, vs = np.clip(ts[order], 0.0, 1.0), vs[order]
    if not np.isfinite(vs).all():
        bad = float(ts[np.flatnonzero(~np.isfinite(vs))[0]])
        return Barrier(full, math.inf, math.inf, bad, math.inf, bad, start, end, transform, ts.size)
    excess = vs - ((1.0 - ts) * start + ts * end)
    j, k = int(np.argmax(excess)), int(np.argmax(vs))
    return Barrier(
        key=full,
        height=float(excess[j]),
        height_frankle=float(vs[k] - 0.5 * (start + end)),
        t_max=float(ts[j]),
        peak=float(vs[k]),
        t_peak=float(ts[k]),
        start=start,
        end=end,
        transform=transform,
        n_points=int(ts.size),
    )


def _path_values(
    curve_or_values: Result | Sequence[float] | np.ndarray,
    t: Sequence[float] | np.ndarray | None,
    key: str,
) -> tuple[str, np.ndarray, np.ndarray]:
    """The statistic's full name, its values and the path coordinates ``t`` (1-D, float64)."""
    if isinstance(curve_or_values, Result):
        if t is not None:
            raise ValueError("pass t only with raw values; a Curve carries its own t (alpha)")
        coords = list(curve_or_values.coords.values())
        if len(coords) != 1:
            raise ValueError(
                f"barrier needs a 1-D path (a Curve), got a result with axes {list(curve_or_values.coords)}"
            )
        full = curve_or_values.key(key)
        values = np.asarray(curve_or_values.values[full], dtype=np.float64)
        tt = np.asarray(coords[0], dtype=np.float64)
    else:
        if t is None:
            raise ValueError(
                "pass t, the path coordinates of the values (e.g. np.linspace(0, 1, 41))"
            )
        full = key if key != "loss" else "values"
        values = np.asarray(curve_or_values, dtype=np.float64)
        tt = np.asarray(t, dtype=np.float64)
    if values.ndim != 1 or tt.shape != values.shape:
        raise ValueError(
            f"values and t must be 1-D of the same length, got shapes {values.shape} and {tt.shape}"
        )
    return full, values, tt


def barriers(result: Result) -> dict[str, dict[str, Any]]:
    """Barriers of every ``<set>/loss`` and ``<set>/error`` (from accuracy) of a path."""
    out: dict[str, dict[str, Any]] = {}
    for k in result.values:
        stat = k.split("/", 1)[1]
        if stat == "loss" or stat.endswith("accuracy"):
            b = barrier(result, key=k)
            out[b.key] = b.as_dict()
    return out
