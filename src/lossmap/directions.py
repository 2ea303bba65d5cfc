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
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
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
    "normalize",
    "pca",
    "project",
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


# ------------------------------------------------------------------ trajectories (PCA)
def check_checkpoints(
    checkpoints: object, land: Landscape | None, name: str = "checkpoints"
) -> list[dict[str, Tensor]]:
    """Validate a list of parameter dicts (all keyed and shaped alike).

    With ``land``, each entry may be a full state dict: it is cut down to the trainable
    parameters (buffers and frozen parameters dropped) and checked against them.
    """
    if isinstance(checkpoints, Mapping) or not isinstance(checkpoints, Sequence):
        raise TypeError(
            f"{name} must be a list of dict[str, Tensor] (one per checkpoint), got "
            f"{type(checkpoints).__name__}; e.g. [land.point(), ...] or a list of state dicts"
        )
    out: list[dict[str, Tensor]] = []
    ref: Mapping[str, Tensor] | None = land.theta0 if land is not None else None
    for i, c in enumerate(checkpoints):
        v = V.check_vector(c, name=f"{name}[{i}]")
        if land is not None:
            problems = [p for p in V.mismatches(v, land.theta0) if not p.startswith("unexpected")]
            if problems:
                raise ValueError(
                    f"{name}[{i}] does not fit the model's parameters: {'; '.join(problems)}"
                )
            v = {k: v[k] for k in land.theta0}
        elif ref is None:
            ref = v
        else:
            problems = V.mismatches(v, ref)
            if problems:
                raise ValueError(
                    f"{name}[{i}] does not match {name}[0]: {'; '.join(problems)}; "
                    "pass checkpoints of the same model (filter state dicts to the "
                    "trainable parameters, or pass land=)"
                )
        out.append(v)
    return out


def _ignored_by_name(
    keys: Sequence[str], ignore: Iterable[str], land: Landscape | None
) -> set[str]:
    """Ignore rules resolved over parameter names (``"norm"`` needs the model)."""
    if land is not None:
        return ignored_names(land, ignore)
    return _resolve_ignore(keys, ignore, None)


def _rows(cps: Sequence[Mapping[str, Tensor]], ref: Mapping[str, Tensor], key: str) -> Tensor:
    """``[θ_i[key] - ref[key]]`` as a float64 matrix ``[n_checkpoints, numel]``."""
    r = ref[key].detach().reshape(-1).double()
    return torch.stack([c[key].detach().reshape(-1).double().to(r.device) - r for c in cps])


