"""Hessian-vector products: the one implementation behind ``HessianOperator`` and ``hvp``.

``H v`` is a second backward pass through the gradient graph of the derivative core
(:meth:`lossmap.objective.Objective.value_and_grad` with ``create_graph=True``):
``H v = ∇_θ ⟨∇_θ L(θ), v⟩``. For a data set held on the device the graph is built once
per point and reused by every product (as PyHessian does, Yao et al. 2020); a streamed
data set rebuilds it batch by batch. Measured against forward-over-reverse
(``torch.func.jvp`` of ``grad``) on MLPs and residual CNNs, reusing the graph is the
faster of the two from the second product on (``benchmarks/curvature.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap.objective import Objective, Reducer

__all__ = ["HessianVectorProduct"]


class HessianVectorProduct:
    """``v -> H(point) v`` for the data-set mean loss of an :class:`Objective`.

    Args:
        objective: the model, loss and data (a :class:`lossmap.Landscape`).
        point: where the Hessian is taken (θ0 by default).
        dataset: which data set (the default one when ``None``).
        reuse_graph: keep the gradient graph between products (data held in memory).
        reduce: sums each product over processes (see ``Objective.value_and_grad``).

    Calling it with a list of tensors in θ0's key order returns ``H v`` the same way.

    Raises:
        ValueError: the loss is not finite at ``point``, or it is not twice
            differentiable by autograd.
    """

    def __init__(
        self,
        objective: Objective,
        point: Mapping[str, Tensor] | None = None,
        *,
        dataset: str | None = None,
        reuse_graph: bool = True,
        reduce: Reducer | None = None,
    ) -> None:
        self.objective = objective
        p = (
            objective.theta0
            if point is None
            else V.check_vector(point, objective.theta0, name="point")
        )
        self.point = {k: p[k].detach() for k in objective.theta0}
        self.dataset = objective.dataset(dataset).name
        self.reuse = reuse_graph and objective.dataset(self.dataset).in_memory
        ranks = objective.ranks
        self.reduce = reduce if reduce is not None or ranks is None else ranks.all_sum
        self._graph: tuple[list[Tensor], list[Tensor]] | None = None
        self._constant_checked = False  # the data-set gradient's check, done once

    def _leaves(self) -> V.Vector:
        return {k: t.clone().requires_grad_(True) for k, t in self.point.items()}

    def _build(self) -> tuple[list[Tensor], list[Tensor]]:
        """The gradient over the whole data set, with its graph, and its leaves."""
        leaves = self._leaves()
        value, grad = self.objective.value_and_grad(
            leaves, dataset=self.dataset, create_graph=True, reduce=_local
        )
        _check_finite(value)
        grads = list(grad.values())
        if not any(g.requires_grad for g in grads):
            self._check_constant_gradient(grads)
        return grads, list(leaves.values())

    def _check_constant_gradient(self, grads: list[Tensor]) -> None:
        """Autograd says the gradient does not depend on θ: true for a loss linear in θ
        (the Hessian is zero), false when an operation lacks a double backward. One
        finite difference of the data-set gradient ``grads`` tells the two apart."""
        gen = torch.Generator().manual_seed(0)
        step = {
            k: 1e-3 * (t.abs().max().clamp_min(1.0)) * torch.randn(t.shape, generator=gen).to(t)
            for k, t in self.point.items()
        }
        moved = {k: (t + step[k]).requires_grad_(True) for k, t in self.point.items()}
        _, other = self.objective.value_and_grad(moved, dataset=self.dataset, reduce=_local)
        diff = max(float((a - c).abs().max()) for a, c in zip(other.values(), grads, strict=True))
        scale = max(float(c.abs().max()) for c in grads)
        if diff > 1e-6 * max(scale, 1e-12):
            raise ValueError(
                "the gradient changes with the parameters but autograd gives no second "
                "derivative: the loss is not twice differentiable by autograd (an operation "
                "without double backward, e.g. a @once_differentiable Function)"
            )

    def _streamed(self, vs: list[Tensor], *, batched: bool = False) -> list[Tensor] | None:
        """``H v`` batch by batch: each batch's graph is freed after its product."""
        out: list[Tensor] | None = None
        leaves = self._leaves()
        terms = self.objective.gradients(leaves, dataset=self.dataset, create_graph=True)
        for term, grad in terms:
            _check_finite(float(term.detach()))
            grads = list(grad.values())
            if not self._constant_checked and not any(g.requires_grad for g in grads):
                _, whole = self.objective.value_and_grad(
                    self.point, dataset=self.dataset, reduce=_local
                )
                self._check_constant_gradient(list(whole.values()))
                self._constant_checked = True
            hv = _second_backward(grads, list(leaves.values()), vs, retain=False, batched=batched)
            out = hv if out is None else [a + c for a, c in zip(out, hv, strict=True)]
        return out

    def __call__(self, vs: list[Tensor]) -> list[Tensor]:
        if self.reuse:
            if self._graph is None:
                self._graph = self._build()
            out: list[Tensor] | None = _second_backward(*self._graph, vs, retain=True)
        else:
            out = self._streamed(vs)
        return self._reduced(out)

    def many(self, vs: list[Tensor]) -> list[Tensor]:
        """``H v`` for ``k`` vectors at once: each ``vs[i]`` is ``[k, *shape_i]`` and so is
        each result. One backward pass per batch of data computes all ``k`` products
        (``torch.autograd.grad(..., is_grads_batched=True)``, a vmap over the backward);
        where vmap cannot run a backward formula, they are computed one by one."""
        k = vs[0].shape[0]
        try:
            if self.reuse:
                if self._graph is None:
                    self._graph = self._build()
                out: list[Tensor] | None = _second_backward(
                    *self._graph, vs, retain=True, batched=True
                )
            else:
                out = self._streamed(vs, batched=True)
            return self._reduced(out, (k,))
        except _BatchedBackwardError:
            cols = [self([v[j] for v in vs]) for j in range(k)]
            return [torch.stack([c[i] for c in cols]) for i in range(len(vs))]

    def _reduced(self, out: list[Tensor] | None, lead: tuple[int, ...] = ()) -> list[Tensor]:
        if out is None and self.objective.ranks is not None:  # an empty share of the data
            out = [t.new_zeros(lead + t.shape) for t in self.point.values()]
        if out is None:
            raise ValueError(f"data set {self.dataset!r} yields no batches")
        if self.reduce is not None:
            out = self.reduce(out)
        return out


