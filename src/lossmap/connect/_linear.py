"""The straight path ``θ(t) = (1 - t) a + t b`` and its barriers."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from torch import Tensor

from lossmap import vectors as V
from lossmap.connect._barrier import T_TOL, barriers
from lossmap.connect._batchnorm import bn_layers, values_with_bn
from lossmap.connect._points import check_endpoints, check_pair
from lossmap.directions import Direction
from lossmap.evaluate import Progress
from lossmap.landscape import Landscape
from lossmap.results import Curve
from lossmap.slices import grid, interpolate, parse_span, result_meta


def default_span(steps: int) -> tuple[float, float]:
    """The span nearest ``(-0.5, 1.5)`` whose grid of ``steps`` points holds ``t = 0`` and ``t = 1``.

    The grid's ``steps - 1`` intervals are split into ``m`` inside ``[0, 1]`` and
    ``e_lo``, ``e_hi`` beyond each end, chosen so that ``e/m`` is as close to ½ as the
    count allows (ties: more points inside); ``steps = 41`` gives exactly ``(-0.5, 1.5)``.

    >>> default_span(41), default_span(11), default_span(2)
    ((-0.5, 1.5), (-0.4, 1.6), (0.0, 1.0))
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    n = steps - 1
    best: tuple[float, int, int, int] | None = None
    for m in range(n, 0, -1):
        e_lo = (n - m) // 2
        e_hi = n - m - e_lo
        cost = (abs(e_lo - m / 2) + abs(e_hi - m / 2)) / m
        if best is None or cost < best[0] - 1e-12:
            best = (cost, m, e_lo, e_hi)
    assert best is not None  # n >= 1: the loop ran
    _, m, e_lo, e_hi = best
    return (-e_lo / m, 1.0 + e_hi / m)


def _grid01_check(t: np.ndarray, span: tuple[float, float], steps: int) -> None:
    if not (np.abs(t).min() <= T_TOL and np.abs(t - 1.0).min() <= T_TOL):
        raise ValueError(
            f"span {span} with steps={steps} does not put both t=0 and t=1 on the grid, so "
            "the barrier is undefined; use e.g. span=(-0.5, 1.5), steps=41 or span=(0, 1)"
        )


