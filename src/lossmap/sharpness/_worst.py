"""Worst-case sharpness: Keskar et al.'s ε-sharpness and adaptive sharpness (ASAM)."""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap._checks import choice
from lossmap.hessian import single_blas_thread
from lossmap.landscape import Landscape
from lossmap.sharpness._ascent import Best, Objective, ascent, lbfgsb
from lossmap.sharpness._common import ANDRIUSHCHENKO, KESKAR, KWON, count, finite, positive, setup


class Region(str, enum.Enum):
    """The neighbourhood of :func:`epsilon`."""

    BOX = "box"
    BALL = "ball"


class Method(str, enum.Enum):
    """How :func:`epsilon` maximises the loss."""

    LBFGSB = "lbfgsb"
    PGD = "pgd"


@dataclass
class WorstCase:
    """The worst loss found in a neighbourhood of θ.

    ``value`` is the sharpness as its paper defines it: Keskar's
    ``φ = 100 (max − L) / (1 + L)`` for :func:`epsilon`, the raw increase
    ``max − L`` for :func:`adaptive`. ``increase = max_loss − loss`` always.
    ``delta`` is the perturbation reached (``max_loss = L(θ + delta)``);
    ``evaluations`` counts passes over the data set, each a loss with its gradient.
    """

    value: float
    increase: float
    loss: float
    max_loss: float
    delta_norm: float
    evaluations: int
    seconds: float
    delta: V.Vector = field(repr=False, default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _worst_case(
    land: Landscape,
    theta: V.Vector,
    obj: Objective,
    best: Best,
    loss0: float,
    t0: float,
    *,
    keskar: bool,
    meta: dict[str, Any],
) -> WorstCase:
    assert best.delta is not None
    max_loss = max(best.value, loss0)
    increase = max_loss - loss0
    value = 100.0 * increase / (1.0 + loss0) if keskar else increase
    delta = V.unflatten(best.delta, theta)
    meta["restart_max_losses"] = [float(v) for v in best.starts]
    return WorstCase(
        value=float(value),
        increase=float(increase),
        loss=float(loss0),
        max_loss=float(max_loss),
        delta_norm=float(V.norm(delta)),
        evaluations=obj.calls,
        seconds=time.perf_counter() - t0,
        delta=delta,
        meta=meta,
    )


# ---------------------------------------------------------------------- epsilon
def _region_method(region: str | Region, method: str | Method | None) -> tuple[Region, Method]:
    """The region and the method of :func:`epsilon` (by default L-BFGS-B for the box,
    projected ascent for the ball)."""
    reg = choice(region, Region, "region", show=repr)
    if method is None:
        meth = Method.LBFGSB if reg is Region.BOX else Method.PGD
    else:
        meth = choice(method, Method, "method", show=repr)
    if reg is Region.BALL and meth is Method.LBFGSB:
        raise ValueError(
            "method 'lbfgsb' handles bound constraints only, not the ball; use "
            "method='pgd' for region='ball'"
        )
    return reg, meth


@single_blas_thread
def _start(
    land: Landscape,
    point: Mapping[str, Tensor] | None,
    dataset: str | None,
    ignore: Sequence[str],
) -> tuple[V.Vector, str, Tensor, Objective, float, Tensor]:
    """θ, the data set, the mask of moving entries, the objective, and the loss and
    gradient at θ (refused when not finite): the start of every worst-case search."""
    theta, ds, mask = setup(land, point, dataset, ignore)
    obj = Objective(land, theta, ds)
    loss0, grad0 = obj(torch.zeros_like(mask))
    finite(loss0)
    return theta, ds, mask, obj, loss0, grad0


def epsilon(
    land: Landscape,
    eps: float,
    *,
    region: str | Region = "box",
    method: str | Method | None = None,
    restarts: int = 2,
    max_iter: int | None = None,
    seed: int = 0,
    point: Mapping[str, Tensor] | None = None,
    dataset: str | None = None,
    ignore: Sequence[str] = (),
) -> WorstCase:
    """ε-sharpness (Keskar et al. 2017): the worst relative loss increase near θ.

    ``φ(θ, ε) = 100 · (max_{δ ∈ C_ε} L(θ + δ) − L(θ)) / (1 + L(θ))``

    with ``C_ε = {δ : |δ_i| ≤ ε (|θ_i| + 1)}`` (``region="box"``: Keskar's eq. (3)
    with ``A = I_n``; the box scales with each weight's magnitude) or
    ``C_ε = {δ : ||δ||₂ ≤ ε}`` (``region="ball"``). Keskar et al. report ε = 1e-3
    and 5e-4, and solve the maximisation inexactly with a few L-BFGS-B iterations.

    Args:
        land: the landscape.
        eps: the radius ε (> 0).
        region: ``"box"`` or ``"ball"``.
        method: ``"lbfgsb"`` (scipy's L-BFGS-B on the flat float64 parameter vector,
            box only; the default for the box) or ``"pgd"`` (projected normalised-
            gradient ascent with step halving; the default for the ball). For the
            box, ``"pgd"`` is :func:`adaptive` with ``p="inf"``, ``η = 1``, ``ρ = ε``.
        restarts: random starts in addition to the one at ``δ = 0``.
        max_iter: L-BFGS-B iterations (``"lbfgsb"``, default 10) or ascent steps
            (``"pgd"``, default 20) per start.
        seed: seeds the random starts.
        point: θ (default θ0).
        dataset: the data set whose mean loss is maximised (default: the first).
        ignore: parameters held fixed (``"bias"``, ``"norm"`` or name globs, as in
            :func:`lossmap.directions.random`).

    Returns:
        :class:`WorstCase` with ``value = φ`` (a percentage) and the raw increase.

    Raises:
        ValueError: ``eps`` not positive, an unknown ``region``/``method``, or
            ``"lbfgsb"`` asked for the ball.

    The value is the best found, a lower bound on the true maximum; near an exact
    minimum the start at ``δ = 0`` has no gradient to follow, so keep ``restarts ≥ 1``.

    >>> import numpy as np
    >>> from lossmap.examples import quadratic as quadratic_landscape
    >>> land = quadratic_landscape(np.diag([1.0, 4.0]))
    >>> s = epsilon(land, 0.1, region="ball")
    >>> round(s.increase, 6)  # ½ ε² λ_max
    0.02
    """
    eps = positive(eps, "eps", "e.g. eps=1e-3 as in Keskar et al. 2017")
    reg, meth = _region_method(region, method)
    restarts = count(restarts, "restarts", 0)
    if max_iter is None:
        max_iter = 10 if meth is Method.LBFGSB else 20
    max_iter = count(max_iter, "max_iter", 1)
    t0 = time.perf_counter()
    theta, ds, mask, obj, loss0, grad0 = _start(land, point, dataset, ignore)
    flat = obj.flat
    start: dict[str, Any] = {"restarts": restarts, "seed": seed, "loss0": loss0, "grad0": grad0}
    messages: list[str] = []
    if reg is Region.BALL:
        best = ascent(obj, mask, eps, 2, steps=max_iter, **start)
    elif meth is Method.LBFGSB:
        best, messages = lbfgsb(obj, eps * (flat.abs() + 1) * mask, max_iter=max_iter, **start)
    else:
        best = ascent(obj, (flat.abs() + 1) * mask, eps, math.inf, steps=max_iter, **start)
    meta: dict[str, Any] = {
        "definition": (
            "100 (max_{|δ_i| <= eps(|θ_i|+1)} L(θ+δ) - L(θ)) / (1 + L(θ))"
            if reg is Region.BOX
            else "100 (max_{||δ||_2 <= eps} L(θ+δ) - L(θ)) / (1 + L(θ))"
        ),
        "paper": KESKAR,
        "eps": eps,
        "region": reg.value,
        "method": meth.value,
        "restarts": restarts,
        "max_iter": max_iter,
        "seed": int(seed),
        "dataset": ds,
        "ignore": list(ignore),
    }
    if messages:
        meta["lbfgsb_messages"] = messages
    return _worst_case(land, theta, obj, best, loss0, t0, keskar=True, meta=meta)


# --------------------------------------------------------------------- adaptive
def _norm_p(p: object) -> float:
    if p in (2, 2.0, "2"):
        return 2.0
    if p in ("inf", "Inf", math.inf):
        return math.inf
    raise ValueError(f"unknown p {p!r}; choose one of 2, 'inf'")


def adaptive(
    land: Landscape,
    rho: float,
    *,
    p: int | float | str = 2,
    eta: float = 0.0,
    steps: int = 20,
    restarts: int = 2,
    seed: int = 0,
    point: Mapping[str, Tensor] | None = None,
    dataset: str | None = None,
    ignore: Sequence[str] = (),
) -> WorstCase:
    """Adaptive worst-case sharpness (Kwon et al. 2021; Andriushchenko et al. 2023).

    ``S(θ) = max_{||δ ⊘ (|θ| + η)||_p ≤ ρ} L(θ + δ) − L(θ)``

    solved in ``u = δ ⊘ (|θ| + η)`` (``δ = u ⊙ (|θ| + η)``) by projected ascent over
    ``||u||_p ≤ ρ``: normalised-gradient steps for ``p = 2``, sign steps for
    ``p = ∞``, of ``α ρ`` with ``α = 2`` halved whenever a step fails to raise the
    loss (APGD's schedule, Croce & Hein 2020). Start 0 is ``u = 0`` (so the first
    step goes along the gradient), then ``restarts`` random starts.

    With ``η = 0`` (the default, Andriushchenko et al.'s choice) the value is exactly
    invariant to rescaling a ReLU layer by ``c > 0`` and the next by ``1/c`` (Dinh
    et al. 2017): the set of reachable ``θ + δ`` maps onto itself, the function does
    not change, and so the maximisation is the same problem in ``u``. Kwon et al.'s
    ``η > 0`` (e.g. 0.01) keeps zero weights movable but breaks that exact
    invariance. ``p="inf"``, ``η = 1`` and ``ρ = ε`` is Keskar's box.

    Args:
        land: the landscape.
        rho: the radius ρ (> 0) of the ``u`` ball.
        p: ``2`` or ``"inf"``.
        eta: η ≥ 0.
        steps: ascent steps per start.
        restarts: random starts in addition to ``u = 0``.
        seed: seeds the random starts.
        point, dataset, ignore: as in :func:`epsilon`.

    Returns:
        :class:`WorstCase` with ``value = increase = max − L`` (raw, not relative).

    Raises:
        ValueError: ``rho`` not positive, ``eta`` negative, or ``p`` not 2 / ``"inf"``.
    """
    rho = positive(rho, "rho", "e.g. rho=0.05 with p=2")
    pn = _norm_p(p)
    if not (isinstance(eta, int | float) and eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}; eta=0 is scale-invariant")
    steps = count(steps, "steps", 1)
    restarts = count(restarts, "restarts", 0)
    t0 = time.perf_counter()
    theta, ds, mask, obj, loss0, grad0 = _start(land, point, dataset, ignore)
    scale = (obj.flat.abs() + float(eta)) * mask
    if not bool((scale != 0).any()):
        raise ValueError("every parameter is 0 and eta = 0: nothing can move; use eta > 0")
    best = ascent(
        obj,
        scale,
        rho,
        pn,
        steps=steps,
        restarts=restarts,
        seed=seed,
        loss0=loss0,
        grad0=grad0,
    )
    meta: dict[str, Any] = {
        "definition": f"max_{{||δ / (|θ| + eta)||_{'inf' if pn == math.inf else 2} <= rho}} "
        "L(θ+δ) - L(θ)",
        "paper": f"{KWON}; {ANDRIUSHCHENKO}",
        "rho": rho,
        "p": "inf" if pn == math.inf else 2,
        "eta": float(eta),
        "steps": steps,
        "restarts": restarts,
        "seed": int(seed),
        "dataset": ds,
        "ignore": list(ignore),
    }
    return _worst_case(land, theta, obj, best, loss0, t0, keskar=False, meta=meta)