def pca(
    checkpoints: Sequence[Mapping[str, Tensor]],
    *,
    final: Mapping[str, Tensor] | None = None,
    n: int = 2,
    ignore: Sequence[str] = (),
    center: bool = True,
    land: Landscape | None = None,
) -> list[Direction]:
    """The top-``n`` principal directions of a training trajectory (unit norm, orthogonal).

    Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets", §7: random
    directions are nearly orthogonal to an optimisation path in high dimensions, so the
    path is drawn on the plane of the principal components of

        M = [θ_0 − θ_n; θ_1 − θ_n; …; θ_n − θ_n]   (one row per checkpoint)

    where θ_n is the final point (``final``, default the last checkpoint). As in the
    authors' code (``projection.py``: ``sklearn.decomposition.PCA`` fitted on the rows
    of every checkpoint, the final one included), the rows are centred on their mean
    before the SVD (``center=True``), so the plane is the best-fitting affine plane of
    the point cloud θ_0..θ_n and does not depend on θ_n; ``center=False`` takes the SVD
    of ``M`` itself (the plane through θ_n that best fits the displacements).

    The SVD is computed from the small Gram matrix ``M Mᵀ`` (n_checkpoints²), summed
    tensor by tensor in float64, so no ``[n_checkpoints, n_parameters]`` matrix is
    ever held; the directions are ``Mᵀ u_k / σ_k``, re-orthonormalised.

    Args:
        checkpoints: parameter dicts θ_0..θ_n in training order (at least 2); with
            ``land``, full state dicts are accepted (cut to the trainable parameters).
        final: the end point θ_n (default ``checkpoints[-1]``); it matters only with
            ``center=False`` and fixes the signs.
        n: how many directions.
        ignore: parameters left out (zero rows in ``M``, zero entries in the
            directions), as in Li et al.'s ``--ignore biasbn``: ``"bias"``, ``"norm"``
            (needs ``land``) or glob patterns over parameter names. Default: none.
        center: subtract the mean checkpoint before the SVD (sklearn's and the
            authors' PCA).
        land: optional landscape: checks the checkpoints against its parameters and
            resolves the ``"norm"`` rule.

    Returns:
        ``n`` unit-norm, mutually orthogonal :class:`Direction` s (not
        filter-normalised: coordinates along them are distances in parameter space),
        keyed like the checkpoints, signed so that θ_0 has a non-negative coordinate.
        ``meta``: ``kind="pca"``, ``index``, ``explained_variance_ratio`` (this axis's
        share of the total variance of the rows), ``explained_variance_ratios`` (all
        ``n``), ``singular_value``, ``n_checkpoints``, ``centered``, ``ignore``,
        ``ignored``, ``normalization="unit"``.

    Raises:
        ValueError: fewer than 2 checkpoints, mismatched keys or shapes, identical
            checkpoints (no variance), or fewer than ``n`` independent directions.

    >>> import torch
    >>> u = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    >>> cps = [{"w": t * u} for t in (3.0, 2.0, 1.0, 0.0)]
    >>> (d,) = pca(cps, n=1)
    >>> [round(x, 6) + 0.0 for x in d["w"].tolist()], round(d.meta["explained_variance_ratio"], 6)
    ([1.0, 0.0, 0.0], 1.0)
    """
    cps = check_checkpoints(checkpoints, land)
    if len(cps) < 2:
        raise ValueError(
            f"PCA needs at least 2 checkpoints (got {len(cps)}); pass the training trajectory"
        )
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if final is None:
        end = cps[-1]
    else:
        end = V.check_vector(final, name="final")
        problems = [p for p in V.mismatches(end, cps[0]) if land is None or "unexpected" not in p]
        if problems:
            raise ValueError(f"final does not match the checkpoints: {'; '.join(problems)}")
        end = {k: end[k] for k in cps[0]}
    keys = list(cps[0])
    ign = _ignored_by_name(keys, ignore, land)
    active = sorted(k for k in keys if k not in ign)  # sorted: same sums for any key order
    if not active:
        raise ValueError(f"the ignore rules {tuple(ignore)} leave no parameter; drop some of them")
    m = len(cps)

    def block(k: str) -> Tensor:
        rows = _rows(cps, end, k)
        return rows - rows.mean(dim=0, keepdim=True) if center else rows

    gram = torch.zeros(m, m, dtype=torch.float64)
    for k in active:
        b = block(k)
        gram += (b @ b.T).cpu()
    total = float(torch.trace(gram))
    if not total > 0:
        what = "identical" if center or final is None else "all equal to final"
        raise ValueError(
            f"all {m} checkpoints are {what} (zero variance"
            + (f" outside the ignored {sorted(ign)[:5]}" if ign else "")
            + "); pass checkpoints saved at different training steps"
        )
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0), evecs.flip(1)
    rank = int((evals > 1e-12 * evals[0]).sum())
    if n > rank:
        raise ValueError(
            f"the {m} checkpoints span only {rank} independent direction(s)"
            + (" after centring" if center else "")
            + f", fewer than n={n}; pass more checkpoints or n={rank}"
        )
    sig = evals[:n].clamp_min(0).sqrt()
    u = evecs[:, :n] / sig  # M^T u_k / σ_k is the k-th right singular vector
    flat: dict[str, Tensor] = {}
    for k in active:
        b = block(k)
        flat[k] = b.T @ u.to(b.device)  # [numel, n]
    # Re-orthonormalise (Gram–Schmidt in float64 over all active entries).
    for j in range(n):
        for i in range(j):
            c = sum(float(flat[k][:, i] @ flat[k][:, j]) for k in active)
            for k in active:
                flat[k][:, j] -= c * flat[k][:, i]
        nrm = math.sqrt(sum(float(flat[k][:, j] @ flat[k][:, j]) for k in active))
        for k in active:
            flat[k][:, j] /= nrm
    # Signs: θ_0 gets a non-negative coordinate (ties: the first checkpoint that moves).
    coords = torch.zeros(m, n, dtype=torch.float64)
    for k in active:
        coords += (_rows(cps, end, k) @ flat[k]).cpu()
    for j in range(n):
        col = coords[:, j]
        moved = col[col.abs() > 1e-9 * float(col.abs().max())]
        if moved.numel() and float(moved[0]) < 0:
            for k in active:
                flat[k][:, j] = -flat[k][:, j]
    ratios = [float(e) / total for e in evals[:n]]
    out = []
    for j in range(n):
        tensors = {
            k: (
                torch.zeros_like(cps[0][k])
                if k in ign
                else flat[k][:, j].reshape(cps[0][k].shape).to(cps[0][k].dtype)
            )
            for k in keys
        }
        out.append(
            Direction(
                tensors,
                kind="pca",
                index=j,
                normalization="unit",
                explained_variance_ratio=ratios[j],
                explained_variance_ratios=ratios,
                singular_value=float(sig[j]),
                n_checkpoints=m,
                centered=bool(center),
                ignore=[ignore] if isinstance(ignore, str) else list(ignore),
                ignored=sorted(ign),
            )
        )
    return out


