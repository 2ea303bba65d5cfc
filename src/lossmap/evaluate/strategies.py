"""The strategies: how a chunk of points is evaluated on one batch.

Each strategy is a small function ``(evaluator, params, idx, batch, cache) -> [P, S]``
(the per-batch sums of ``[loss, *metrics]`` for the ``P`` points ``idx``), looked up by
name in :data:`KERNELS`; :class:`Evaluator` holds what a strategy keeps across chunks
(the first layer's products per batch, buffers) and the precision: at ``bfloat16`` or
``float16`` every call runs under :func:`torch.autocast`, which reaches the model's own
forward pass (``loop``) alone: under :func:`torch.vmap` autocast leaves parts of a layer
in float32 (pytorch/pytorch#192617: ``nn.Linear`` adds its bias in float32), and the
affine strategies run products of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from lossmap.data import Batch, batch_size
from lossmap.devices import Precision, precision_context
from lossmap.evaluate import memory
from lossmap.evaluate.kernels import (
    FLAT_NDIM,
    AffinePlan,
    affine_plan,
    run_chain,
    run_chain_batched,
)
from lossmap.evaluate.losses import batched_output_stats, classes_first_ok
from lossmap.evaluate.points import PointSet, Span
from lossmap.evaluate.scratch import Scratch
from lossmap.objective import Objective

__all__ = ["AFFINE", "KERNELS", "LOW_PRECISION_STRATEGIES", "STRATEGIES", "Evaluator"]

Kernel = Callable[["Evaluator", dict[str, Tensor], np.ndarray, Batch, bool], Tensor]


class Evaluator:
    """Evaluates a chunk of points on one batch with a given strategy, at a precision
    (:class:`~lossmap.devices.Precision`; below float32, ``loop`` only).

    Raises:
        ValueError: an unknown strategy or precision (the message lists the valid
            ones), an affine strategy where the model, mode or point set does not allow
            it, a strategy other than ``loop`` below float32, or a precision the device
            does not support.
    """

    def __init__(
        self, land: Objective, points: PointSet, strategy: str, *, precision: str = "float32"
    ) -> None:
        kernel = KERNELS.get(strategy)
        if kernel is None:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(KERNELS)}")
        dtype = next(iter(land.theta0.values())).dtype
        self._precision = precision_context(precision, device=land.device, dtype=dtype)
        self.precision = Precision(precision).value
        if self.precision != "float32" and strategy not in LOW_PRECISION_STRATEGIES:
            raise ValueError(
                f"strategy {strategy!r} cannot run at precision {self.precision!r} (autocast "
                f"reaches only the model's own forward pass: {', '.join(LOW_PRECISION_STRATEGIES)})"
            )
        self.land = land
        self.points = points
        self.strategy = strategy
        self._kernel = kernel
        self.plan = affine_plan(land) if strategy in AFFINE else None
        if strategy in AFFINE and (self.plan is None or not isinstance(points, Span)):
            raise ValueError(
                f"strategy {strategy!r} needs an nn.Sequential model whose first layer with "
                "parameters is Linear/Conv, a criterion, eval mode and a line/plane/path; "
                "use strategy='auto'"
            )
        self._cache: dict[int, tuple[Tensor, Tensor, Any]] = {}
        self._zt: dict[int, Tensor] = {}
        # Buffers a strategy keeps across points and chunks (see Scratch).
        self.bufs: dict[int, Tensor] = {}
        self.scratch = Scratch()
        # The parameters each point needs (the affine strategies skip the first layer's).
        skip = self.plan.layer_keys if self.plan is not None else {}
        self.keys = [k for k in land.theta0 if k not in skip]

    def __call__(
        self, params: dict[str, Tensor], idx: np.ndarray, batch: Batch, cache: bool
    ) -> Tensor:
        """Per-batch sums ``[len(idx), S]`` for the points ``idx`` (``params``: their
        stacked parameters, only :attr:`keys`); ``cache``: the batch is held, so what is
        computed from it may be kept for the next chunk."""
        with self._precision():
            return self._kernel(self, params, idx, batch, cache)

    def affine_parts(self, batch: Batch, cache: bool) -> tuple[Tensor, Tensor, Any]:
        """Per batch, the first layer at the origin, along each direction, and the target."""
        key = id(batch)
        if cache and key in self._cache:
            return self._cache[key]
        plan, points = self.span_plan()
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise TypeError("the affine strategy needs batches (X, y)")
        x = plan.prefix(batch[0])
        origin = {p: points.origin[k] for k, p in plan.layer_keys.items()}
        z0 = functional_call(plan.layer, origin, (x,))
        zs = [
            functional_call(plan.layer, {p: d[k] for k, p in plan.layer_keys.items()}, (x,))
            for d in points.directions
        ]
        # Directions carry the layer's bias too: functional_call adds it once per term,
        # which is exactly the affine expansion (bias_k enters with coefficient c_k).
        z = torch.stack(zs) if zs else z0.unsqueeze(0) * 0
        parts = (z0, z, batch[1])
        if cache:
            self._cache[key] = parts
        return parts

    def features_first(self, z0: Tensor, z: Tensor, cache: bool) -> Tensor:
        """``[K+1, F*N]``: the first layer's output ``[N, F]`` at the origin and along
        each direction, transposed to features first and flattened (cached with them)."""
        key = id(z0)
        zt = self._zt.get(key) if cache else None
        if zt is None:
            k = len(self.span_plan()[1].directions)
            zt = torch.cat([z0.unsqueeze(0), z[:k]]).transpose(1, 2).reshape(k + 1, -1)
            if cache:
                self._zt[key] = zt
        return zt

    def span_plan(self) -> tuple[AffinePlan, Span]:
        """The affine plan and the span (checked at construction for affine strategies)."""
        assert self.plan is not None and isinstance(self.points, Span)
        return self.plan, self.points


def _loop(
    ev: Evaluator, params: dict[str, Tensor], idx: np.ndarray, batch: Batch, cache: bool
) -> Tensor:
    """One point at a time: runs any model."""
    return torch.stack(
        [ev.land.batch_stats({k: v[i] for k, v in params.items()}, batch) for i in range(len(idx))]
    )


def _vmap(
    ev: Evaluator, params: dict[str, Tensor], idx: np.ndarray, batch: Batch, cache: bool
) -> Tensor:
    """The chunk's points in one call under :func:`torch.vmap`."""
    land = ev.land
    return torch.vmap(lambda p: land.batch_stats(p, batch))(params)


