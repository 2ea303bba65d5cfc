"""Bézier and polygonal-chain curves through one bend (Garipov et al. 2018, §3)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from lossmap import vectors as V
from lossmap._checks import choice
from lossmap.connect._barrier import Barrier, barrier
from lossmap.results import Curve


class CurveKind(str, enum.Enum):
    """The parametric family of a mode-connecting curve (Garipov et al. 2018, §3)."""

    BEZIER = "bezier"
    POLYCHAIN = "polychain"


def kind_of(value: str | CurveKind) -> CurveKind:
    return choice(value, CurveKind, "curve kind")


def coefficients(kind: str | CurveKind, t: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Weights ``(c_a, c_θ, c_b)`` with ``φ(t) = c_a a + c_θ θ + c_b b``: shape ``[len(t), 3]``.

    Bézier: ``((1 - t)², 2 t (1 - t), t²)``; polychain: ``(1 - 2t, 2t, 0)`` for
    ``t < 1/2``, ``(0, 2 - 2t, 2t - 1)`` after. The weights sum to 1 (an affine
    combination), so the curve lies in the plane through ``a``, ``θ`` and ``b``.

    >>> coefficients("bezier", [0.0, 0.5, 1.0]).tolist()
    [[1.0, 0.0, 0.0], [0.25, 0.5, 0.25], [0.0, 0.0, 1.0]]
    """
    k = kind_of(kind)
    tt = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if k is CurveKind.BEZIER:
        return np.stack([(1 - tt) ** 2, 2 * tt * (1 - tt), tt**2], axis=1)
    first = tt < 0.5
    ca = np.where(first, 1 - 2 * tt, 0.0)
    cb = np.where(first, 0.0, 2 * tt - 1)
    ct = np.where(first, 2 * tt, 2 - 2 * tt)
    return np.stack([ca, ct, cb], axis=1)


def blend(
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
        return blend(self.coefficients(t)[0], self.a, self.bend, self.b)

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
