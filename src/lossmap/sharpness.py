"""Sharpness of a minimum: how much the loss can rise, or rises on average, nearby.

- :func:`epsilon`: the worst loss in a neighbourhood, Keskar et al. 2017 ("On
  Large-Batch Training for Deep Learning: Generalization Gap and Sharp Minima", ICLR):
  the relative box ``|δ_i| ≤ ε(|θ_i| + 1)`` (their eq. (3)-(4), ``A = I_n``), solved with
  L-BFGS-B as they did, or the Euclidean ball ``||δ||₂ ≤ ε``.
- :func:`adaptive`: the worst case in the *adaptive* set ``||δ / (|θ| + η)||_p ≤ ρ``
  (Kwon et al. 2021, "ASAM", ICML; Andriushchenko et al. 2023, "A Modern Look at the
  Relationship between Sharpness and Generalization", ICML). With ``η = 0`` it is
  exactly invariant to the rescalings of ReLU networks that leave the function
  unchanged (Dinh et al. 2017, "Sharp Minima Can Generalize For Deep Nets", ICML),
  which plain ε-sharpness is not.
- :func:`average`: the mean increase under Gaussian noise, ``E_δ[L(θ+δ)] − L(θ)``
  (plain or adaptive), by Monte Carlo with its standard error and a 95 % interval;
  each chunk of samples is one batched call of the evaluation engine, and chunks can
  be journaled for resume.
- :func:`quadratic`: ``½ ε² λ_max`` from the top Hessian eigenvalue, next to the
  increase measured along the top eigenvector.

Every function takes the :class:`~lossmap.landscape.Landscape`, the point ``θ``
(``point=None``: θ0), the data set (``dataset=None``: the first) and ``ignore``
(parameters held fixed). The caller's model is never written to: every loss and
gradient is computed with :func:`torch.func.functional_call` through the landscape.

The worst-case maximisations are non-convex: the values returned are the best loss
*found* (a lower bound on the true maximum), after ``restarts`` extra random starts.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.optimize
import scipy.stats
import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap._checks import choice
from lossmap.hessian import eigenvalues, single_blas_thread
from lossmap.landscape import Landscape

__all__ = [
    "Average",
    "Method",
    "Quadratic",
    "Region",
    "WorstCase",
    "adaptive",
    "average",
    "epsilon",
    "quadratic",
]

KESKAR = (
    "Keskar, Mudigere, Nocedal, Smelyanskiy, Tang 2017, On Large-Batch Training for Deep "
    "Learning: Generalization Gap and Sharp Minima (ICLR)"
)
KWON = (
    "Kwon, Kim, Park, Choi 2021, ASAM: Adaptive Sharpness-Aware Minimization for "
    "Scale-Invariant Learning of Deep Neural Networks (ICML)"
)
ANDRIUSHCHENKO = (
    "Andriushchenko, Croce, Müller, Hein, Flammarion 2023, A Modern Look at the "
    "Relationship between Sharpness and Generalization (ICML)"
)
DINH = "Dinh, Pascanu, Bengio, Bengio 2017, Sharp Minima Can Generalize For Deep Nets (ICML)"


class Region(str, enum.Enum):
    """The neighbourhood of :func:`epsilon`."""

    BOX = "box"
    BALL = "ball"


class Method(str, enum.Enum):
    """How :func:`epsilon` maximises the loss."""

    LBFGSB = "lbfgsb"
    PGD = "pgd"


class Journal(Protocol):
    """What :func:`average` needs of a progress journal (``lossmap.store.Journal``)."""

    def get(self, key: str) -> np.ndarray | None: ...

    def put(self, key: str, value: np.ndarray) -> None: ...


# ----------------------------------------------------------------------- results
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


@dataclass
class Average:
    """Average-case sharpness ``E[L(θ+δ)] − L(θ)`` by Monte Carlo.

    ``stderr`` is the standard error of the mean increase, ``ci`` a 95 % Student-t
    interval; ``losses`` holds ``L(θ + δ_j)`` for every sample ``j`` (``[samples]``);
    ``evaluations`` counts the points evaluated by this call (chunks restored from a
    journal are not counted).
    """

    value: float
    stderr: float
    ci: tuple[float, float]
    loss: float
    avg_loss: float
    samples: int
    evaluations: int
    seconds: float
    losses: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    meta: dict[str, Any] = field(default_factory=dict)


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


# ---------------------------------------------------------------------- helpers
def _positive(value: object, name: str, hint: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}; {hint}") from None
    if not (x > 0 and math.isfinite(x)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}; {hint}")
    return x


def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _setup(
    land: Landscape,
    point: Mapping[str, Tensor] | None,
    dataset: str | None,
    ignore: Sequence[str],
) -> tuple[V.Vector, str, Tensor]:
    """θ (detached), the data set name, and the flat 0/1 mask of moving parameters."""
    from lossmap.directions import ignored_names

    theta = (
        V.check_vector(point, land._params0, name="point") if point is not None else land.point()
    )
    theta = {k: t.detach() for k, t in theta.items()}
    ds = dataset or land.default_dataset
    if ds not in land.datasets:
        raise ValueError(f"unknown data set {ds!r}; this landscape has {list(land.datasets)}")
    ign = ignored_names(land, ignore) if ignore else set()
    if len(ign) == len(theta):
        raise ValueError(
            f"the ignore rules {tuple(ignore)} hold every parameter fixed; drop some of them"
        )
    mask = torch.cat(
        [
            torch.full((t.numel(),), 0.0 if k in ign else 1.0, dtype=t.dtype, device=t.device)
            for k, t in theta.items()
        ]
    )
    return theta, ds, mask


def _finite(loss0: float) -> float:
    if not math.isfinite(loss0):
        raise ValueError(
            f"the loss at θ is {loss0}: sharpness is undefined there; check the point "
            "(e.g. a checkpoint from before training diverged) and the data"
        )
    return loss0


class _Objective:
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


def _generator(seed: int, *index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, *index)`` (independent streams per index)."""
    words = np.random.SeedSequence([int(seed) % 2**64, *index]).generate_state(2, np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(words[0]) << 32 | int(words[1]))


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
class _Best:
    value: float = -math.inf
    delta: Tensor | None = None
    starts: list[float] = field(default_factory=list)

    def offer(self, value: float, delta: Tensor) -> None:
        if math.isfinite(value) and value > self.value:
            self.value = value
            self.delta = delta.detach().clone()