def project(
    points: Sequence[Mapping[str, Tensor]],
    directions: Sequence[Mapping[str, Tensor]],
    origin: Mapping[str, Tensor],
) -> np.ndarray:
    """Coordinates of ``θ_i − origin`` along ``directions``: array ``[n_points, n_dirs]``.

    Least squares: ``c_i = argmin_c ||θ_i − origin − Σ_j c_j d_j||``, i.e. the solution
    of ``(DᵀD) c_i = Dᵀ(θ_i − origin)``; for orthonormal directions (e.g. from
    :func:`pca`) this is the plain dot product ``c_ij = ⟨θ_i − origin, d_j⟩``, and
    ``||c_i|| <= ||θ_i − origin||``. Sums run in float64.

    Raises:
        TypeError: ``points`` is one dict instead of a list of them.
        ValueError: keys or shapes differ, no directions, or linearly dependent ones.

    >>> import torch
    >>> d = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 2.0])}]
    >>> (project([{"w": torch.tensor([3.0, 4.0])}], d, {"w": torch.zeros(2)}).round(6) + 0.0).tolist()
    [[3.0, 2.0]]
    """
    if isinstance(points, Mapping):
        raise TypeError(
            "points must be a list of dict[str, Tensor]; for one point use project([point], ...)"
        )
    o = V.check_vector(origin, name="origin")
    if not directions:
        raise ValueError("project needs at least one direction")
    dirs = [V.check_vector(d, o, name=f"directions[{j}]") for j, d in enumerate(directions)]
    if not isinstance(points, Sequence):
        raise TypeError(f"points must be a list of dict[str, Tensor], got {type(points).__name__}")
    pts = [V.check_vector(p, name=f"points[{i}]") for i, p in enumerate(points)]
    for i, p in enumerate(pts):
        problems = V.mismatches(p, o)
        if problems:
            raise ValueError(f"points[{i}] does not match origin: {'; '.join(problems)}")
    nd = len(dirs)
    gram = np.zeros((nd, nd))
    rhs = np.zeros((len(pts), nd))
    for k in sorted(o):
        dk = torch.stack([d[k].detach().reshape(-1).double().cpu() for d in dirs])  # [nd, numel]
        gram += (dk @ dk.T).numpy()
        if pts:
            rhs += (_rows(pts, o, k).cpu() @ dk.T).numpy()
    if not np.all(np.isfinite(gram)) or np.linalg.cond(gram) > 1e12:
        raise ValueError(
            "the directions are linearly dependent (or zero); pass independent directions"
        )
    return np.linalg.solve(gram, rhs.T).T
