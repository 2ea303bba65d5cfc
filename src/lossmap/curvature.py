"""The base of every curvature operator of a landscape, and parameter blocks.

:class:`CurvatureOperator` is a :class:`scipy.sparse.linalg.LinearOperator` over the
flattened trainable parameters, or over a subset of them chosen by glob patterns
(``params=["layer3.*"]``): the plumbing that the Hessian
(:class:`lossmap.hessian.HessianOperator`), the generalised Gauss–Newton matrix and the
Fisher (:mod:`lossmap.ggn`) share. A subclass supplies one method, ``_apply``: the
product of the *full* matrix with vectors given per parameter. The block ``M_SS`` of a
subset ``S`` is ``v_S ↦ [M (v_S, 0)]_S``: one full product per block product, exact,
and no cheaper than the full product (the data pass is the cost).

:func:`select_parameters` resolves the globs (the same ``fnmatch`` patterns as the
ignore rules of :mod:`lossmap.directions`); :func:`layer_groups` groups parameter names
by the module that owns them (a layer's weight and bias together).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor

from lossmap import vectors as V

__all__ = ["CurvatureOperator", "layer_groups", "select_parameters"]


def select_parameters(names: list[str], params: str | Iterable[str] | None) -> list[str]:
    """The names (in their order) that match any of the glob patterns ``params``
    (``fnmatch``: ``"layer3.*"``, ``"*.bias"``, an exact name); all of them for ``None``.

    >>> select_parameters(["0.weight", "0.bias", "2.weight", "2.bias"], ["2.*"])
    ['2.weight', '2.bias']

    Raises:
        ValueError: a pattern matches no parameter (the message lists the names).
        TypeError: ``params`` is not a string or an iterable of strings.
    """
    if params is None:
        return list(names)
    patterns = [params] if isinstance(params, str) else list(params)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"params must be glob patterns over parameter names (e.g. ['{names[0]}']), got {params!r}"
        )
    chosen: set[str] = set()
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            shown = ", ".join(names[:20]) + (
                f", ... ({len(names)} in all)" if len(names) > 20 else ""
            )
            raise ValueError(
                f"params pattern {pattern!r} matches no parameter; the names are: {shown}"
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


def layer_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """Parameter names grouped by the module that owns them: the name up to its last dot
    (``"layers.0.weight"`` and ``"layers.0.bias"`` are the layer ``"layers.0"``); a
    parameter of the root module is its own group. Groups in order of first appearance.

    >>> layer_groups(["0.weight", "0.bias", "2.weight", "scale"])
    {'0': ['0.weight', '0.bias'], '2': ['2.weight'], 'scale': ['scale']}
    """
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(name.rsplit(".", 1)[0] if "." in name else name, []).append(name)
    return out


class CurvatureOperator(LinearOperator):
    """A symmetric curvature matrix of the data-set mean loss, over a parameter block.

    ``op @ v`` takes and returns float64 numpy vectors of length ``op.shape[0]``
    (the block's parameters flattened in ``named_parameters()`` order); :meth:`hvp`
    and :meth:`hvp_columns` take torch tensors. ``op.point`` holds the block's
    parameters at the point (the layout of every vector, and of eigenvectors returned
    as parameter dicts); ``op.full_point`` all of them. ``op.matvecs`` counts products
    (a block product counts one), ``op.seconds`` the time spent in them.
    """

    point: dict[str, Tensor]
    full_point: dict[str, Tensor]
    params: list[str]
    dataset: str
    dtype_torch: torch.dtype
    matvecs: int
    seconds: float

    def _setup(
        self, point: Mapping[str, Tensor], dataset: str, params: str | Iterable[str] | None
    ) -> None:
        """Fixes the point (all trainable parameters), the data set and the block."""
        self.full_point = dict(point)
        self.params = select_parameters(list(point), params)
        self.point = {k: point[k] for k in self.params}
        self.dataset = dataset
        self.dtype_torch = next(iter(point.values())).dtype
        n = V.numel(self.point)
        LinearOperator.__init__(self, dtype=np.float64, shape=(n, n))
        self.matvecs = 0
        self.seconds = 0.0

    def _apply(self, vs: list[Tensor], *, batched: bool) -> list[Tensor]:
        """The full matrix times ``vs`` (one tensor per parameter of ``full_point``,
        each with a leading dimension of products when ``batched``)."""
        raise NotImplementedError

    def _product(self, rows: Tensor) -> Tensor:
        """``M_SS`` times each row of ``rows`` ``[k, n]`` (rows in the operator's dtype)."""
        parts, offset = {}, 0
        for name, t in self.point.items():
            parts[name] = rows[:, offset : offset + t.numel()].reshape(-1, *t.shape).to(t.device)
            offset += t.numel()
        k = rows.shape[0]
        full = [
            parts[name] if name in parts else t.new_zeros((k, *t.shape))
            for name, t in self.full_point.items()
        ]
        if k == 1:  # one product: the plain backward pass, not a batched one
            out = [o.unsqueeze(0) for o in self._apply([f[0] for f in full], batched=False)]
        else:
            out = self._apply(full, batched=True)
        kept = [o for name, o in zip(self.full_point, out, strict=True) if name in parts]
        return torch.cat([o.reshape(k, -1) for o in kept], dim=1)

    def hvp(self, v: Tensor) -> Tensor:
        """``M v`` for a flat torch vector (any float dtype; returned in ``v``'s dtype)."""
        t0 = time.perf_counter()
        out = self._product(v.reshape(1, -1).to(self.dtype_torch))[0]
        self.matvecs += 1
        self.seconds += time.perf_counter() - t0
        return out.to(v.dtype)

    def hvp_columns(self, X: Tensor) -> Tensor:
        """``M X`` for ``X: [n, k]`` (k products in one batched backward pass per batch
        of data; returned in ``X``'s dtype)."""
        t0 = time.perf_counter()
        out = self._product(X.to(self.dtype_torch).T).T
        self.matvecs += X.shape[1]
        self.seconds += time.perf_counter() - t0
        return out.to(X.dtype)

    def hvp_dict(self, v: Mapping[str, Tensor]) -> V.Vector:
        """``M v`` for a direction dict over the block's parameters."""
        flat = V.flatten(V.check_vector(v, self.point, name="v"))
        return V.unflatten(self.hvp(flat), self.point)

    def _device(self) -> torch.device:
        return next(iter(self.point.values())).device

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return self.hvp(v.to(self._device())).cpu().double().numpy()

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64))
        return self.hvp_columns(x.to(self._device())).cpu().double().numpy()

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._matvec(x)  # symmetric

    def _adjoint(self) -> CurvatureOperator:
        return self