def _local(parts: list[Tensor]) -> list[Tensor]:
    """No reduction: this process's share as it is (the gradient graph of a product is
    built locally; the product is what is summed over processes)."""
    return parts


def _check_finite(value: float) -> None:
    if not torch.isfinite(torch.tensor(value)):
        raise ValueError(
            "the loss is not finite at this point; curvature is undefined there "
            "(check the checkpoint or the data)"
        )


class _BatchedBackwardError(RuntimeError):
    """A batched (vmapped) backward pass failed: compute the products one by one."""


def _second_backward(
    grads: list[Tensor],
    leaves: list[Tensor],
    vs: list[Tensor],
    *,
    retain: bool,
    batched: bool = False,
) -> list[Tensor]:
    """``∇_leaves ⟨grads, vs⟩``: one backward pass through the gradient's graph
    (``batched``: each ``vs[i]`` has a leading dimension of products to take at once)."""
    lead = (vs[0].shape[0],) if batched else ()
    idx = [i for i, g in enumerate(grads) if g.requires_grad]
    if not idx:  # the gradient is constant: the Hessian is exactly zero
        return [t.new_zeros(lead + t.shape) for t in leaves]
    try:
        with torch.enable_grad():
            hv = torch.autograd.grad(
                [grads[i] for i in idx],
                leaves,
                grad_outputs=[vs[i] for i in idx],
                retain_graph=retain,
                allow_unused=True,
                is_grads_batched=batched,
            )
    except RuntimeError as e:
        if batched:
            raise _BatchedBackwardError(str(e)) from e
        first = str(e).strip().splitlines()[0][:200]
        fix = "replace the operation it names with one that has a second derivative"
        if "scaled_dot_product" in first or "attention" in first:
            # PyTorch's fused attention kernels have no double backward; the math one has.
            fix = (
                "fused attention has no second derivative: build a transformers model with "
                'attn_implementation="eager", or run inside torch.nn.attention.sdpa_kernel('
                "torch.nn.attention.SDPBackend.MATH)"
            )
        raise ValueError(
            f"the loss is not twice differentiable here (PyTorch: {first}); {fix}"
        ) from None
    return [
        t.new_zeros(lead + t.shape) if h is None else h.detach()
        for h, t in zip(hv, leaves, strict=True)
    ]
