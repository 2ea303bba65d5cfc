"""Directions from a training trajectory: principal components and projections.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap.directions._random import Direction, ignored_by_name
from lossmap.landscape import Landscape

__all__ = ["check_checkpoints", "pca", "project"]


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


def _rows(cps: Sequence[Mapping[str, Tensor]], ref: Mapping[str, Tensor], key: str) -> Tensor:
    """``[θ_i[key] - ref[key]]`` as a float64 matrix ``[n_checkpoints, numel]``."""
    r = ref[key].detach().reshape(-1).double()
    return torch.stack([c[key].detach().reshape(-1).double().to(r.device) - r for c in cps])


def _trajectory(
    checkpoints: Sequence[Mapping[str, Tensor]],
    final: Mapping[str, Tensor] | None,
    n: int,
    land: Landscape | None,
) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
    """The checked checkpoints and end point of :func:`pca`."""
    cps = check_checkpoints(checkpoints, land)
    if len(cps) < 2:
        raise ValueError(
            f"PCA needs at least 2 checkpoints (got {len(cps)}); pass the training trajectory"
        )
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if final is None:
        return cps, cps[-1]
    end = V.check_vector(final, name="final")
    problems = [p for p in V.mismatches(end, cps[0]) if land is None or "unexpected" not in p]
    if problems:
        raise ValueError(f"final does not match the checkpoints: {'; '.join(problems)}")
    return cps, {k: end[k] for k in cps[0]}


def _orthonormalise(flat: dict[str, Tensor], active: Sequence[str], n: int) -> None:
    """Gram–Schmidt, in place, on the ``n`` columns of ``flat`` (float64, over all
    active entries)."""
    for j in range(n):
        for i in range(j):
            c = sum(float(flat[k][:, i] @ flat[k][:, j]) for k in active)
            for k in active:
                flat[k][:, j] -= c * flat[k][:, i]
        nrm = math.sqrt(sum(float(flat[k][:, j] @ flat[k][:, j]) for k in active))
        for k in active:
            flat[k][:, j] /= nrm


def _orient(
    flat: dict[str, Tensor],
    cps: Sequence[Mapping[str, Tensor]],
    end: Mapping[str, Tensor],
    active: Sequence[str],
    n: int,
) -> None:
    """Signs, in place: θ_0 gets a non-negative coordinate (ties: the first checkpoint
    that moves)."""
    coords = torch.zeros(len(cps), n, dtype=torch.float64)
    for k in active:
        coords += (_rows(cps, end, k) @ flat[k]).cpu()
    for j in range(n):
        col = coords[:, j]
        moved = col[col.abs() > 1e-9 * float(col.abs().max())]
        if moved.numel() and float(moved[0]) < 0:
            for k in active:
                flat[k][:, j] = -flat[k][:, j]


def _top_components(gram: Tensor, n: int, center: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The eigenvalues of the Gram matrix ``M Mᵀ`` (descending), the top ``n``
    singular values of ``M`` and ``u_k / σ_k`` (so ``Mᵀ u_k / σ_k`` are the right
    singular vectors)."""
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0), evecs.flip(1)
    rank = int((evals > 1e-12 * evals[0]).sum())
    if n > rank:
        raise ValueError(
            f"the {len(gram)} checkpoints span only {rank} independent direction(s)"
            + (" after centring" if center else "")
            + f", fewer than n={n}; pass more checkpoints or n={rank}"
        )
    sig = evals[:n].clamp_min(0).sqrt()
    return evals, sig, evecs[:, :n] / sig


def pca(
    checkpoints: Sequence[Mapping[str, Tensor]],
    *,
    final: Mapping[str, Tensor] | None = None,
    n: int = 2,
    ignore: Sequence[str] = (),
    center: bool = True,
    land: Landscape | None = None,
) -> list[Direction]:
    """The top-``n`` principal directions of a training trajectory (Li et al. 2018, §7:
    the rows ``θ_i − θ_n``, centred by default; the method is in the module docstring).

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
    cps, end = _trajectory(checkpoints, final, n, land)
    keys = list(cps[0])
    ign = ignored_by_name(keys, ignore, land)
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
        outside = f" outside the ignored {sorted(ign)[:5]}" if ign else ""
        raise ValueError(
            f"all {m} checkpoints are {what} (zero variance{outside}); "
            "pass checkpoints saved at different training steps"
        )
    evals, sig, u = _top_components(gram, n, center)
    flat: dict[str, Tensor] = {}
    for k in active:
        b = block(k)
        flat[k] = b.T @ u.to(b.device)  # [numel, n]
    _orthonormalise(flat, active, n)
    _orient(flat, cps, end, active, n)
    ratios = [float(e) / total for e in evals[:n]]
    ignored = sorted(ign)
    return [
        Direction(
            {
                k: torch.zeros_like(t) if k in ign else flat[k][:, j].reshape(t.shape).to(t.dtype)
                for k, t in cps[0].items()
            },
            kind="pca",
            index=j,
            normalization="unit",
            explained_variance_ratio=ratios[j],
            explained_variance_ratios=ratios,
            singular_value=float(sig[j]),
            n_checkpoints=m,
            centered=bool(center),
            ignore=[ignore] if isinstance(ignore, str) else list(ignore),
            ignored=ignored,
        )
        for j in range(n)
    ]


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
