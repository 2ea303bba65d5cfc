"""Mode connectivity: the loss along paths between two minima, and the barrier on them.

- :func:`barrier`: the height of the bump on a path ``L(t)``, ``t ∈ [0, 1]``, in the two
  forms used in the literature (above the chord, Entezari et al. 2022; above the mean of
  the endpoints, Frankle et al. 2020).
- :func:`linear`: the straight path ``θ(t) = (1 - t) a + t b`` with its barriers, and
  optionally BatchNorm statistics recomputed at every ``t`` (Garipov et al. 2018;
  Frankle et al. 2020), since running statistics of ``a``, ``b`` or their average are
  wrong in between.
- :func:`curve`: a low-loss curve between ``a`` and ``b`` fitted by SGD (Garipov et al.
  2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs", NeurIPS): a
  quadratic Bézier curve or a polygonal chain through one trained bend ``θ``.
- :func:`plane3`: the plane through three points (``a``, ``b`` and the bend), with
  orthonormal axes, as in Garipov et al.'s figures.

The caller's model is never written to: paths are evaluated with
:func:`torch.func.functional_call` through the :class:`~lossmap.landscape.Landscape`,
and BatchNorm statistics are recomputed on a deep copy.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from lossmap import vectors as V
from lossmap._checks import choice
from lossmap.data import Batch, to_device
from lossmap.data import batch_size as _batch_size
from lossmap.directions import Direction
from lossmap.evaluate import Progress, Span, run
from lossmap.landscape import Landscape
from lossmap.results import Curve, Result, Surface
from lossmap.slices import grid, interpolate, parse_span, plane, versions

if TYPE_CHECKING:
    from lossmap.store import Journal

__all__ = [
    "Barrier",
    "CurveFit",
    "CurveKind",
    "barrier",
    "coefficients",
    "curve",
    "linear",
    "plane3",
    "recompute_bn",
]

_T_TOL = 1e-9


class _JournalLike(Protocol):
    def get(self, key: str) -> np.ndarray | None: ...

    def put(self, key: str, value: np.ndarray) -> None: ...


# ---------------------------------------------------------------------------- barrier
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
    hib = _is_higher_better(full) if higher_is_better is None else bool(higher_is_better)
    transform = "none"
    if hib:
        values = 1.0 - values
        transform = "error = 1 - accuracy"
        if full.endswith("accuracy"):
            full = full[: -len("accuracy")] + "error"
    i0 = np.flatnonzero(np.abs(tt) <= _T_TOL)
    i1 = np.flatnonzero(np.abs(tt - 1.0) <= _T_TOL)
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
    inside = (tt >= -_T_TOL) & (tt <= 1.0 + _T_TOL)
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


def _barriers(result: Result) -> dict[str, dict[str, Any]]:
    """Barriers of every ``<set>/loss`` and ``<set>/error`` (from accuracy) of a path."""
    out: dict[str, dict[str, Any]] = {}
    for k in result.values:
        stat = k.split("/", 1)[1]
        if stat == "loss" or stat.endswith("accuracy"):
            b = barrier(result, key=k)
            out[b.key] = b.as_dict()
    return out


# ---------------------------------------------------------------------------- checks
def _check_pair(land: Landscape, pts: Mapping[str, object]) -> dict[str, V.Vector]:
    """Check that the points fit the landscape's parameters; cast to their dtype/device."""
    out: dict[str, V.Vector] = {}
    first: tuple[str, V.Vector] | None = None
    for name, p in pts.items():
        v = V.check_vector(p, name=name)
        if first is not None:
            problems = V.mismatches(v, first[1])
            if problems:
                raise ValueError(
                    f"{first[0]} and {name} come from different architectures: "
                    + "; ".join(problems)
                    + ". Pass parameters of the same model (e.g. dict(model.named_parameters()))"
                )
        problems = V.mismatches(v, land._params0)
        if problems:
            raise ValueError(
                f"{name} does not fit the landscape's model: "
                + "; ".join(problems)
                + ". Build the Landscape on a model of the same architecture"
            )
        bad = [k for k, t in v.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise ValueError(
                f"{name} holds non-finite values (NaN/Inf) in {bad[:5]}; "
                "use a checkpoint from before training diverged"
            )
        like = land._params0
        v = {k: v[k].detach().to(like[k].device, like[k].dtype) for k in like}
        out[name] = v
        if first is None:
            first = (name, v)
    return out


def _check_endpoints(land: Landscape, a: V.Vector, b: V.Vector) -> dict[str, float]:
    """The default data set's loss at ``a`` and ``b``; an error if either is not finite."""
    ds = land.default_dataset
    vals = land.evaluate([a, b], datasets=[ds])[f"{ds}/loss"]
    for name, v in zip("ab", vals, strict=True):
        if not math.isfinite(float(v)):
            raise ValueError(
                f"the loss at endpoint {name} is {float(v)} on {ds!r}: both endpoints must be "
                "trained points with a finite loss"
            )
    return {"a": float(vals[0]), "b": float(vals[1])}


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
    if not (np.abs(t).min() <= _T_TOL and np.abs(t - 1.0).min() <= _T_TOL):
        raise ValueError(
            f"span {span} with steps={steps} does not put both t=0 and t=1 on the grid, so "
            "the barrier is undefined; use e.g. span=(-0.5, 1.5), steps=41 or span=(0, 1)"
        )


# ---------------------------------------------------------------------------- BatchNorm
def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _forward(land: Landscape, module: nn.Module, batch: Batch) -> None:
    if land.loss_fn is not None:
        land.loss_fn(module, batch)
    elif isinstance(batch, tuple | list) and len(batch) >= 2:
        module(*batch[:-1])
    else:
        raise TypeError(
            f"BatchNorm data batches must be tuples (inputs..., target), got {type(batch).__name__}"
        )


def _bn_batches(land: Landscape, data: object) -> Iterable[Batch]:
    if data is None:
        return land.datasets[land.default_dataset]
    if isinstance(data, tuple | list) and data and all(isinstance(x, Tensor) for x in data):
        return [to_device(tuple(data), land.device)]
    if not isinstance(data, Iterable) or isinstance(data, str | bytes | Mapping):
        raise TypeError(
            f"bn_data must be (X, y) tensors or a DataLoader / iterable of batches, got "
            f"{type(data).__name__}"
        )
    return (to_device(b, land.device) for b in data)


class _BNWorkbench:
    """A deep copy of the landscape's model on which BatchNorm statistics are recomputed."""

    def __init__(self, land: Landscape, data: object) -> None:
        self.land = land
        self.data = data
        self.model = copy.deepcopy(land.model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.layers = _bn_layers(self.model)
        if not self.layers:
            raise ValueError(
                f"reset_bn=True but {type(land.model).__name__} has no BatchNorm layer with "
                "running statistics; use reset_bn=False"
            )

    @torch.no_grad()
    def buffers_at(self, point: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """All fixed tensors (buffers, frozen parameters) with BatchNorm statistics at ``point``."""
        params = dict(self.model.named_parameters())
        for k, v in point.items():
            params[k].copy_(v)
        for m in self.layers:
            m.reset_running_stats()
        self.model.train()
        seen = 0
        for batch in _bn_batches(self.land, self.data):
            n = _batch_size(batch)
            # Weight each batch by its size: the running mean is the exact data-set mean
            # of the batch means, also with an uneven last batch (Garipov et al.'s bn_update).
            for m in self.layers:
                m.momentum = n / (seen + n)
            _forward(self.land, self.model, batch)
            seen += n
        if seen == 0:
            raise ValueError("bn_data yields no samples; pass at least one batch")
        self.model.eval()
        fixed = {n: p.detach().clone() for n, p in self.model.named_parameters() if n not in point}
        fixed.update({n: b.detach().clone() for n, b in self.model.named_buffers()})
        return {k: fixed[k] for k in self.land._fixed0}


def recompute_bn(
    land: Landscape, point: Mapping[str, Tensor] | None = None, *, data: object = None
) -> dict[str, Tensor]:
    """BatchNorm running statistics recomputed at ``point`` (θ0 by default).

    On a deep copy of the model at ``point``: every BatchNorm layer's statistics are
    reset, then one pass in train mode over ``data`` (default: the landscape's first
    data set) under ``no_grad`` accumulates them, each batch weighted by its size
    (momentum ``n_b / (n_seen + n_b)``, as Garipov et al.'s ``bn_update``; equal to
    PyTorch's cumulative ``momentum=None`` for equal batches). The running mean is the
    exact data-set mean of the pre-BN activations; the running variance is the
    size-weighted mean of the per-batch unbiased variances (the exact unbiased variance
    when the data set is one batch, as for ``(X, y)`` tensors).

    Returns:
        The landscape's fixed tensors (all buffers and frozen parameters, keyed like
        ``land.buffers()``) with the recomputed statistics; use them with
        ``land.at({**point, **buffers})``.

    Raises:
        ValueError: the model has no BatchNorm layer with running statistics.
    """
    p = land._params0 if point is None else _check_pair(land, {"point": point})["point"]
    return _BNWorkbench(land, data).buffers_at(p)


# ---------------------------------------------------------------------------- linear
def _values_only(vals: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in vals.items() if "/" in k}


def linear(
    land: Landscape,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    span: object = None,
    steps: int = 41,
    reset_bn: bool = False,
    bn_data: object = None,
    datasets: Sequence[str] | None = None,
    strategy: str = "auto",
    progress: Progress | None = None,
) -> Curve:
    """The loss along the straight path ``θ(t) = (1 - t) a + t b``, with its barriers.

    Without ``reset_bn`` this is :func:`lossmap.interpolate` (every point uses the
    landscape's buffers, i.e. the BatchNorm statistics of the model it was built on).
    With ``reset_bn=True`` the BatchNorm running statistics are recomputed at every
    ``θ(t)`` (see :func:`recompute_bn`), as Frankle et al. 2020 and Garipov et al. 2018
    do: statistics of ``a``, ``b`` or their interpolation do not match the activations
    of the interpolated network. That costs one pass over ``bn_data`` and one
    evaluation per point (points are not batched).

    Args:
        land: the landscape (its model gives the architecture; it is not modified).
        a, b: the endpoints, parameter dicts keyed like ``land.point()``.
        span: the range of ``t``; it must put ``t = 0`` and ``t = 1`` on the grid.
            Default: :func:`default_span` of ``steps``, about ``(-0.5, 1.5)`` with both
            on the grid for any ``steps``.
        steps: number of points.
        reset_bn: recompute BatchNorm statistics at each point.
        bn_data: data for the statistics: ``(X, y)`` or a loader (default: the
            landscape's first data set).
        datasets, strategy, progress: as in :func:`lossmap.line`.

    Returns:
        A :class:`~lossmap.results.Curve` (``alpha`` is ``t``) whose
        ``meta["barrier"]`` maps ``"<set>/loss"`` and ``"<set>/error"`` (where an
        accuracy exists) to :meth:`Barrier.as_dict`; ``meta["reset_bn"]`` says which
        statistics were used.

    Raises:
        ValueError: endpoints of another architecture (the first mismatches are named),
            non-finite endpoints, a grid without ``t = 0`` and ``1``, or ``reset_bn``
            on a model without BatchNorm.
    """
    pts = _check_pair(land, {"a": a, "b": b})
    a, b = pts["a"], pts["b"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    ((lo, hi),) = parse_span(default_span(steps) if span is None else span, 1)
    _grid01_check(grid(lo, hi, steps), (lo, hi), steps)
    _check_endpoints(land, a, b)
    n_bn = len(_bn_layers(land.model))
    if not reset_bn:
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
        result.meta["batchnorm_layers"] = n_bn
        if n_bn:
            result.meta["bn_statistics"] = "the landscape's buffers at every t"
    else:
        t0 = time.perf_counter()
        bench = _BNWorkbench(land, bn_data)
        t = grid(lo, hi, steps)
        t[np.abs(t - 1.0) <= _T_TOL] = 1.0
        d = V.sub(b, a)
        rows: list[dict[str, np.ndarray]] = []
        for i, ti in enumerate(t):
            # Elementwise like the batched engine: origin + t * (b - a).
            p = {k: a[k] + float(ti) * d[k] for k in a}
            fixed = bench.buffers_at(p)
            if all(torch.isfinite(x).all() for x in fixed.values() if x.is_floating_point()):
                vals = land.at({**p, **fixed}).evaluate([p], datasets=datasets, strategy=strategy)
                rows.append(_values_only(vals))
            else:
                rows.append({})
            if progress is not None:
                progress(i + 1, steps)
        keys = next((list(r) for r in rows if r), [])
        values = {k: np.array([r[k][0] if r else np.nan for r in rows]) for k in keys}
        result = Curve(
            {"alpha": t},
            values,
            {
                "view": "interpolate",
                "default_dataset": land.default_dataset,
                "datasets": {k: ds.size for k, ds in land.datasets.items()},
                "model": type(land.model).__name__,
                "n_parameters": land.num_parameters,
                "span": [lo, hi],
                "steps": steps,
                "distance": float(V.norm(d)),
                "reset_bn": True,
                "batchnorm_layers": n_bn,
                "bn_statistics": "recomputed at every t on "
                + ("bn_data" if bn_data is not None else f"data set {land.default_dataset!r}")
                + " (batch-size-weighted cumulative average)",
                "device": str(land.device),
                "versions": versions(),
                "seconds": time.perf_counter() - t0,
            },
        )
    result.meta["barrier"] = _barriers(result)
    return result


# ---------------------------------------------------------------------------- curves
class CurveKind(str, enum.Enum):
    """The parametric family of a mode-connecting curve (Garipov et al. 2018, §3)."""

    BEZIER = "bezier"
    POLYCHAIN = "polychain"


def _kind(value: str | CurveKind) -> CurveKind:
    return choice(value, CurveKind, "curve kind")


def coefficients(kind: str | CurveKind, t: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Weights ``(c_a, c_θ, c_b)`` with ``φ(t) = c_a a + c_θ θ + c_b b``: shape ``[len(t), 3]``.

    Bézier: ``((1 - t)², 2 t (1 - t), t²)``; polychain: ``(1 - 2t, 2t, 0)`` for
    ``t < 1/2``, ``(0, 2 - 2t, 2t - 1)`` after. The weights sum to 1 (an affine
    combination), so the curve lies in the plane through ``a``, ``θ`` and ``b``.

    >>> coefficients("bezier", [0.0, 0.5, 1.0]).tolist()
    [[1.0, 0.0, 0.0], [0.25, 0.5, 0.25], [0.0, 0.0, 1.0]]
    """
    k = _kind(kind)
    tt = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if k is CurveKind.BEZIER:
        return np.stack([(1 - tt) ** 2, 2 * tt * (1 - tt), tt**2], axis=1)
    first = tt < 0.5
    ca = np.where(first, 1 - 2 * tt, 0.0)
    cb = np.where(first, 0.0, 2 * tt - 1)
    ct = np.where(first, 2 * tt, 2 - 2 * tt)
    return np.stack([ca, ct, cb], axis=1)


def _blend(
    c: Sequence[float],
    a: Mapping[str, Tensor],
    theta: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
) -> V.Vector:
    ca, ct, cb = (float(x) for x in c)
    return {k: ca * a[k] + ct * theta[k] + cb * b[k] for k in a}


@dataclass
class CurveFit:
    """A fitted mode-connecting curve and the loss along it and along the straight line.

    Attributes:
        kind: ``"bezier"`` or ``"polychain"``.
        a, b: the fixed endpoints; ``bend``: the trained control point θ.
        t: the evaluation grid on ``[0, 1]`` (``steps`` points).
        values: ``{"<set>/<stat>": array [len(t)]}`` along the curve.
        line_values: the same along the straight path ``(1 - t) a + t b``.
        barrier_curve, barrier_line: the default data set's loss barriers.
        history: the mean training loss of each epoch (``[epochs]``).
        meta: settings, timings, endpoint losses, every barrier.
    """

    kind: str
    a: V.Vector
    b: V.Vector
    bend: V.Vector
    t: np.ndarray
    values: dict[str, np.ndarray]
    line_values: dict[str, np.ndarray]
    barrier_curve: Barrier
    barrier_line: Barrier
    history: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def coefficients(self, t: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """``[len(t), 3]`` weights of ``(a, bend, b)`` (see :func:`coefficients`)."""
        return coefficients(self.kind, t)

    def point(self, t: float) -> V.Vector:
        """``φ(t)``, a parameter dict."""
        return _blend(self.coefficients(t)[0], self.a, self.bend, self.b)

    def to_curve(self, path: str = "curve") -> Curve:
        """The values along the fitted curve (``path="curve"``) or the straight line
        (``"line"``) as a :class:`~lossmap.results.Curve` (``alpha`` is ``t``)."""
        if path not in ("curve", "line"):
            raise ValueError(f"unknown path {path!r}; choose one of curve, line")
        vals = self.values if path == "curve" else self.line_values
        meta = {
            **self.meta,
            "view": "interpolate",
            "path": self.kind if path == "curve" else "line",
        }
        return Curve({"alpha": self.t}, vals, meta)

    def barrier(self, key: str = "loss", *, path: str = "curve") -> Barrier:
        """The barrier of any statistic along the curve or the line (see :func:`barrier`)."""
        return barrier(self.to_curve(path), key=key)


def _seed_for(seed: int, epoch: int) -> int:
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def _shufflable(ds_batches: list[Batch]) -> Batch | None:
    """All held batches joined into one (for shuffling), or None if they cannot be."""

    def ok(x: object, n: int) -> bool:
        return isinstance(x, Tensor) and x.ndim > 0 and x.shape[0] == n

    if not ds_batches:
        return None
    first = ds_batches[0]
    if isinstance(first, tuple | list):
        if not all(
            isinstance(b, tuple | list)
            and len(b) == len(first)
            and all(ok(x, _batch_size(b)) for x in b)
            for b in ds_batches
        ):
            return None
        return tuple(
            torch.cat([b[i] for b in ds_batches]) if len(ds_batches) > 1 else first[i]
            for i in range(len(first))
        )
    if isinstance(first, Mapping):
        if not all(
            isinstance(b, Mapping)
            and b.keys() == first.keys()
            and all(ok(x, _batch_size(b)) for x in b.values())
            for b in ds_batches
        ):
            return None
        return {
            k: torch.cat([b[k] for b in ds_batches]) if len(ds_batches) > 1 else first[k]
            for k in first
        }
    return None


def _take(batch: Batch, idx: Tensor) -> Batch:
    if isinstance(batch, Mapping):
        return {k: v[idx] for k, v in batch.items()}
    return tuple(x[idx] for x in batch)


def _minibatches(joined: Batch, perm: Tensor, size: int, device: torch.device) -> Iterator[Batch]:
    for i in range(0, int(perm.numel()), size):
        yield _take(joined, perm[i : i + size].to(device))


def _flat(vec: Sequence[Tensor]) -> np.ndarray:
    """Concatenate tensors into one numpy array: float64 if any is, else float32 (so the
    parameters' own dtype for float32/float64 models; float16 and bfloat16 are widened,
    which is exact, as is narrowing them back)."""
    if not vec:
        return np.zeros(0)
    wide = torch.float64 if any(t.dtype == torch.float64 for t in vec) else torch.float32
    return torch.cat([t.detach().reshape(-1).to("cpu", wide) for t in vec]).numpy()


def _unflat(arr: np.ndarray, like: Sequence[Tensor]) -> list[Tensor]:
    flat = torch.from_numpy(np.asarray(arr))
    out, i = [], 0
    for t in like:
        out.append(flat[i : i + t.numel()].reshape(t.shape).to(t.device, t.dtype).clone())
        i += t.numel()
    if i != flat.numel():
        raise ValueError(
            f"the journal holds a curve state of {flat.numel()} numbers, expected {i}; "
            "it was written for another model: use a fresh journal"
        )
    return out


def _digest(vec: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k, t in vec.items():
        h.update(k.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def curve(
    land: Landscape,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    kind: str | CurveKind = "bezier",
    epochs: int = 20,
    lr: float = 0.05,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    steps: int = 41,
    datasets: Sequence[str] | None = None,
    journal: Journal | _JournalLike | None = None,
    strategy: str = "auto",
    progress: Progress | None = None,
) -> CurveFit:
    """Fit a low-loss curve from ``a`` to ``b`` (Garipov et al. 2018, mode connectivity).

    The curve ``φ_θ(t)``, ``t ∈ [0, 1]``, has fixed endpoints ``φ(0) = a``, ``φ(1) = b``
    and one trainable bend ``θ``, initialised at the midpoint ``(a + b) / 2``:

    - Bézier: ``φ(t) = (1 - t)² a + 2 t (1 - t) θ + t² b``;
    - polychain: ``a -> θ`` for ``t ∈ [0, 1/2]``, ``θ -> b`` for ``t ∈ [1/2, 1]``.

    With BatchNorm layers the curve is trained in train mode (batch statistics, dropout
    seeded per epoch) and every evaluated point, on the curve and on the line, gets its
    running statistics recomputed on the first data set before evaluation, as Garipov
    et al. do.

    ``θ`` minimises ``E_{t ~ U(0, 1)} L(φ_θ(t))`` by SGD with momentum, one ``t`` drawn
    per minibatch as in the paper (Garipov et al. 2018, §3.2), on the landscape's first
    data set: in-memory data are shuffled into minibatches of ``batch_size``; streamed
    data are taken in the loader's own batches and order. Each epoch's data order and
    ``t`` draws come from a generator seeded by ``(seed, epoch)``, so a run is
    deterministic. The loss is the landscape's (eval mode, so no dropout, unless it was
    built with ``train_mode=True``). After training, every data set is evaluated at ``steps`` points
    along the curve and along the straight line (one batched evaluation).

    Resume: with a ``journal``, each finished epoch stores the bend and the momentum
    buffers (in the parameters' dtype, exactly) under ``"curve/bend/<i>"``,
    ``"curve/momentum/<i>"``, then ``"curve/epoch/<i>"`` (the epoch's loss, written
    last), and a later call continues after the last stored epoch, ending bit-identical
    to an uninterrupted run (for streamed data, if the loader's order is deterministic).
    ``"curve/config"`` guards against resuming with other settings or endpoints.

    Args:
        land: the landscape (its model is never modified).
        a, b: the endpoints (parameter dicts keyed like ``land.point()``).
        kind: ``"bezier"`` or ``"polychain"``.
        epochs: passes over the data.
        lr, momentum, weight_decay: SGD settings (weight decay on the bend).
        batch_size: minibatch size for in-memory data.
        seed: randomness of data order and ``t`` draws.
        steps: evaluation points along ``t ∈ [0, 1]``.
        datasets: data sets to evaluate (default all).
        journal: a :class:`lossmap.store.Journal` (or anything with ``get``/``put``).
        strategy: evaluation strategy (see :mod:`lossmap.evaluate`).
        progress: ``progress(epochs_done, epochs)`` after each epoch.

    Returns:
        A :class:`CurveFit`.

    Raises:
        ValueError: endpoints of another architecture or with a non-finite loss, an
            unknown ``kind``, bad settings, a model with BatchNorm (statistics along a
            curve are not recomputed yet), or a journal written with other settings.
    """
    k = _kind(kind)
    for name, val, minimum in (
        ("epochs", epochs, 0),
        ("batch_size", batch_size, 1),
        ("steps", steps, 2),
    ):
        if not isinstance(val, int) or isinstance(val, bool) or val < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {val!r}")
    for name, x in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not (math.isfinite(x) and x >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    if lr == 0:
        raise ValueError("lr must be > 0, e.g. lr=0.05")
    has_bn = bool(_bn_layers(land.model))
    # With BatchNorm the curve is trained in train mode (batch statistics, as Garipov et
    # al. do), and every evaluated point gets its statistics recomputed afterwards.
    fit_land = land
    if has_bn:
        fit_land = copy.copy(land)
        fit_land.train_mode = True
    pts = _check_pair(land, {"a": a, "b": b})
    a, b = pts["a"], pts["b"]
    ends = _check_endpoints(land, a, b)
    t_start = time.perf_counter()

    names = list(a)
    bend = {n: ((a[n] + b[n]) / 2).detach().clone().requires_grad_(True) for n in names}
    leaves = [bend[n] for n in names]
    opt = torch.optim.SGD(leaves, lr=lr, momentum=momentum, weight_decay=weight_decay)

    ds = land.datasets[land.default_dataset]
    joined = _shufflable(ds.batches) if ds.batches is not None else None
    config = {
        "kind": k.value,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "seed": seed,
        "dataset": land.default_dataset,
        "n_parameters": land.num_parameters,
        "a": _digest(a),
        "b": _digest(b),
    }
    history: list[float] = []
    start = 0
    if journal is not None:
        blob = np.frombuffer(json.dumps(config, sort_keys=True).encode(), dtype=np.uint8)
        stored = journal.get("curve/config")
        if stored is None:
            journal.put("curve/config", blob.copy())
        elif bytes(np.asarray(stored, dtype=np.uint8)) != blob.tobytes():
            old = json.loads(bytes(np.asarray(stored, dtype=np.uint8)).decode())
            diff = {key: (old.get(key), val) for key, val in config.items() if old.get(key) != val}
            raise ValueError(
                f"the journal holds a curve fit with other settings {diff} (stored, now); "
                "use a fresh journal or the same settings"
            )
        while start < epochs:
            got = journal.get(f"curve/epoch/{start}")
            if got is None:
                break
            history.append(float(np.asarray(got).reshape(-1)[0]))
            start += 1
        if start:
            last = start - 1
            bend_arr = journal.get(f"curve/bend/{last}")
            mom_arr = journal.get(f"curve/momentum/{last}")
            if bend_arr is None or mom_arr is None:
                raise ValueError(
                    f"the journal marks epoch {last} done but lacks its curve state; "
                    "it is damaged: use a fresh journal"
                )
            with torch.no_grad():
                for leaf, saved in zip(leaves, _unflat(bend_arr, leaves), strict=True):
                    leaf.copy_(saved)
            if np.asarray(mom_arr).size:
                for leaf, buf in zip(leaves, _unflat(mom_arr, leaves), strict=True):
                    opt.state[leaf]["momentum_buffer"] = buf

    with fit_land.mode(), torch.random.fork_rng(devices=[]):
        for epoch in range(start, epochs):
            gen = torch.Generator().manual_seed(_seed_for(seed, epoch))
            torch.manual_seed(_seed_for(seed, epoch))  # dropout, if any: same per epoch
            ts: Tensor | None = None
            batches: Iterable[Batch] = ds
            if joined is not None:
                n = int(ds.size or 0)
                perm = torch.randperm(n, generator=gen)
                ts = torch.rand(math.ceil(n / batch_size), generator=gen, dtype=torch.float64)
                batches = _minibatches(joined, perm, batch_size, land.device)
            total, count = 0.0, 0
            for j, batch in enumerate(batches):
                tj = (
                    float(ts[j])
                    if ts is not None
                    else float(torch.rand((), generator=gen, dtype=torch.float64))
                )
                phi = _blend(coefficients(k, tj)[0], a, bend, b)
                nb = _batch_size(batch)
                loss = fit_land.batch_stats(phi, batch, metrics=False)[0] / nb
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * nb
                count += nb
            epoch_loss = total / max(count, 1)
            if not math.isfinite(epoch_loss):
                raise ValueError(
                    f"curve training diverged in epoch {epoch} (mean loss {epoch_loss}); "
                    f"lower lr (now {lr})"
                )
            history.append(epoch_loss)
            if journal is not None:
                journal.put(f"curve/bend/{epoch}", _flat(leaves))
                bufs = [opt.state[leaf].get("momentum_buffer") for leaf in leaves]
                journal.put(
                    f"curve/momentum/{epoch}",
                    _flat([x for x in bufs if x is not None])
                    if all(x is not None for x in bufs)
                    else np.zeros(0),
                )
                journal.put(f"curve/epoch/{epoch}", np.array([epoch_loss], dtype=np.float64))
            if progress is not None:
                progress(epoch + 1, epochs)
    t_train = time.perf_counter() - t_start
    theta = {n: bend[n].detach().clone() for n in names}

    # Curve and line in one batched evaluation: both are affine in (θ - a, b - a).
    t = np.linspace(0.0, 1.0, steps)
    c = coefficients(k, t)
    coeffs = np.concatenate(
        [np.stack([c[:, 1], c[:, 2]], axis=1), np.stack([np.zeros_like(t), t], axis=1)]
    )
    t_eval = time.perf_counter()
    if has_bn:
        all_values, info = _evaluate_with_bn(
            land, a, [V.sub(theta, a), V.sub(b, a)], coeffs, datasets
        )
    else:
        res = run(
            land,
            Span(a, [V.sub(theta, a), V.sub(b, a)], coeffs),
            datasets=datasets,
            strategy=strategy,
            view="connect",
        )
        all_values, info = res.values, res.info
    values = {key: v[:steps] for key, v in all_values.items()}
    line_values = {key: v[steps:] for key, v in all_values.items()}
    t_eval = time.perf_counter() - t_eval
    meta: dict[str, Any] = {
        **config,
        "epochs": epochs,
        "resumed_from_epoch": start,
        "steps": steps,
        "default_dataset": land.default_dataset,
        "datasets": {key: d.size for key, d in land.datasets.items()},
        "model": type(land.model).__name__,
        "endpoint_loss": ends,
        "distance": float(V.norm(V.sub(b, a))),
        "bend_offset": float(V.norm(V.sub(theta, V.scale(V.add(a, b), 0.5)))),
        "seconds_train": t_train,
        "seconds_eval": t_eval,
        "engine": info,
        "batchnorm": (
            "trained in train mode (batch statistics); statistics recomputed at every "
            "evaluated point"
            if has_bn
            else None
        ),
        "device": str(land.device),
        "versions": versions(),
    }
    fit = CurveFit(
        kind=k.value,
        a=a,
        b=b,
        bend=theta,
        t=t,
        values=values,
        line_values=line_values,
        barrier_curve=barrier(
            values[f"{land.default_dataset}/loss"], t, key=f"{land.default_dataset}/loss"
        ),
        barrier_line=barrier(
            line_values[f"{land.default_dataset}/loss"], t, key=f"{land.default_dataset}/loss"
        ),
        history=np.asarray(history, dtype=np.float64),
        meta=meta,
    )
    fit.meta["barrier"] = {
        "curve": _barriers(fit.to_curve("curve")),
        "line": _barriers(fit.to_curve("line")),
    }
    return fit


def _evaluate_with_bn(
    land: Landscape,
    origin: V.Vector,
    dirs: list[V.Vector],
    coeffs: np.ndarray,
    datasets: Sequence[str] | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every point ``origin + Σ c_k d_k`` evaluated with its own BatchNorm statistics,
    recomputed on the first data set (as Garipov et al.'s ``bn_update`` before each
    evaluation)."""
    bench = _BNWorkbench(land, None)
    rows: list[dict[str, np.ndarray]] = []
    for c in coeffs:
        p = {
            k: origin[k] + sum(float(ck) * d[k] for ck, d in zip(c, dirs, strict=True))
            for k in origin
        }
        fixed = bench.buffers_at(p)
        if all(torch.isfinite(x).all() for x in fixed.values() if x.is_floating_point()):
            vals = land.at({**p, **fixed}).evaluate([p], datasets=datasets, strategy="loop")
            rows.append(_values_only(vals))
        else:
            rows.append({})
    keys = next((list(r) for r in rows if r), [])
    values = {k: np.array([r[k][0] if r else np.nan for r in rows]) for k in keys}
    return values, {"strategy": "loop, BatchNorm statistics recomputed at every point"}


# ---------------------------------------------------------------------------- plane
def plane3(
    land: Landscape,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    c: Mapping[str, Tensor],
    *,
    span: object = None,
    steps: int | tuple[int, int] = 41,
    margin: float = 0.2,
    datasets: Sequence[str] | None = None,
    strategy: str = "auto",
    progress: Progress | None = None,
) -> Surface:
    """The loss on the plane through three points ``a``, ``b``, ``c`` (Garipov et al. 2018, Fig. 1).

    Origin ``a``; orthonormal axes (Gram-Schmidt) ``u = (b - a) / ||b - a||`` and
    ``v = w / ||w||``, ``w = (c - a) - <c - a, u> u``; so coordinates are distances in
    parameter space and the picture is not distorted (equal aspect). The points sit at
    ``a = (0, 0)``, ``b = (||b - a||, 0)``, ``c = (<c - a, u>, ||w||)``, recorded in
    ``meta["points"]`` for plots. A Bézier or polychain curve through bend ``c`` lies in
    this plane: its coordinates are ``coefficients(kind, t) @ [a, c, b]`` (2-D).

    Args:
        land: the landscape.
        a, b, c: three points (parameter dicts); ``c`` not on the line through ``a``, ``b``.
        span: ``[(lo1, hi1), (lo2, hi2)]`` in parameter distance; default: the box
            around the three points, widened by ``margin`` times its larger side.
        steps: points per axis (an int or a pair).
        margin: see ``span``.
        datasets, strategy, progress: as in :func:`lossmap.plane`.

    Returns:
        A :class:`~lossmap.results.Surface`; ``meta["points"]`` holds the 2-D
        coordinates of ``a``, ``b``, ``c`` and ``meta["axes"]`` describes the axes.

    Raises:
        ValueError: points of another architecture, or three collinear points.
    """
    pts = _check_pair(land, {"a": a, "b": b, "c": c})
    a, b, c = pts["a"], pts["b"], pts["c"]
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    u = V.sub(b, a)
    du = float(V.norm(u))
    if du == 0.0:
        raise ValueError("a and b are the same point; plane3 needs three distinct points")
    uhat = {k: (x.double() / du).to(x.dtype) for k, x in u.items()}
    w = V.sub(c, a)
    cx = float(V.dot(w, u)) / du
    # Gram-Schmidt in float64, then back to the parameters' dtype.
    v64 = {k: w[k].double() - cx * (u[k].double() / du) for k in w}
    dv = float(V.norm(v64))
    if dv <= 1e-9 * max(du, float(V.norm(w))):
        raise ValueError(
            "c lies on the line through a and b (no plane through them); pass a point off "
            "that line, e.g. a fitted curve's bend"
        )
    vhat = {k: (x / dv).to(a[k].dtype) for k, x in v64.items()}
    xs, ys = [0.0, du, cx], [0.0, 0.0, dv]
    if span is None:
        pad = margin * max(max(xs) - min(xs), max(ys) - min(ys))
        span = [(min(xs) - pad, max(xs) + pad), (min(ys) - pad, max(ys) + pad)]
    d1 = Direction(uhat, kind="plane3", axis="u", label="u: toward b (parameter distance)")
    d2 = Direction(vhat, kind="plane3", axis="v", label="v: toward c, ⊥ u (parameter distance)")
    surf = plane(
        land,
        d1,
        d2,
        span=span,
        steps=steps,
        origin=a,
        datasets=datasets,
        strategy=strategy,
        progress=progress,
    )
    surf.meta["points"] = {"a": [0.0, 0.0], "b": [du, 0.0], "c": [cx, dv]}
    surf.meta["axes"] = (
        "orthonormal (Gram-Schmidt): origin a, u along b - a, v along the part of c - a "
        "orthogonal to u; coordinates in parameter-space distance"
    )
    return surf
