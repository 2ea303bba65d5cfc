"""Points and directions in parameter space.

A *point* or *direction* is a ``dict[str, Tensor]`` keyed like
``model.named_parameters()``. These helpers are small pure functions over such dicts
(in the spirit of optax's ``tree_vdot`` / ``tree_add_scale``): nothing is modified in
place, and every helper checks that its operands have the same keys.

>>> import torch
>>> a = {"w": torch.tensor([3.0, 4.0])}
>>> float(norm(a))
5.0
>>> add(a, a, alpha=-0.5)["w"].tolist()
[1.5, 2.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

Vector = dict[str, Tensor]

__all__ = [
    "Vector",
    "add",
    "check_vector",
    "clone",
    "combine",
    "cosine",
    "dot",
    "flatten",
    "norm",
    "numel",
    "scale",
    "sub",
    "unflatten",
    "zeros_like",
]


def check_vector(
    v: object, like: Mapping[str, Tensor] | None = None, *, name: str = "vector"
) -> Vector:
    """Check that ``v`` is a ``dict[str, Tensor]`` (with the keys and shapes of ``like``).

    Raises:
        TypeError: ``v`` is not a mapping of names to tensors.
        ValueError: keys or shapes differ from ``like`` (the first mismatches are listed).
    """
    if not isinstance(v, Mapping) or not all(
        isinstance(k, str) and isinstance(t, Tensor) for k, t in v.items()
    ):
        raise TypeError(
            f"{name} must be a dict[str, Tensor] keyed like model.named_parameters(), "
            f"got {type(v).__name__}. Use e.g. land.point() or dict(model.named_parameters())."
        )
    if like is not None:
        problems = mismatches(v, like)
        if problems:
            raise ValueError(f"{name} does not match the model's parameters: {'; '.join(problems)}")
    return dict(v)


def mismatches(v: Mapping[str, Tensor], like: Mapping[str, Tensor], *, limit: int = 5) -> list[str]:
    """Human-readable list of the first key/shape differences between two vectors."""
    out: list[str] = []
    missing = [k for k in like if k not in v]
    unexpected = [k for k in v if k not in like]
    if missing:
        out.append(
            "missing " + ", ".join(missing[:limit]) + (" ..." if len(missing) > limit else "")
        )
    if unexpected:
        out.append(
            "unexpected "
            + ", ".join(unexpected[:limit])
            + (" ..." if len(unexpected) > limit else "")
        )
    shapes = [
        f"{k}: {tuple(v[k].shape)} vs expected {tuple(like[k].shape)}"
        for k in like
        if k in v and v[k].shape != like[k].shape
    ]
    if shapes:
        out.append("shape " + ", ".join(shapes[:limit]) + (" ..." if len(shapes) > limit else ""))
    return out


def _same_keys(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    if a.keys() != b.keys():
        diff = sorted(set(a) ^ set(b))
        raise ValueError(f"vectors have different keys: {diff[:5]}")


def clone(a: Mapping[str, Tensor]) -> Vector:
    """A detached copy."""
    return {k: t.detach().clone() for k, t in a.items()}


def zeros_like(a: Mapping[str, Tensor]) -> Vector:
    """The zero vector with ``a``'s keys, shapes, dtypes and devices."""
    return {k: torch.zeros_like(t) for k, t in a.items()}


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor], *, alpha: float = 1.0) -> Vector:
    """``a + alpha * b``."""
    _same_keys(a, b)
    return {k: a[k] + alpha * b[k] for k in a}


def sub(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Vector:
    """``a - b``."""
    return add(a, b, alpha=-1.0)


def scale(a: Mapping[str, Tensor], c: float) -> Vector:
    """``c * a``."""
    return {k: c * t for k, t in a.items()}


def combine(
    origin: Mapping[str, Tensor] | None,
    directions: Sequence[Mapping[str, Tensor]],
    coeffs: Sequence[float],
) -> Vector:
    """``origin + sum_k coeffs[k] * directions[k]`` (``origin=None`` means zero)."""
    if len(directions) != len(coeffs):
        raise ValueError(f"got {len(directions)} directions but {len(coeffs)} coefficients")
    if origin is None:
        if not directions:
            raise ValueError("combine needs an origin or at least one direction")
        out = zeros_like(directions[0])
    else:
        out = clone(origin)
    for d, c in zip(directions, coeffs, strict=True):
        _same_keys(out, d)
        for k in out:
            out[k] = out[k] + float(c) * d[k]
    return out


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """Euclidean inner product over all entries (a detached 0-d float64 tensor)."""
    _same_keys(a, b)
    total = torch.zeros((), dtype=torch.float64)
    for k in a:
        total = total + torch.sum(a[k].detach().double() * b[k].detach().double()).cpu()
    return total


def norm(a: Mapping[str, Tensor]) -> Tensor:
    """Euclidean norm over all entries (float64)."""
    return torch.sqrt(dot(a, a))


def cosine(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Cosine of the angle between two vectors (``nan`` if either is zero)."""
    na, nb = float(norm(a)), float(norm(b))
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return float(dot(a, b)) / (na * nb)


def numel(a: Mapping[str, Tensor]) -> int:
    """Total number of entries."""
    return sum(t.numel() for t in a.values())


def flatten(a: Mapping[str, Tensor]) -> Tensor:
    """Concatenate all entries into one 1-D tensor (in the dict's key order)."""
    if not a:
        raise ValueError("cannot flatten an empty vector")
    return torch.cat([t.reshape(-1) for t in a.values()])


def unflatten(flat: Tensor, like: Mapping[str, Tensor]) -> Vector:
    """Inverse of :func:`flatten`: split ``flat`` into tensors shaped like ``like``."""
    n = numel(like)
    if flat.ndim != 1 or flat.numel() != n:
        raise ValueError(f"expected a 1-D tensor of {n} entries, got shape {tuple(flat.shape)}")
    out: Vector = {}
    i = 0
    for k, t in like.items():
        out[k] = flat[i : i + t.numel()].reshape(t.shape).to(t.dtype)
        i += t.numel()
    return out
