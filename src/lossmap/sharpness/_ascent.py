"""Maximising the loss near θ: projected ascent (ℓ2 ball, ℓ∞ box) and L-BFGS-B (box).

The loss and its gradient come from the derivative core,
:meth:`lossmap.objective.Objective.value_and_grad`, through :class:`Objective`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap.landscape import Landscape
from lossmap.sharpness._common import generator


class Objective:
    """``x -> (L(θ + x), ∇L(θ + x))`` over flat parameter vectors, counting passes."""

    def __init__(self, land: Landscape, theta: V.Vector, dataset: str) -> None:
        self.land = land
        self.theta = theta
        self.flat = V.flatten(theta)
        self.dataset = dataset
        self.calls = 0

    def __call__(self, delta: Tensor) -> tuple[float, Tensor]:
        point = V.unflatten(self.flat + delta, self.theta)
        value, grad = self.land.value_and_grad(point, dataset=self.dataset)
        self.calls += 1
        return value, torch.cat([grad[k].reshape(-1) for k in point]).detach()


def _direction(g: Tensor, p: float, mask: Tensor, gen: torch.Generator) -> Tensor:
    """The steepest-ascent unit step for the ℓp ball: ``g/||g||₂`` or ``sign(g)``.

    A zero gradient (θ exactly at a minimum) gives a random direction instead.
    """
    if not bool((g != 0).any()):
        g = torch.randn(g.shape, generator=gen, dtype=torch.float64).to(g) * mask
    if p == 2:
        return g / g.norm()
    return torch.sign(g)


def _project(u: Tensor, rho: float, p: float) -> Tensor:
    if p == 2:
        norm = float(u.norm())
        return u * (rho / norm) if norm > rho else u
    return u.clamp(-rho, rho)


def _random_start(n: int, rho: float, p: float, mask: Tensor, gen: torch.Generator) -> Tensor:
    if p == 2:
        z = torch.randn(n, generator=gen, dtype=torch.float64).to(mask) * mask
        return z * (rho / z.norm())
    return (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1).to(mask) * mask * rho


@dataclass
class Best:
    value: float = -math.inf
    delta: Tensor | None = None
    starts: list[float] = field(default_factory=list)

    def offer(self, value: float, delta: Tensor) -> None:
        if math.isfinite(value) and value > self.value:
            self.value = value
            self.delta = delta.detach().clone()


def ascent(
    obj: Objective,
    scale: Tensor,
    rho: float,
    p: float,
    *,
    steps: int,
    restarts: int,
    seed: int,
    loss0: float,
    grad0: Tensor,
) -> Best:
    """Maximise ``L(θ + scale ⊙ u)`` over ``||u||_p ≤ rho`` by projected ascent.

    Normalised-gradient (p = 2) or sign-gradient (p = ∞) steps of ``α ρ`` with
    ``α = 2`` at first (the first step from ``u = 0`` reaches the boundary in the
    gradient direction), halved whenever a step does not raise the loss (a rejected
    step is not taken): monotone, as in APGD's step-size schedule (Croce & Hein
    2020). Start 0 is ``u = 0``; ``restarts`` more start at random boundary points
    (p = 2) or uniform points of the box (p = ∞).
    """
    best = Best()
    mask = (scale != 0).to(scale.dtype)
    n = scale.numel()
    for r in range(restarts + 1):
        gen = generator(seed, r)
        if r == 0:
            u = torch.zeros_like(scale)
            value, g = loss0, grad0
        else:
            u = _random_start(n, rho, p, mask, gen)
            value, g = obj(scale * u)
        start_best = value
        best.offer(value, scale * u)
        alpha = 2.0
        for _ in range(steps):
            gu = scale * g
            step = _direction(gu, p, mask, gen) * mask
            u_new = _project(u + (alpha * rho) * step, rho, p)
            if torch.equal(u_new, u):
                alpha /= 2
            else:
                v_new, g_new = obj(scale * u_new)
                if math.isfinite(v_new) and v_new > value:
                    u, value, g = u_new, v_new, g_new
                    best.offer(value, scale * u)
                    start_best = max(start_best, value)
                else:
                    alpha /= 2
            if alpha < 2.0**-12:
                break
        best.starts.append(start_best)
    return best


def lbfgsb(
    obj: Objective,
    radius: Tensor,
    *,
    max_iter: int,
    restarts: int,
    seed: int,
    loss0: float,
    grad0: Tensor,
) -> tuple[Best, list[str]]:
    """Maximise ``L(θ + δ)`` over ``|δ_i| ≤ radius_i`` with scipy's L-BFGS-B.

    Runs on float64 numpy copies of δ; the loss and gradient come from the landscape
    in the parameters' own dtype. Start 0 is ``δ = 0`` (Keskar et al.); ``restarts``
    more start at uniform points of the box.
    """
    best = Best()
    messages: list[str] = []
    r64 = radius.double().cpu().numpy()
    bounds = scipy.optimize.Bounds(-r64, r64)
    like = radius

    for r in range(restarts + 1):
        start_best = -math.inf

        def fun(x: np.ndarray, r: int = r) -> tuple[float, np.ndarray]:
            nonlocal start_best
            delta = torch.from_numpy(np.ascontiguousarray(x)).to(like)
            if r == 0 and not bool(delta.any()):
                value, g = loss0, grad0  # δ = 0: already known
            else:
                value, g = obj(delta)
            best.offer(value, delta)
            if not math.isfinite(value):
                return math.inf, np.zeros_like(x)
            start_best = max(start_best, value)
            return -value, -g.double().cpu().numpy()

        if r == 0:
            x0 = np.zeros_like(r64)
        else:
            gen = generator(seed, r)
            x0 = (2 * torch.rand(r64.size, generator=gen, dtype=torch.float64) - 1).numpy() * r64
        res = scipy.optimize.minimize(
            fun,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": max_iter, "maxfun": 2 * max_iter + 10},
        )
        messages.append(str(res.message))
        best.starts.append(start_best)
    return best, messages