def _ascent(
    obj: _Objective,
    scale: Tensor,
    rho: float,
    p: float,
    *,
    steps: int,
    restarts: int,
    seed: int,
    loss0: float,
    grad0: Tensor,
) -> _Best:
    """Maximise ``L(θ + scale ⊙ u)`` over ``||u||_p ≤ rho`` by projected ascent.

    Normalised-gradient (p = 2) or sign-gradient (p = ∞) steps of ``α ρ`` with
    ``α = 2`` at first (the first step from ``u = 0`` reaches the boundary in the
    gradient direction), halved whenever a step does not raise the loss (a rejected
    step is not taken): monotone, as in APGD's step-size schedule (Croce & Hein
    2020). Start 0 is ``u = 0``; ``restarts`` more start at random boundary points
    (p = 2) or uniform points of the box (p = ∞).
    """
    best = _Best()
    mask = (scale != 0).to(scale.dtype)
    n = scale.numel()
    for r in range(restarts + 1):
        gen = _generator(seed, r)
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


def _lbfgsb(
    obj: _Objective,
    radius: Tensor,
    *,
    max_iter: int,
    restarts: int,
    seed: int,
    loss0: float,
    grad0: Tensor,
) -> tuple[_Best, list[str]]:
    """Maximise ``L(θ + δ)`` over ``|δ_i| ≤ radius_i`` with scipy's L-BFGS-B.

    Runs on float64 numpy copies of δ; the loss and gradient come from the landscape
    in the parameters' own dtype. Start 0 is ``δ = 0`` (Keskar et al.); ``restarts``
    more start at uniform points of the box.
    """
    best = _Best()
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
            gen = _generator(seed, r)
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


