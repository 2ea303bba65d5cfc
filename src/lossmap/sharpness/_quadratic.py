"""The second-order estimate ``½ ε² λ_max`` next to the measured increase."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from lossmap import vectors as V
from lossmap.hessian import eigenvalues
from lossmap.landscape import Landscape


@dataclass
class Quadratic:
    """``estimate = ½ ε² λ_max`` and the measured ``max_± L(θ ± ε v) - L(θ)``."""

    eps: float
    lambda_max: float
    estimate: float
    measured: float
    loss: float
    matvecs: int
    meta: dict[str, Any] = field(default_factory=dict)


def quadratic(
    land: Landscape,
    eps: float,
    *,
    tol: float = 1e-6,
    seed: int = 0,
    point: Mapping[str, Tensor] | None = None,
) -> Quadratic:
    """The seed's ε-sharpness estimate ``½ ε² λ_max`` (the worst loss increase on the
    ε-sphere of the second-order Taylor model, Keskar et al. 2017), and the increase
    measured on the true loss at ``θ ± ε v`` along the top eigenvector ``v``.

    The two agree to O(ε³) near a minimum; a large gap means the quadratic model does
    not hold at that radius.
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    theta = V.check_vector(point, land.theta0, name="point") if point is not None else land.point()
    eig = eigenvalues(land, 1, which="LA", tol=tol, seed=seed, point=theta)
    lam = float(eig.values[0])
    v = eig.vectors[0]
    vals = land.evaluate(
        [theta, V.add(theta, v, alpha=eps), V.add(theta, v, alpha=-eps)], strategy="loop"
    )
    loss = float(vals["loss"][0])
    measured = max(float(vals["loss"][1]), float(vals["loss"][2])) - loss
    return Quadratic(float(eps), lam, 0.5 * eps**2 * lam, measured, loss, eig.matvecs)