def _affine(
    ev: Evaluator, params: dict[str, Tensor], idx: np.ndarray, batch: Batch, cache: bool
) -> Tensor:
    """One point at a time after the first layer: its output and every later layer's
    output live in buffers kept across points."""
    plan, points = ev.span_plan()
    z0, z, target = ev.affine_parts(batch, cache)
    n = batch_size(batch)
    fixed = ev.land.fixed
    rows = []
    h = ev.bufs.get(-1)
    if h is None or h.shape != z0.shape:
        h = ev.bufs[-1] = torch.empty_like(z0)
    cs = points.coeffs[idx]
    for i in range(len(idx)):
        torch.add(z0, z[0], alpha=float(cs[i, 0]), out=h)
        for k in range(1, z.shape[0]):
            h.add_(z[k], alpha=float(cs[i, k]))
        tensors = {**fixed, **{k: v[i] for k, v in params.items()}}
        out = run_chain(plan.chain, tensors, h, ev.bufs)
        rows.append(ev.land.output_stats(out, target, n))
    return torch.stack(rows)


def _affine_vmap(
    ev: Evaluator, params: dict[str, Tensor], idx: np.ndarray, batch: Batch, cache: bool
) -> Tensor:
    """The first layer's products, then the rest for the chunk at once: features first
    without vmap where the plan allows (an MLP), else the rest under vmap."""
    plan, points = ev.span_plan()
    z0, z, target = ev.affine_parts(batch, cache)
    n = batch_size(batch)
    coeffs = points.coeff_tensor(idx, z0)
    if plan.batched and z0.ndim == FLAT_NDIM:
        return _batched(ev, params, coeffs, z0, z, target, n, cache)
    fixed = ev.land.fixed
    land = ev.land

    def one(p: dict[str, Tensor], c: Tensor) -> Tensor:
        h = z0 + torch.tensordot(c, z, dims=1)
        return land.output_stats(run_chain(plan.chain, {**fixed, **p}, h), target, n)

    return torch.vmap(one)(params, coeffs)


def _batched(
    ev: Evaluator,
    params: dict[str, Tensor],
    coeffs: Tensor,
    z0: Tensor,
    z: Tensor,
    target: Tensor,
    n: int,
    cache: bool,
) -> Tensor:
    """Many points as one batched computation, without vmap, features first: the first
    layer's output for all points is one product ``[1, c] @ [z0; z]`` (a K+1 matrix
    product beats a broadcast add plus a K-term product), then ``[P, F, N]`` activations
    through batched products, and the loss reduced per point by a known formula."""
    steps = ev.span_plan()[0].chain
    land = ev.land
    zt = ev.features_first(z0, z, cache)
    p, (m, f) = coeffs.shape[0], z0.shape
    c1 = torch.cat([coeffs.new_ones(p, 1), coeffs], dim=1)
    tensors = {**land.fixed, **params}
    widths = [f] + [tensors[st.weight].shape[-2] for st in steps if st.kind == "linear"]
    tile = p
    if z0.device.type == "cpu" and steps:  # (a lone layer: h is the output)
        tile = memory.cpu_tile(p, max(widths) * m * zt.element_size())
    res = ev.scratch.get("out", (p, widths[-1], m), zt) if tile < p else None
    for s0 in range(0, p, tile):
        s1 = min(p, s0 + tile)
        hbuf = ev.scratch.get("h", (s1 - s0, zt.shape[1]), zt)
        h = torch.mm(c1[s0:s1], zt, out=hbuf).view(s1 - s0, f, m)
        part = (
            tensors
            if tile == p
            else {k: v[s0:s1] if k in params else v for k, v in tensors.items()}
        )
        dest = None if res is None else res[s0:s1]
        r = run_chain_batched(steps, part, h, ev.scratch, dest)
        res = r if res is None else res
    assert res is not None
    cf = classes_first_ok(land)
    stats = batched_output_stats(
        land, res if cf else res.transpose(1, 2), target, n, classes_first=cf, owned=True
    )
    if stats is not None:
        return stats

    def head(o: Tensor) -> Tensor:
        return land.output_stats(o, target, n)

    return torch.vmap(head)(res.transpose(1, 2))


KERNELS: dict[str, Kernel] = {
    "loop": _loop,
    "vmap": _vmap,
    "affine": _affine,
    "affine-vmap": _affine_vmap,
}
"""The strategies by name (``auto`` is not one: it picks one of these)."""

LOW_PRECISION_STRATEGIES = ("loop",)
"""The strategies that run below float32 (see the module's docstring)."""

AFFINE = ("affine", "affine-vmap")
"""The strategies that need the affine plan and a span of points."""

STRATEGIES = ("auto", *KERNELS)
"""The names ``strategy=`` accepts."""