def _worst_case(
    land: Landscape,
    theta: V.Vector,
    obj: _Objective,
    best: _Best,
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
@single_blas_thread
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

    >>> from lossmap.examples import quadratic as quadratic_landscape
    >>> land = quadratic_landscape(np.diag([1.0, 4.0]))
    >>> s = epsilon(land, 0.1, region="ball")
    >>> round(s.increase, 6)  # ½ ε² λ_max
    0.02
    """
    eps = _positive(eps, "eps", "e.g. eps=1e-3 as in Keskar et al. 2017")
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
    restarts = _count(restarts, "restarts", 0)
    if max_iter is None:
        max_iter = 10 if meth is Method.LBFGSB else 20
    max_iter = _count(max_iter, "max_iter", 1)
    t0 = time.perf_counter()
    theta, ds, mask = _setup(land, point, dataset, ignore)
    obj = _Objective(land, theta, ds)
    loss0, grad0 = obj(torch.zeros_like(mask))
    _finite(loss0)
    flat = obj.flat
    messages: list[str] = []
    if reg is Region.BOX:
        radius = eps * (flat.abs() + 1) * mask
        if meth is Method.LBFGSB:
            best, messages = _lbfgsb(
                obj,
                radius,
                max_iter=max_iter,
                restarts=restarts,
                seed=seed,
                loss0=loss0,
                grad0=grad0,
            )
        else:
            best = _ascent(
                obj,
                (flat.abs() + 1) * mask,
                eps,
                math.inf,
                steps=max_iter,
                restarts=restarts,
                seed=seed,
                loss0=loss0,
                grad0=grad0,
            )
    else:
        best = _ascent(
            obj,
            mask,
            eps,
            2,
            steps=max_iter,
            restarts=restarts,
            seed=seed,
            loss0=loss0,
            grad0=grad0,
        )
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
    rho = _positive(rho, "rho", "e.g. rho=0.05 with p=2")
    pn = _norm_p(p)
    if not (isinstance(eta, int | float) and eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}; eta=0 is scale-invariant")
    steps = _count(steps, "steps", 1)
    restarts = _count(restarts, "restarts", 0)
    t0 = time.perf_counter()
    theta, ds, mask = _setup(land, point, dataset, ignore)
    obj = _Objective(land, theta, ds)
    loss0, grad0 = obj(torch.zeros_like(mask))
    _finite(loss0)
    scale = (obj.flat.abs() + float(eta)) * mask
    if not bool((scale != 0).any()):
        raise ValueError("every parameter is 0 and eta = 0: nothing can move; use eta > 0")
    best = _ascent(
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


# ---------------------------------------------------------------------- average
def average(
    land: Landscape,
    sigma: float,
    *,
    samples: int = 100,
    adaptive: bool = False,
    seed: int = 0,
    point: Mapping[str, Tensor] | None = None,
    dataset: str | None = None,
    chunk: int = 50,
    journal: Journal | None = None,
    ignore: Sequence[str] = (),
    strategy: str = "auto",
) -> Average:
    """Average-case sharpness: ``E_δ[L(θ + δ)] − L(θ)`` by Monte Carlo.

    Plain: ``δ ~ N(0, σ² I)``. Adaptive (``adaptive=True``): ``δ = σ |θ| ⊙ z``,
    ``z ~ N(0, I)``, invariant to the rescalings of ReLU networks that keep the
    function (Andriushchenko et al. 2023, who call these average-case adaptive
    sharpness; the Gaussian perturbation is the PAC-Bayes view of flatness, Jiang et
    al. 2020, "Fantastic Generalization Measures and Where to Find Them", ICLR).

    The ``samples`` points are evaluated in chunks of ``chunk``, one batched
    ``land.evaluate`` call per chunk. Chunk ``i`` draws its noise from a generator
    seeded by ``(seed, i)`` (float64 on the CPU), so a chunk gives the same numbers
    whether or not the chunks before it were recomputed; the draws do depend on
    ``chunk``. With a ``journal``, chunk ``i``'s losses are stored under
    ``"average/{i}"`` and reused on a rerun: one journal per set of arguments.

    Args:
        land: the landscape.
        sigma: the noise scale σ (> 0).
        samples: Monte Carlo samples (≥ 2, for the standard error).
        adaptive: scale the noise by ``|θ|`` elementwise.
        seed: the noise seed.
        point, dataset, ignore: as in :func:`epsilon` (ignored parameters get no noise).
        chunk: points per ``evaluate`` call.
        journal: an object with ``get(key)`` / ``put(key, array)``
            (``lossmap.store.Journal``), for resume.
        strategy: the evaluation strategy (see :mod:`lossmap.evaluate`); fix it
            (e.g. ``"vmap"``) for bit-identical resumes across processes, since
            ``"auto"`` picks by timing.

    Returns:
        :class:`Average`: the mean increase, its standard error, a 95 % interval.

    Raises:
        ValueError: ``sigma`` not positive, ``samples < 2`` or ``chunk < 1``.

    >>> from lossmap.examples import quadratic as quadratic_landscape
    >>> land = quadratic_landscape(np.eye(3))
    >>> a = average(land, 0.1, samples=400)
    >>> a.ci[0] < 0.015 < a.ci[1]  # ½ σ² tr H
    True
    """
    sigma = _positive(sigma, "sigma", "e.g. sigma=0.01")
    samples = _count(samples, "samples", 2)
    chunk = _count(chunk, "chunk", 1)
    t0 = time.perf_counter()
    theta, ds, mask = _setup(land, point, dataset, ignore)
    flat = V.flatten(theta)
    scale = sigma * (flat.abs() if adaptive else torch.ones_like(flat)) * mask
    key = f"{ds}/loss"
    loss0 = _finite(float(land.evaluate([theta], datasets=[ds], strategy=strategy)[key][0]))
    losses = np.empty(samples)
    evaluated = 0
    restored = 0
    for i, start in enumerate(range(0, samples, chunk)):
        m = min(chunk, samples - start)
        got = journal.get(f"average/{i}") if journal is not None else None
        if got is not None:
            got = np.asarray(got, dtype=np.float64).reshape(-1)
            if got.shape != (m,):
                raise ValueError(
                    f"journal entry 'average/{i}' holds {got.size} values, expected {m}: the "
                    "journal is from a run with other samples/chunk; use a fresh journal"
                )
            losses[start : start + m] = got
            restored += 1
            continue
        gen = _generator(seed, i)
        points = []
        for _ in range(m):
            z = torch.randn(flat.numel(), generator=gen, dtype=torch.float64)
            points.append(V.unflatten(flat + z.to(flat) * scale, theta))
        vals = np.asarray(land.evaluate(points, datasets=[ds], strategy=strategy)[key])
        losses[start : start + m] = vals
        evaluated += m
        if journal is not None:
            journal.put(f"average/{i}", vals.astype(np.float64))
    inc = losses - loss0
    mean = float(inc.mean())
    stderr = float(inc.std(ddof=1) / math.sqrt(samples))
    half = float(scipy.stats.t.ppf(0.975, samples - 1)) * stderr
    meta: dict[str, Any] = {
        "definition": (
            "E_z[L(θ + sigma |θ| ⊙ z)] - L(θ), z ~ N(0, I)"
            if adaptive
            else "E_z[L(θ + sigma z)] - L(θ), z ~ N(0, I)"
        ),
        "paper": ANDRIUSHCHENKO if adaptive else f"{KESKAR}; {ANDRIUSHCHENKO}",
        "sigma": sigma,
        "samples": samples,
        "adaptive": bool(adaptive),
        "seed": int(seed),
        "chunk": chunk,
        "dataset": ds,
        "ignore": list(ignore),
        "chunks_restored": restored,
        "nonfinite": int((~np.isfinite(losses)).sum()),
    }
    return Average(
        value=mean,
        stderr=stderr,
        ci=(mean - half, mean + half),
        loss=loss0,
        avg_loss=float(losses.mean()),
        samples=samples,
        evaluations=evaluated,
        seconds=time.perf_counter() - t0,
        losses=losses,
        meta=meta,
    )


# -------------------------------------------------------------------- quadratic
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
    theta = (
        V.check_vector(point, land._params0, name="point") if point is not None else land.point()
    )
    eig = eigenvalues(land, 1, which="LA", tol=tol, seed=seed, point=theta)
    lam = float(eig.values[0])
    v = eig.vectors[0]
    vals = land.evaluate(
        [theta, V.add(theta, v, alpha=eps), V.add(theta, v, alpha=-eps)], strategy="loop"
    )
    loss = float(vals["loss"][0])
    measured = max(float(vals["loss"][1]), float(vals["loss"][2])) - loss
    return Quadratic(float(eps), lam, 0.5 * eps**2 * lam, measured, loss, eig.matvecs)
