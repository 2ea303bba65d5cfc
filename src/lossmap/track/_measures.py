"""The measures a :class:`~lossmap.track.Tracker` records, by name.

Each is a small function ``(land, ctx, **options) -> float`` over the public API
(``hessian.eigenvalues``, ``hessian.trace``, ``sharpness.*``, ``Landscape.loss``) at the
landscape's θ0, i.e. the model as it is at the step measured. ``ctx`` carries the
tracker's seed, the step, and the state one measurement leaves to the next (the last
top eigenvector, for warm starts).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lossmap import sharpness
from lossmap import vectors as V
from lossmap.hessian import trace
from lossmap.landscape import Landscape
from lossmap.trajectory import warm_lambda_max


@dataclass
class Context:
    """What a measure may read and leave behind: the seed, the step, and the state
    carried between measurements (``state["vector"]``: the last top eigenvector as a
    flat float64 array)."""

    seed: int
    step: int
    state: dict[str, Any] = field(default_factory=dict)


def lambda_max(
    land: Landscape,
    ctx: Context,
    *,
    tol: float = 1e-4,
    max_iter: int | None = None,
    warm_start: bool = True,
) -> float:
    """λ_max, the top Hessian eigenvalue (relative ``tol``), warm-started after the first
    measurement from the last top eigenvector exactly as
    :func:`lossmap.trajectory.gradient_descent` does
    (:func:`lossmap.trajectory.warm_lambda_max`)."""
    prev = ctx.state.get("vector") if warm_start else None
    eig = warm_lambda_max(land, prev, tol=tol, seed=ctx.seed, step=ctx.step, max_iter=max_iter)
    if eig.vectors:
        ctx.state["vector"] = V.flatten(eig.vectors[0]).double().cpu().numpy()
    ctx.state["matvecs"] = ctx.state.get("matvecs", 0) + int(eig.matvecs)
    return float(eig.values[0])


def hessian_trace(
    land: Landscape, ctx: Context, *, method: str = "hutch++", matvecs: int = 90
) -> float:
    """``tr(H)`` by :func:`lossmap.hessian.trace` (Hutch++ by default; the tracker's seed)."""
    return float(trace(land, method=method, matvecs=matvecs, seed=ctx.seed).value)


def loss(land: Landscape, ctx: Context) -> float:
    """The landscape's loss: the exact mean over its default data set."""
    return float(land.loss())


def average(land: Landscape, ctx: Context, *, sigma: float = 0.01, **options: Any) -> float:
    """Average-case sharpness ``E[L(θ+δ)] − L(θ)``, δ ~ N(0, σ²I)
    (:func:`lossmap.sharpness.average`; σ = 0.01 unless given: a default, not a
    paper's value: choose σ for your model)."""
    options.setdefault("samples", 20)
    return float(sharpness.average(land, sigma, seed=ctx.seed, **options).value)


def epsilon(land: Landscape, ctx: Context, *, eps: float = 1e-3, **options: Any) -> float:
    """Keskar et al.'s ε-sharpness (:func:`lossmap.sharpness.epsilon`; ε = 1e-3, one of
    the two radii Keskar et al. 2017 report)."""
    return float(sharpness.epsilon(land, eps, seed=ctx.seed, **options).value)


def adaptive(land: Landscape, ctx: Context, *, rho: float, **options: Any) -> float:
    """Adaptive worst-case sharpness (:func:`lossmap.sharpness.adaptive`); ``rho`` has
    no default."""
    return float(sharpness.adaptive(land, rho, seed=ctx.seed, **options).value)


MEASURES: dict[str, Callable[..., float]] = {
    "lambda_max": lambda_max,
    "trace": hessian_trace,
    "loss": loss,
    "sharpness.average": average,
    "sharpness.epsilon": epsilon,
    "sharpness.adaptive": adaptive,
}

# What a measure needs that has no default, and an example value for the error.
_REQUIRED = {"sharpness.adaptive": ("rho", 0.05)}


def check_measures(
    measures: object, options: Mapping[str, Mapping[str, Any]] | None
) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """The measure names and each one's options, checked before any work.

    Raises:
        ValueError: an unknown measure, a repeated one, options for a measure not
            tracked, a required option missing.
        TypeError: ``measures`` not a sequence of names, an option the measure does not
            take.
    """
    if isinstance(measures, str):
        measures = (measures,)
    if not isinstance(measures, list | tuple) or not all(isinstance(m, str) for m in measures):
        raise TypeError(
            f"measures must be a tuple of names such as ('lambda_max',), got {measures!r}"
        )
    names = tuple(measures)
    if not names:
        raise ValueError(f"measures is empty; choose from {', '.join(MEASURES)}")
    for m in names:
        if m not in MEASURES:
            raise ValueError(f"unknown measure {m!r}; choose from {', '.join(MEASURES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"measures names one twice: {names}")
    opts = {m: dict(o) for m, o in (options or {}).items()}
    for m, o in opts.items():
        if m not in names:
            raise ValueError(f"options for {m!r}, which is not among the measures {names}")
        unknown = sorted(set(o) - _accepted(m))
        if unknown:
            raise TypeError(
                f"{m} takes no option {', '.join(map(repr, unknown))}; it takes "
                f"{', '.join(sorted(_accepted(m))) or 'none'}"
            )
    for m, (name, example) in _REQUIRED.items():
        if m in names and name not in opts.get(m, {}):
            raise ValueError(f"{m} needs {name}: pass options={{{m!r}: {{{name!r}: {example}}}}}")
    return names, opts


def _accepted(measure: str) -> set[str]:
    """The options ``measure`` takes: its own keywords, and for a sharpness measure
    those of the library function it calls (less what the tracker sets itself)."""
    fn = MEASURES[measure]
    params = inspect.signature(fn).parameters.values()
    out = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        lib = getattr(sharpness, measure.split(".", 1)[1])
        lib_params = list(inspect.signature(lib).parameters.values())[1:]
        out |= {p.name for p in lib_params if p.kind is p.KEYWORD_ONLY}
        out |= {p.name for p in lib_params[:1]}  # the radius, given by name
        out -= {"seed", "point"}
    return out
