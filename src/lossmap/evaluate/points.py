"""Point sets the engine evaluates, how they are chunked, and what a run returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap.evaluate.scratch import Scratch

__all__ = ["EvalResult", "Explicit", "PointSet", "Progress", "Span", "chunks"]

Progress = Callable[[int, int], None]
"""``progress(done, total)``, called after each chunk of points."""


@dataclass
class Span:
    """Points ``origin + coeffs[i] @ directions`` (``coeffs``: ``[n_points, K]``)."""

    origin: V.Vector
    directions: list[V.Vector]
    coeffs: np.ndarray
    _stacked: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _scratch: Scratch = field(default_factory=lambda: Scratch(), repr=False)

    def __post_init__(self) -> None:
        self.coeffs = np.asarray(self.coeffs, dtype=np.float64)
        if self.coeffs.ndim != 2 or self.coeffs.shape[1] != len(self.directions):
            raise ValueError(
                f"coeffs must have shape [n_points, {len(self.directions)}], got {self.coeffs.shape}"
            )
        self._stacked = {
            k: torch.stack([d[k].to(t.dtype) for d in self.directions])
            if self.directions
            else t[None] * 0
            for k, t in self.origin.items()
        }

    def __len__(self) -> int:
        return int(self.coeffs.shape[0])

    def coeff_tensor(self, idx: np.ndarray, like: Tensor) -> Tensor:
        """The coefficients of the points ``idx``, ``[len(idx), K]``, as ``like``'s kind."""
        return torch.as_tensor(self.coeffs[idx], dtype=like.dtype, device=like.device)

    def stacked(self, idx: np.ndarray, keys: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The points ``idx`` as ``{name: Tensor[len(idx), *shape]}`` (only ``keys``).

        Computed elementwise, ``origin + c_0 d_0 + c_1 d_1 + ...`` in that order (each
        product rounded, then added: no fused multiply-add), so a point's parameters
        are bit-identical whichever chunk it is computed in. The tensors live in
        buffers reused by the next call with as many points: use them before asking
        for more (fresh multi-MB allocations per chunk cost more than the arithmetic).
        """
        out = {}
        n = len(idx)
        for k in keys if keys is not None else self.origin:
            t = self.origin[k]
            c = self.coeff_tensor(idx, t)
            d = self._stacked[k]
            acc = self._scratch.get((k, 0), (n, *t.shape), t)
            tmp = self._scratch.get((k, 1), (n, *t.shape), t)
            view = (n,) + (1,) * t.ndim
            torch.mul(c[:, 0].view(view), d[0], out=acc)
            acc.add_(t)  # t + c_0 d_0 (addition commutes exactly)
            for j in range(1, d.shape[0]):
                torch.mul(c[:, j].view(view), d[j], out=tmp)
                acc.add_(tmp)
            out[k] = acc
        return out


@dataclass
class Explicit:
    """An explicit list of points."""

    points: Sequence[Mapping[str, Tensor]]

    def __len__(self) -> int:
        return len(self.points)

    def stacked(self, idx: np.ndarray, keys: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The points ``idx`` as ``{name: Tensor[len(idx), *shape]}`` (only ``keys``)."""
        keys = list(keys) if keys is not None else list(self.points[0].keys())
        return {k: torch.stack([self.points[int(i)][k] for i in idx]) for k in keys}


PointSet = Span | Explicit


@dataclass
class EvalResult:
    """Values ``{"<data set>/<stat>": float64 array [n_points]}`` and how they were got."""

    values: dict[str, np.ndarray]
    info: dict[str, Any]
    default_dataset: str

    def values_with_aliases(self) -> dict[str, np.ndarray]:
        """The values, plus the default data set's under their bare statistic names."""
        out = dict(self.values)
        prefix = self.default_dataset + "/"
        for k, v in self.values.items():
            if k.startswith(prefix):
                out[k[len(prefix) :]] = v
        return out


def chunks(n: int, size: int) -> list[np.ndarray]:
    """Split ``range(n)`` into consecutive index arrays of at most ``size``.

    >>> [c.tolist() for c in chunks(5, 2)]
    [[0, 1], [2, 3], [4]]
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [np.arange(i, min(i + size, n)) for i in range(0, n, size)]