def linear(
    land: Landscape,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    span: object = None,
    steps: int = 41,
    reset_bn: bool | None = None,
    bn_data: object = None,
    datasets: Sequence[str] | None = None,
    strategy: str = "auto",
    progress: Progress | None = None,
) -> Curve:
    """The loss along the straight path ``θ(t) = (1 - t) a + t b``, with its barriers.

    **BatchNorm.** By default (``reset_bn=None``) a model with BatchNorm layers gets
    its statistics *recomputed* at every ``θ(t)`` (:func:`recompute_bn`, one pass over
    ``bn_data`` in train mode), as Garipov et al. 2018 do before evaluating each point
    (``bn_update``) and as linear-mode-connectivity studies of BatchNorm networks after
    Frankle et al. 2020 do. Interpolating the buffers with the weights is not used: it
    keeps each endpoint's saved statistics but is wrong in between, the pre-BN variance
    being quadratic in the weights (``Var(z_a + z_b) / 4 ≠ (Var z_a + Var z_b) / 2``,
    the "variance collapse" of Jordan et al. 2023), so the barrier would measure the
    statistics. Recomputed, every point (endpoints included) is the network as used after
    a fresh pass over the data. Cost: one pass and one evaluation per point. Without
    BatchNorm this is :func:`lossmap.interpolate`. ``reset_bn=False`` on a BatchNorm
    model uses the landscape's buffers at every ``t`` (those of the model it was built
    on): a :class:`UserWarning` says so and ``meta["bn_statistics_foreign"]`` is true.

    Args:
        land: the landscape (its model gives the architecture; it is not modified).
        a, b: the endpoints, parameter dicts keyed like ``land.point()``.
        span: the range of ``t``; it must put ``t = 0`` and ``t = 1`` on the grid.
            Default: :func:`default_span` of ``steps``, about ``(-0.5, 1.5)`` with both
            on the grid for any ``steps``.
        steps: number of points.
        reset_bn: recompute BatchNorm statistics at each point; ``None`` (default):
            exactly when the model has BatchNorm layers with running statistics.
        bn_data: data for the statistics: ``(X, y)`` or a loader (default: the
            landscape's first data set).
        datasets, strategy, progress: as in :func:`lossmap.line`.

    Returns:
        A :class:`~lossmap.results.Curve` (``alpha`` is ``t``) whose
        ``meta["barrier"]`` maps ``"<set>/loss"`` and ``"<set>/error"`` (where an
        accuracy exists) to :meth:`Barrier.as_dict`; ``meta["reset_bn"]`` says whether
        the statistics were recomputed, ``meta["bn_statistics"]`` which were used.

    Raises:
        ValueError: endpoints of another architecture (the first mismatches are named),
            non-finite endpoints, a grid without ``t = 0`` and ``1``, or ``reset_bn=True``
            on a model without BatchNorm.
    """
    pts = check_pair(land, {"a": a, "b": b})
    a, b = pts["a"], pts["b"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    ((lo, hi),) = parse_span(default_span(steps) if span is None else span, 1)
    _grid01_check(grid(lo, hi, steps), (lo, hi), steps)
    check_endpoints(land, a, b)
    n_bn = len(bn_layers(land.model))
    recompute = n_bn > 0 if reset_bn is None else bool(reset_bn)
    if recompute:
        result = _linear_with_bn(
            land,
            a,
            b,
            (lo, hi),
            steps,
            bn_data=bn_data,
            datasets=datasets,
            strategy=strategy,
            progress=progress,
        )
    else:
        result = interpolate(
            land,
            a,
            b,
            span=(lo, hi),
            steps=steps,
            datasets=datasets,
            strategy=strategy,
            progress=progress,
        )
        result.meta["reset_bn"] = False
        if n_bn:
            result.meta["bn_statistics"] = "the landscape's buffers at every t"
            warnings.warn(
                f"reset_bn=False: every point of the path uses the landscape's BatchNorm "
                f"statistics ({n_bn} layers), foreign to every point but the landscape's own, "
                "so the barrier mixes statistics with weights; use reset_bn=None to recompute",
                UserWarning,
                stacklevel=2,
            )
    result.meta["batchnorm_layers"] = n_bn
    result.meta["bn_statistics_foreign"] = n_bn > 0 and not recompute
    result.meta["barrier"] = barriers(result)
    return result


def _linear_with_bn(
    land: Landscape,
    a: V.Vector,
    b: V.Vector,
    span: tuple[float, float],
    steps: int,
    *,
    bn_data: object,
    datasets: Sequence[str] | None,
    strategy: str,
    progress: Progress | None,
) -> Curve:
    """The straight path with BatchNorm statistics recomputed at every ``t``."""
    t0 = time.perf_counter()
    t = grid(*span, steps)
    t[np.abs(t - 1.0) <= T_TOL] = 1.0
    d = Direction(V.sub(b, a), kind="between")
    values = values_with_bn(
        land,
        # Elementwise like the batched engine: origin + t * (b - a).
        ({k: a[k] + float(ti) * d[k] for k in a} for ti in t),
        data=bn_data,
        datasets=datasets,
        strategy=strategy,
        progress=progress,
        total=steps,
    )
    info = {"strategy": strategy, "points": "one at a time, BatchNorm statistics recomputed"}
    meta = result_meta(land, a, [d], info, view="interpolate", span=list(span), steps=steps)
    meta["distance"] = float(V.norm(d))
    meta["reset_bn"] = True
    meta["bn_statistics"] = (
        "recomputed at every t on "
        + ("bn_data" if bn_data is not None else f"data set {land.default_dataset!r}")
        + " (batch-size-weighted cumulative average)"
    )
    meta["seconds"] = time.perf_counter() - t0
    return Curve({"alpha": t}, values, meta)
