"""Lines, planes and paths through parameter space.

``line(land, d)`` evaluates ``L(θ0 + α d)``; ``plane(land, d1, d2)`` evaluates
``L(θ0 + α d1 + β d2)`` on an ``indexing="ij"`` grid; ``interpolate(land, a, b)``
evaluates ``L((1 - t) a + t b)``. Every data set and metric of the landscape is
evaluated at every point; θ0 (coordinate 0) is always on a grid whose span contains 0.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import platform
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap.directions import Direction, coordinate, to_arrays
from lossmap.evaluate import Progress, Span, run
from lossmap.landscape import Landscape
from lossmap.results import Curve, Surface

if TYPE_CHECKING:
    from lossmap.store import Journal

__all__ = [
    "MAX_POINTS",
    "grid",
    "interpolate",
    "line",
    "parse_span",
    "plane",
    "result_meta",
    "versions",
]

MAX_POINTS = 10_000_000
DirectionLike = Mapping[str, Tensor] | str


@functools.cache
def _own_version() -> str:
    # Read once per process: parsing the package metadata costs ~1 ms, as much as a
    # whole 11 × 11 plane of a small model.
    try:
        return importlib.metadata.version("lossmap")
    except importlib.metadata.PackageNotFoundError:
        from lossmap._version import __version__

        return __version__


def versions() -> dict[str, str]:
    """The versions of lossmap, torch, numpy and Python, as every result records them.

    lossmap's own comes from the installed package's metadata, or from
    :mod:`lossmap._version` when it runs from a source tree that is not installed.
    """
    return {
        "lossmap": _own_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def parse_span(span: object, n_axes: int) -> list[tuple[float, float]]:
    """``r`` -> ``(-r, r)``; ``(lo, hi)`` for every axis; or one ``(lo, hi)`` per axis.

    >>> parse_span(1.5, 2)
    [(-1.5, 1.5), (-1.5, 1.5)]
    >>> parse_span([(0, 6), (-1, 5)], 2)
    [(0.0, 6.0), (-1.0, 5.0)]
    """
    if isinstance(span, int | float):
        pairs = [(-float(span), float(span))] * n_axes
    else:
        try:
            items = list(span)  # type: ignore[call-overload]
        except TypeError:
            raise ValueError(f"span must be a number r or (lo, hi), got {span!r}") from None
        if len(items) == 2 and all(isinstance(x, int | float) for x in items):
            pairs = [(float(items[0]), float(items[1]))] * n_axes
        elif len(items) == n_axes and all(
            isinstance(p, Sequence) and len(p) == 2 and all(isinstance(x, int | float) for x in p)
            for p in items
        ):
            pairs = [(float(p[0]), float(p[1])) for p in items]
        else:
            raise ValueError(
                f"span must be a number r, (lo, hi), or {n_axes} pairs (lo, hi); got {span!r}"
            )
    for lo, hi in pairs:
        if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(hi - lo)):
            raise ValueError(f"span ({lo}, {hi}) must be finite (and so must its width)")
        if not lo < hi:
            raise ValueError(
                f"span ({lo}, {hi}) is empty or inverted; give (lo, hi) with lo < hi, e.g. (-1, 1)"
            )
    return pairs


def _parse_steps(steps: object, n_axes: int) -> list[int]:
    if isinstance(steps, int):
        items: list[object] = [steps] * n_axes
    elif isinstance(steps, Sequence) and not isinstance(steps, str | bytes):
        items = list(steps)
    else:
        items = []  # a float, a string, ...: not steps
    if len(items) != n_axes or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in items
    ):
        raise ValueError(f"steps must be an integer or {n_axes} integers, got {steps!r}")
    ints = [int(s) for s in items]  # type: ignore[call-overload]
    for s in ints:
        if s < 2:
            raise ValueError(f"steps must be at least 2 (got {s}); e.g. steps=51")
    total = math.prod(ints)
    if total > MAX_POINTS:
        raise ValueError(
            f"{' x '.join(map(str, ints))} = {total:,} points is too many (limit {MAX_POINTS:,}); "
            "use fewer steps"
        )
    return ints


def grid(lo: float, hi: float, steps: int) -> np.ndarray:
    """``steps`` evenly spaced coordinates from ``lo`` to ``hi``, with 0 snapped exactly.

    >>> grid(-1, 1, 5).tolist()
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    g = np.linspace(lo, hi, steps)
    g[np.abs(g) < 1e-12 * (hi - lo)] = 0.0
    return g


def _resolve(land: Landscape, d: DirectionLike, name: str) -> Direction:
    if isinstance(d, str):
        return coordinate(land, d)
    v = V.check_vector(d, land.theta0, name=name)
    if isinstance(d, Direction):
        return d
    return Direction(v, kind="custom")


