"""The plane through three points, with orthonormal axes (Garipov et al. 2018, Fig. 1)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor

from lossmap import vectors as V
from lossmap.connect._points import check_pair
from lossmap.directions import Direction
from lossmap.evaluate import Progress
from lossmap.landscape import Landscape
from lossmap.results import Surface
from lossmap.slices import plane


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
    pts = check_pair(land, {"a": a, "b": b, "c": c})
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
