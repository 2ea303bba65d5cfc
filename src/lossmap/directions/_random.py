"""Directions in parameter space: random (normalised), between checkpoints, raw axes.

Normalisation follows Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"
(NeurIPS), §4: a Gaussian direction ``d`` is rescaled so that each *filter* of ``d``
(an output filter of a convolution, a row / output neuron of a linear layer) has the
norm of the same filter of θ::

    d_f  <-  d_f / ||d_f|| * ||θ_f||

which makes the axes of different networks (and of layers with different scales)
comparable, and makes the picture invariant to rescalings that leave the function
unchanged (e.g. the weights before a BatchNorm). Variants: ``"layer"`` (one factor
per parameter tensor), ``"model"`` (one global factor: ``||d|| = ||θ||``), ``"unit"``
(``||d|| = 1``) and ``"none"`` (the raw Gaussian).

Ignored parameters (``ignore=("bias", "norm")``, Li et al.'s ``biasbn``) get a zero
direction. One-dimensional tensors that are not ignored (biases, norm scales) are
normalised as one filter (per tensor); Li et al.'s code copies θ into d there instead.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap._checks import choice
from lossmap.hessian import eigenvalues
from lossmap.landscape import Landscape

__all__ = [
    "IGNORE_RULES",
    "Direction",
    "Normalization",
    "between",
    "coordinate",
    "hessian",
    "ignored_by_name",
    "ignored_names",
    "normalize",
    "random",
]


class Direction(dict[str, Tensor]):
    """A direction (``dict[str, Tensor]``) that remembers how it was made in ``.meta``."""

    meta: dict[str, object]

    def __init__(self, tensors: Mapping[str, Tensor], **meta: object) -> None:
        super().__init__(tensors)
        self.meta = dict(meta)


class Normalization(str, enum.Enum):
    """How a random direction is scaled (Li et al. 2018)."""

    FILTER = "filter"
    LAYER = "layer"
    MODEL = "model"
    UNIT = "unit"
    NONE = "none"


IGNORE_RULES = ("bias", "norm")


def _normalization(value: str | Normalization) -> Normalization:
    return choice(value, Normalization, "normalization")


def _resolve_ignore(
    names: Sequence[str], ignore: Iterable[str], norm: Callable[[], set[str]] | None
) -> set[str]:
    """The names matched by the ignore rules; ``norm`` lists the norm layers' parameters
    (``None``: no model to ask, so the rule ``"norm"`` is an error)."""
    if isinstance(ignore, str):
        ignore = (ignore,)
    out: set[str] = set()
    for rule in ignore:
        if rule == "bias":
            out |= {n for n in names if n.rsplit(".", 1)[-1] == "bias"}
        elif rule == "norm":
            if norm is None:
                raise ValueError(
                    "the ignore rule 'norm' needs the model to find its norm layers; "
                    "pass land= (or list the parameters as glob patterns)"
                )
            out |= norm()
        else:
            hits = fnmatch.filter(names, rule)
            if not hits:
                raise ValueError(
                    f"unknown ignore rule {rule!r}: use 'bias', 'norm' or a pattern matching "
                    f"parameter names (e.g. {names[0]!r})"
                )
            out |= set(hits)
    return out


def ignored_names(land: Landscape, ignore: Iterable[str]) -> set[str]:
    """Parameter names matched by the ignore rules.

    Rules: ``"bias"`` (parameters named ``*bias``), ``"norm"`` (parameters of
    BatchNorm / LayerNorm / GroupNorm / ... layers), or a glob over parameter names
    (``"classifier.*"``) that must match at least one parameter.
    """
    return _resolve_ignore(list(land.theta0), ignore, land.norm_parameter_names)


def _units(t: Tensor, mode: Normalization) -> Tensor:
    """View ``t`` as ``[n_units, unit_size]``: filters (rows) or the whole tensor."""
    if mode is Normalization.FILTER and t.ndim >= 2:
        return t.reshape(t.shape[0], -1)
    return t.reshape(1, -1)


def normalize(
    direction: Mapping[str, Tensor],
    point: Mapping[str, Tensor],
    normalization: str | Normalization = "filter",
    *,
    ignored: Iterable[str] = (),
) -> V.Vector:
    """Rescale ``direction`` relative to ``point`` (see the module docstring).

    >>> import torch
    >>> theta = {"w": torch.tensor([[3.0, 4.0], [0.0, 1.0]])}
    >>> d = normalize({"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}, theta, "filter")
    >>> d["w"].tolist()
    [[5.0, 0.0], [0.0, 1.0]]
    """
    mode = _normalization(normalization)
    ign = set(ignored)
    out = {k: (torch.zeros_like(t) if k in ign else t.clone()) for k, t in direction.items()}
    if mode is Normalization.NONE:
        return out
    active = [k for k in out if k not in ign]
    if mode in (Normalization.MODEL, Normalization.UNIT):
        dn = float(V.norm({k: out[k] for k in active})) if active else 0.0
        target = (
            float(V.norm({k: point[k] for k in active})) if mode is Normalization.MODEL else 1.0
        )
        factor = target / dn if dn > 0 else 0.0
        return {k: t * factor for k, t in out.items()}
    for k in active:
        d, p = _units(out[k], mode), _units(point[k].to(out[k].dtype), mode)
        dn = d.norm(dim=1, keepdim=True)
        scale = torch.where(dn > 0, p.norm(dim=1, keepdim=True) / dn.clamp_min(1e-30), 0.0)
        out[k] = (d * scale).reshape(out[k].shape)
    return out


def _orthogonalize(
    dirs: list[V.Vector],
    point: Mapping[str, Tensor],
    mode: Normalization,
    ignored: set[str],
) -> list[V.Vector]:
    """Gram-Schmidt that keeps the normalisation exact.

    Each direction is made orthogonal to the earlier ones *within every normalisation
    unit* (filter, tensor or whole model) and then rescaled to its unit's norm: a sum
    of orthogonal parts is orthogonal, and the per-unit norms stay those of θ. Units
    too small to hold the vectors (a single-entry filter) keep their random part, so
    the overall cosine there may be non-zero; it is recorded in the metadata.
    """
    out: list[V.Vector] = []
    whole = mode in (Normalization.MODEL, Normalization.UNIT, Normalization.NONE)
    for d in dirs:
        d = dict(d)
        if whole:
            for prev in out:
                pp = float(V.dot(prev, prev))
                if pp > 0:
                    d = V.add(d, prev, alpha=-float(V.dot(d, prev)) / pp)
            if mode is not Normalization.NONE:
                d = normalize(d, point, mode, ignored=ignored)
        else:
            for k in d:
                if k in ignored:
                    continue
                u = _units(d[k], mode).clone()
                target = u.norm(dim=1, keepdim=True)
                for prev in out:
                    q = _units(prev[k], mode)
                    qq = (q * q).sum(dim=1, keepdim=True)
                    coef = torch.where(
                        qq > 0, (u * q).sum(dim=1, keepdim=True) / qq.clamp_min(1e-30), 0.0
                    )
                    u = u - coef * q
                un = u.norm(dim=1, keepdim=True)
                # Keep the original unit where projecting leaves (numerically) nothing.
                ok = un > 1e-6 * target
                u = torch.where(ok, u * target / un.clamp_min(1e-30), _units(d[k], mode))
                d[k] = u.reshape(d[k].shape)
        out.append(d)
    return out


def random(
    land: Landscape,
    n: int = 2,
    *,
    normalization: str | Normalization = "filter",
    ignore: Sequence[str] = ("bias", "norm"),
    orthogonal: bool = True,
    seed: int = 0,
) -> list[Direction]:
    """``n`` random Gaussian directions, normalised as in Li et al. 2018.

    Args:
        land: the landscape (θ0 sets the filter norms).
        n: how many directions.
        normalization: ``"filter"`` (Li et al.), ``"layer"``, ``"model"``, ``"unit"``,
            or ``"none"``.
        ignore: rules for parameters that get a zero direction: ``"bias"``, ``"norm"``
            or glob patterns over parameter names.
        orthogonal: make the directions mutually orthogonal (keeping the
            normalisation; see :func:`_orthogonalize`).
        seed: the same seed gives the same directions on every machine (drawn in
            float64 on the CPU from ``torch.Generator().manual_seed(seed)``).

    Returns:
        A list of ``n`` directions keyed like ``land.point()``.

    >>> from lossmap.examples import logistic_regression
    >>> land = logistic_regression()
    >>> d1, d2 = random(land, 2, normalization="unit", ignore=(), seed=0)
    >>> round(float(V.norm(d1)), 6), abs(V.cosine(d1, d2)) < 1e-12
    (1.0, True)
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    mode = _normalization(normalization)
    point = land.theta0
    ign = ignored_names(land, ignore)
    if len(ign) == len(point):
        raise ValueError(
            f"the ignore rules {tuple(ignore)} leave no parameter to move; drop some of them"
        )
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    raw = [
        {
            k: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype)
            for k, t in point.items()
        }
        for _ in range(n)
    ]
    dirs = [normalize(d, point, mode, ignored=ign) for d in raw]
    if orthogonal and n > 1:
        dirs = _orthogonalize(dirs, point, mode, ign)
    return [
        Direction(
            d,
            kind="random",
            normalization=mode.value,
            ignore=list(ignore),
            ignored=sorted(ign),
            orthogonal=bool(orthogonal),
            seed=int(seed),
            index=i,
        )
        for i, d in enumerate(dirs)
    ]


def between(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Direction:
    """The direction from checkpoint ``a`` to checkpoint ``b``: ``b - a``."""
    a = V.check_vector(a, name="a")
    b = V.check_vector(b, a, name="b")
    return Direction(V.sub(b, a), kind="between")


def coordinate(land: Landscape, spec: str) -> Direction:
    """The unit direction along one scalar parameter: ``"bias"``, ``"0.weight[0,1]"``.

    A name alone is accepted when that parameter has exactly one entry.
    """
    name, _, rest = spec.partition("[")
    if name not in land.theta0:
        raise ValueError(
            f"unknown parameter {name!r} in axis {spec!r}; parameters: {list(land.theta0)[:10]}"
        )
    t = land.theta0[name]
    if rest:
        try:
            index = tuple(int(i) for i in rest.rstrip("]").split(",") if i.strip())
        except ValueError:
            raise ValueError(f"bad index in axis {spec!r}; write e.g. 'weight[0,1]'") from None
    elif t.numel() == 1:
        index = (0,) * t.ndim
    else:
        raise ValueError(
            f"parameter {name!r} has shape {tuple(t.shape)}; name one entry, e.g. "
            f"'{name}[{','.join('0' * t.ndim)}]'"
        )
    if len(index) != t.ndim or any(not 0 <= i < s for i, s in zip(index, t.shape, strict=False)):
        raise ValueError(f"index {index} is out of range for {name!r} of shape {tuple(t.shape)}")
    d = V.zeros_like(land.theta0)
    d[name][index] = 1.0
    return Direction(d, kind="axis", parameter=name, index=list(index), label=spec)


def hessian(
    land: Landscape,
    k: int = 2,
    *,
    which: str = "LA",
    tol: float = 1e-6,
    seed: int = 0,
    point: Mapping[str, Tensor] | None = None,
) -> list[Direction]:
    """The top-``k`` Hessian eigenvectors (unit norm) as directions: a plane along the
    two sharpest directions of the loss (``which="SA"``: the most negative ones).

    Each direction's ``meta`` holds its eigenvalue and the Lanczos cost.
    """
    eig = eigenvalues(land, k, which=which, tol=tol, seed=seed, point=point)
    return [
        Direction(
            v,
            kind="hessian",
            which=which,
            eigenvalue=float(lam),
            index=i,
            matvecs=eig.matvecs,
            seed=seed,
        )
        for i, (lam, v) in enumerate(zip(eig.values, eig.vectors, strict=True))
    ]


def ignored_by_name(keys: Sequence[str], ignore: Iterable[str], land: Landscape | None) -> set[str]:
    """Ignore rules resolved over parameter names (``"norm"`` needs the model)."""
    if land is not None:
        return ignored_names(land, ignore)
    return _resolve_ignore(keys, ignore, None)