def _theta0_coords(land: Landscape, dirs: Sequence[Direction]) -> list[float]:
    """Where θ0 sits on the axes: 0 along directions, its own value along raw axes."""
    out = []
    for d in dirs:
        if d.meta.get("kind") == "axis":
            index = tuple(int(i) for i in d.meta["index"])  # type: ignore[attr-defined]
            out.append(float(land.theta0[str(d.meta["parameter"])][index]))
        else:
            out.append(0.0)
    return out


def result_meta(
    land: Landscape,
    origin: Mapping[str, Tensor],
    dirs: Sequence[Direction],
    info: Mapping[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """The metadata of a result evaluated on ``origin + Σ_k c_k dirs[k]``.

    What every view records, so that results read alike: the landscape (data sets,
    model, size, dtype, device, train mode), the origin and the directions (their
    metadata and norms, where θ0 sits on them), the engine's report ``info`` and the
    versions; then ``extra`` (the view's own settings: ``view``, ``span``, ``steps``...).
    """
    theta0 = land.theta0
    meta: dict[str, Any] = {
        "default_dataset": land.default_dataset,
        "datasets": {k: ds.size for k, ds in land.datasets.items()},
        "model": type(land.model).__name__,
        "n_parameters": land.num_parameters,
        "theta0_norm": float(V.norm(theta0)),
        "origin_norm": float(V.norm(origin)),
        "directions": [dict(d.meta) for d in dirs],
        "theta0_coords": _theta0_coords(land, dirs),
        "direction_norms": [float(V.norm(d)) for d in dirs],
        "device": str(land.device),
        "dtype": str(next(iter(theta0.values())).dtype),
        "train_mode": land.train_mode,
        "engine": info,
        "versions": versions(),
    }
    meta.update(extra or {})
    return meta


def _span_run(
    land: Landscape,
    dirs: list[Direction],
    axes: list[np.ndarray],
    *,
    origin: Mapping[str, Tensor] | None,
    datasets: Sequence[str] | None,
    strategy: str,
    progress: Progress | None,
    journal: Journal | None = None,
    view: str = "points",
    chunk_size: int | None = None,
    precision: str = "float32",
) -> tuple[dict[str, np.ndarray], dict[str, Any], V.Vector]:
    base = V.clone(origin) if origin is not None else land.point()
    # Raw parameter axes are absolute: zero θ0's entry so the coordinate is its value.
    for d in dirs:
        if d.meta.get("kind") == "axis":
            base[str(d.meta["parameter"])][tuple(d.meta["index"])] = 0.0  # type: ignore[arg-type]
    mesh = np.meshgrid(*axes, indexing="ij")
    coeffs = np.stack([m.ravel() for m in mesh], axis=1)
    res = run(
        land,
        Span(base, list(dirs), coeffs),
        datasets=datasets,
        strategy=strategy,
        progress=progress,
        journal=journal,
        view=view,
        chunk_size=chunk_size,
        precision=precision,
    )
    shape = tuple(len(a) for a in axes)
    return {k: v.reshape(shape) for k, v in res.values.items()}, res.info, base


def _curve(
    land: Landscape,
    d: Direction,
    alpha: np.ndarray,
    *,
    origin: Mapping[str, Tensor] | None,
    view: str,
    span: list[float],
    extra: Mapping[str, object] | None = None,
    keep: bool = True,
    **run: Any,
) -> Curve:
    """The values along ``origin + α d`` for the coordinates ``alpha``: a line or a path."""
    t0 = time.perf_counter()
    values, info, base = _span_run(land, [d], [alpha], origin=origin, view=view, **run)
    meta = result_meta(land, base, [d], info, view=view, span=span, steps=len(alpha))
    meta.update(extra or {})
    meta["seconds"] = time.perf_counter() - t0
    return Curve({"alpha": alpha}, values, meta, [to_arrays(d)] if keep else None)


def line(
    land: Landscape,
    direction: DirectionLike,
    *,
    span: object = (-1.0, 1.0),
    steps: int = 51,
    origin: Mapping[str, Tensor] | None = None,
    datasets: Sequence[str] | None = None,
    strategy: str = "auto",
    progress: Progress | None = None,
    journal: Journal | None = None,
    chunk_size: int | None = None,
    precision: str = "float32",
) -> Curve:
    """The loss (and metrics) along ``θ0 + α d`` for ``α`` in ``span``.

    Args:
        land: the landscape.
        direction: a direction dict, or a parameter axis name (``"bias"``,
            ``"0.weight[0,0]"``) whose coordinate is then the parameter's value.
        span: ``r`` (meaning ``(-r, r)``) or ``(lo, hi)``.
        steps: number of points (>= 2).
        origin: the point the line passes through (default θ0).
        datasets: which data sets (default all).
        strategy: evaluation strategy (see :mod:`lossmap.evaluate`).
        progress: ``progress(done, total)``.
        journal: a :class:`~lossmap.store.Journal` to resume from and record into.
        chunk_size: points per chunk (default: chosen from memory).
        precision: ``"float32"``, or ``"bfloat16"``/``"float16"`` for the model's
            forward passes under :func:`torch.autocast` (see :func:`lossmap.evaluate.run`);
            recorded as ``meta["engine"]["precision"]``.

    Returns:
        :class:`~lossmap.results.Curve` with ``alpha`` and every ``"<set>/<stat>"``;
        its ``directions`` hold the direction's tensors (saved with it; reuse them
        with :func:`lossmap.directions.load`).
    """
    ((lo, hi),) = parse_span(span, 1)
    (n,) = _parse_steps(steps, 1)
    d = _resolve(land, direction, "direction")
    return _curve(
        land,
        d,
        grid(lo, hi, n),
        origin=origin,
        view="line",
        span=[lo, hi],
        datasets=datasets,
        strategy=strategy,
        progress=progress,
        journal=journal,
        chunk_size=chunk_size,
        precision=precision,
    )


def plane(
    land: Landscape,
    d1: DirectionLike,
    d2: DirectionLike,
    *,
    span: object = (-1.0, 1.0),
    steps: int | tuple[int, int] = 41,
    origin: Mapping[str, Tensor] | None = None,
    datasets: Sequence[str] | None = None,
    strategy: str = "auto",
    progress: Progress | None = None,
    journal: Journal | None = None,
    chunk_size: int | None = None,
    precision: str = "float32",
) -> Surface:
    """The loss (and metrics) on the plane ``θ0 + α d1 + β d2``.

    Args:
        land: the landscape.
        d1, d2: direction dicts, or parameter axis names for a raw-parameter grid
            (e.g. ``plane(land, "weight", "bias", span=[(0, 6), (-1, 5)], steps=101)``).
        span: ``r``, ``(lo, hi)`` for both axes, or ``[(lo1, hi1), (lo2, hi2)]``.
        steps: points per axis (an int or a pair, each >= 2).
        origin, datasets, strategy, progress, journal, chunk_size, precision: as in
            :func:`line`.

    Returns:
        :class:`~lossmap.results.Surface`: ``values[k]`` has shape
        ``[len(alpha), len(beta)]`` with ``indexing="ij"``; ``meta["cosine"]`` is the
        cosine between ``d1`` and ``d2``; ``directions`` holds both directions'
        tensors (saved with it; :func:`lossmap.directions.load` reads them back).
    """
    spans = parse_span(span, 2)
    ns = _parse_steps(steps, 2)
    a, b = _resolve(land, d1, "d1"), _resolve(land, d2, "d2")
    axes = [grid(lo, hi, n) for (lo, hi), n in zip(spans, ns, strict=True)]
    t0 = time.perf_counter()
    values, info, base = _span_run(
        land,
        [a, b],
        axes,
        origin=origin,
        datasets=datasets,
        strategy=strategy,
        progress=progress,
        journal=journal,
        view="plane",
        chunk_size=chunk_size,
        precision=precision,
    )
    meta = result_meta(
        land,
        base,
        [a, b],
        info,
        view="plane",
        span=[list(s) for s in spans],
        steps=ns,
        cosine=V.cosine(a, b),
    )
    meta["seconds"] = time.perf_counter() - t0
    return Surface({"alpha": axes[0], "beta": axes[1]}, values, meta, [to_arrays(a), to_arrays(b)])


def interpolate(
    land: Landscape,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    span: object = (-0.5, 1.5),
    steps: int = 41,
    datasets: Sequence[str] | None = None,
    strategy: str = "auto",
    progress: Progress | None = None,
    journal: Journal | None = None,
    chunk_size: int | None = None,
    precision: str = "float32",
) -> Curve:
    """The loss along the segment ``(1 - t) a + t b`` (``t = 0`` at ``a``, ``1`` at ``b``).

    Returns a :class:`~lossmap.results.Curve` whose ``alpha`` is ``t``; ``precision``
    as in :func:`line`.

    Only the parameters move: buffers (BatchNorm running statistics) stay the
    landscape's own at every ``t``, so on a BatchNorm network endpoint ``b`` is not
    scored with its own statistics. For barriers between BatchNorm networks use
    :func:`lossmap.connect.linear`, which recomputes the statistics at every point by
    default (as ``lossmap connect`` does; ``lossmap interpolate`` warns instead).
    """
    ((lo, hi),) = parse_span(span, 1)
    (n,) = _parse_steps(steps, 1)
    a = V.check_vector(a, land.theta0, name="a")
    b = V.check_vector(b, land.theta0, name="b")
    d = Direction(V.sub(b, a), kind="between")
    return _curve(
        land,
        d,
        grid(lo, hi, n),
        origin=a,
        view="interpolate",
        span=[lo, hi],
        extra={"distance": float(V.norm(d))},
        keep=False,
        datasets=datasets,
        strategy=strategy,
        progress=progress,
        journal=journal,
        chunk_size=chunk_size,
        precision=precision,
    )
