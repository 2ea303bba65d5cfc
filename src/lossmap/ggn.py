"""The generalised Gauss–Newton matrix and the Fisher: curvature through the outputs.

Each is a :class:`~lossmap.curvature.CurvatureOperator` (a scipy ``LinearOperator``
over the flattened parameters, or a block of them with ``params=``), so
:func:`lossmap.hessian.eigenvalues`, :func:`~lossmap.hessian.trace`,
:func:`~lossmap.hessian.spectral_density` and :func:`~lossmap.hessian.dense` take them
unchanged. With ``f_i`` the model's output for sample ``i``, ``J_i = ∂f_i/∂θ`` and
the loss ``L = (1/N) Σ_i ℓ(f_i, y_i)`` over the whole data set (the criterion's
reduction as the landscape uses it: uneven batches are weighted by their size):

- :class:`GGNOperator`: ``G = (1/N) Σ_i J_iᵀ ∇²_f ℓ(f_i, y_i) J_i`` (Schraudolph
  2002; Martens 2020, "New insights and perspectives on the natural gradient method",
  §8). Equal to the Hessian when the model is linear in θ.
- :class:`FisherOperator`: the model's Fisher, labels sampled from the model's
  predictive distribution (``mc_samples`` per input, seeded). Equal to the GGN in
  expectation for cross-entropy, squared error and BCE-with-logits (Martens 2020, §9.2).
- :class:`EmpiricalFisherOperator`: the same outer products at the data's labels;
  not a curvature matrix in general (Kunstner, Balles & Hennig 2019).

The product ``M v = Σ_b J_bᵀ (A_b (J_b v))`` takes, per batch ``b``, ``J_b v`` by the
double-backward trick (the gradient ``J_bᵀ u`` of a dummy ``u`` is built with its
graph once; its derivative in ``u`` along ``v`` is ``J_b v``), the output-space map
``A_b`` (the loss's Hessian in the outputs, by autograd; or the sampled outer
products), then ``J_bᵀ`` by one backward pass. Held data whose graphs fit
(:func:`lossmap.hessian.graph_fits`) keep every batch's graph: two backward passes
per product and no forward pass. Under ``torchrun`` each rank takes its share of the
data and the products are summed over ranks (``Objective.ranks.all_sum``), as the
Hessian's are.

This module is not the derivative core's ``Objective.gradients`` loop: it needs the
model's outputs, which that loop does not expose. It walks the same batches
(``Objective.local``) with the same ``N`` (``Objective.dataset_size``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from lossmap import vectors as V
from lossmap.curvature import CurvatureOperator
from lossmap.data import Batch, batch_size
from lossmap.hessian import graph_fits
from lossmap.landscape import Landscape

__all__ = ["EmpiricalFisherOperator", "FisherOperator", "GGNOperator"]

OutputMap = Callable[[Tensor, bool], Tensor]
"""``(J v, batched) -> A (J v)``: the output-space matrix of one batch."""


@dataclass
class _Linearised:
    """One batch: the outputs ``z`` with their graph to ``leaves``, ``jtu = Jᵀ u`` with
    its graph to the dummy ``u``, and the output-space map."""

    leaves: list[Tensor]
    z: Tensor
    u: Tensor
    jtu: list[Tensor | None]
    out_map: OutputMap

    def product(self, vs: list[Tensor], *, batched: bool, retain: bool) -> list[Tensor]:
        lead = (vs[0].shape[0],) if batched else ()
        used = [(g, vs[i]) for i, g in enumerate(self.jtu) if g is not None and g.requires_grad]
        if not used:
            return [t.new_zeros(lead + t.shape) for t in self.leaves]
        (jv,) = torch.autograd.grad(
            [g for g, _ in used],
            self.u,
            grad_outputs=[v for _, v in used],
            retain_graph=True,
            is_grads_batched=batched,
        )
        w = self.out_map(jv, batched)
        out = torch.autograd.grad(
            self.z,
            self.leaves,
            grad_outputs=w,
            retain_graph=retain,
            allow_unused=True,
            is_grads_batched=batched,
        )
        return [
            t.new_zeros(lead + t.shape) if h is None else h.detach()
            for h, t in zip(out, self.leaves, strict=True)
        ]


class _OutputOperator(CurvatureOperator):
    """``v ↦ Σ_b J_bᵀ A_b J_b v`` over a data set; subclasses give ``A_b``."""

    kind = "GGN"

    def __init__(
        self,
        land: Landscape,
        point: Mapping[str, Tensor] | None = None,
        *,
        dataset: str | None = None,
        params: str | Iterable[str] | None = None,
        reuse_graph: bool | None = None,
    ) -> None:
        if not isinstance(land, Landscape):
            raise TypeError(f"expected a Landscape, got {type(land).__name__}")
        if land.criterion is None:
            raise ValueError(
                f"the {self.kind} needs the loss split into the model's outputs and a criterion "
                "on them: build the Landscape as Landscape(model, criterion, data=...) "
                "(e.g. nn.CrossEntropyLoss()), not with loss=callable(model, batch)"
            )
        self.land = land
        p = land.theta0 if point is None else V.check_vector(point, land.theta0, name="point")
        name = land.dataset(dataset).name
        self.reuse_graph = graph_fits(land, name) if reuse_graph is None else bool(reuse_graph)
        self.reuse_graph = self.reuse_graph and land.dataset(name).in_memory
        self.total = land.dataset_size(name)
        self._setup({k: p[k].detach() for k in land.theta0}, name, params)
        self._held: list[_Linearised] | None = None

    # ------------------------------------------------------------- per batch
    def _output_map(self, z: Tensor, target: Tensor, n: int, index: int) -> OutputMap:
        raise NotImplementedError

    def _linearise(self, batch: Batch, index: int) -> _Linearised:
        land = self.land
        if not isinstance(batch, tuple | list) or len(batch) < 2:
            raise TypeError(
                f"the {self.kind} needs batches (inputs..., target), got {type(batch).__name__}"
            )
        leaves = [t.clone().requires_grad_(True) for t in self.full_point.values()]
        fixed = {k: t.clone() for k, t in land.fixed.items()} if land.train_mode else land.fixed
        tensors = {**fixed, **dict(zip(self.full_point, leaves, strict=True))}
        with land.mode(), torch.enable_grad():
            z = functional_call(land.model, tensors, tuple(batch[:-1]))
            if not isinstance(z, Tensor):
                raise TypeError(
                    f"the {self.kind} needs the model to return one tensor of outputs, got "
                    f"{type(z).__name__}"
                )
            u = torch.zeros_like(z, requires_grad=True)
            jtu = torch.autograd.grad(z, leaves, u, create_graph=True, allow_unused=True)
        out_map = self._output_map(z.detach(), batch[-1], batch_size(batch), index)
        return _Linearised(leaves, z, u, list(jtu), out_map)

    def _pieces(self) -> Iterator[tuple[_Linearised, bool]]:
        """Each batch linearised, and whether its graph is to be kept."""
        if self.reuse_graph:
            if self._held is None:
                self._held = [self._linearise(b, i) for i, b in enumerate(self._batches())]
            for piece in self._held:
                yield piece, True
            return
        for i, b in enumerate(self._batches()):
            yield self._linearise(b, i), False

    def _batches(self) -> Iterable[Batch]:
        return self.land.local(self.dataset)

    def _apply(self, vs: list[Tensor], *, batched: bool) -> list[Tensor]:
        total: list[Tensor] | None = None
        for piece, keep in self._pieces():
            try:
                part = piece.product(vs, batched=batched, retain=keep or batched)
            except RuntimeError:
                if not batched:
                    raise
                cols = [
                    piece.product([v[j] for v in vs], batched=False, retain=True)
                    for j in range(vs[0].shape[0])
                ]
                part = [torch.stack([c[i] for c in cols]) for i in range(len(vs))]
            total = part if total is None else [a + c for a, c in zip(total, part, strict=True)]
        ranks = self.land.ranks
        if total is None and ranks is not None:  # an empty share of the data
            lead = (vs[0].shape[0],) if batched else ()
            total = [t.new_zeros(lead + t.shape) for t in self.full_point.values()]
        if total is None:
            raise ValueError(f"data set {self.dataset!r} yields no batches")
        return ranks.all_sum(total) if ranks is not None else total


def _finite(value: Tensor) -> None:
    if not bool(torch.isfinite(value)):
        raise ValueError(
            "the loss is not finite at this point; curvature is undefined there "
            "(check the checkpoint or the data)"
        )


class GGNOperator(_OutputOperator):
    """The generalised Gauss–Newton matrix ``G = (1/N) Σ_i J_iᵀ ∇²_f ℓ(f_i, y_i) J_i``.

    Schraudolph 2002 ("Fast curvature matrix-vector products for second-order gradient
    descent"); Martens 2020 §8. ``∇²_f ℓ`` is the criterion's Hessian in the model's
    outputs, by autograd, so any twice-differentiable criterion works; it is positive
    semi-definite for convex criteria (cross-entropy, squared error, BCE), so ``G`` is.
    On the scale of the landscape's loss (its reduction: the data-set mean), so ``G``
    equals the Hessian for a model linear in θ (linear and logistic regression).

    Args:
        land: a :class:`~lossmap.Landscape` built with a ``criterion`` (not ``loss=``).
        point: where (θ0 by default).
        dataset: which data set (the default one when ``None``).
        params: glob patterns: the diagonal block of those parameters.
        reuse_graph: keep every batch's graphs between products (default: held data
            whose graph fits, :func:`lossmap.hessian.graph_fits`).

    >>> import numpy as np
    >>> from lossmap.examples import linear_regression
    >>> from lossmap.hessian import HessianOperator
    >>> land = linear_regression()
    >>> bool(np.allclose(GGNOperator(land) @ np.eye(2), HessianOperator(land) @ np.eye(2)))
    True
    """

    kind = "GGN"

    def _output_map(self, z: Tensor, target: Tensor, n: int, index: int) -> OutputMap:
        zd = z.requires_grad_(True)
        with torch.enable_grad():
            term = self.land.output_stats(zd, target, n, metrics=False)[0] / self.total
            _finite(term.detach())
            (gz,) = torch.autograd.grad(term, zd, create_graph=True)

        def apply(jv: Tensor, batched: bool) -> Tensor:
            if not gz.requires_grad:  # the criterion is linear in the outputs
                return torch.zeros_like(jv)
            (hjv,) = torch.autograd.grad(gz, zd, jv, retain_graph=True, is_grads_batched=batched)
            return hjv

        return apply


def _likelihood(land: Landscape, z: Tensor, kind: str) -> tuple[str, float]:
    """The predictive distribution the criterion is the negative log-likelihood of, and
    ``c`` with ``ℓ = c · (−log p) + const`` per sample under the criterion's reduction."""
    crit = land.criterion
    reduction = getattr(crit, "reduction", "mean")
    per_sample = max(1, z[0].numel()) if z.ndim > 0 and z.shape[0] > 0 else 1
    if type(crit) is nn.CrossEntropyLoss and crit.weight is None and crit.label_smoothing == 0:
        if z.ndim != 2:
            raise ValueError(
                f"the {kind} with cross-entropy needs outputs [batch, classes], got {list(z.shape)}"
            )
        return "categorical", 1.0
    if type(crit) is nn.MSELoss:
        return "gaussian", 1.0 / per_sample if reduction == "mean" else 1.0
    if type(crit) is nn.BCEWithLogitsLoss and crit.weight is None and crit.pos_weight is None:
        return "bernoulli", 1.0 / per_sample if reduction == "mean" else 1.0
    raise ValueError(
        f"the {kind} needs a criterion that is a negative log-likelihood: nn.CrossEntropyLoss "
        f"(no class weights, no label smoothing), nn.MSELoss or nn.BCEWithLogitsLoss (no "
        f"weights), got {crit!r}; use GGNOperator for other criteria"
    )


def _outer_map(r: Tensor, scale: float) -> OutputMap:
    """``w = scale Σ_s r_s ⟨r_s, J v⟩`` per sample, for ``r`` ``[S, *z.shape]``."""
    rf = r.reshape(r.shape[0], r.shape[1], -1)

    def apply(jv: Tensor, batched: bool) -> Tensor:
        j = jv if batched else jv.unsqueeze(0)
        jf = j.reshape(j.shape[0], j.shape[1], -1)
        dots = torch.einsum("sbc,kbc->ksb", rf, jf)
        w = (torch.einsum("ksb,sbc->kbc", dots, rf) * scale).reshape(j.shape)
        return w if batched else w[0]

    return apply


def _residuals(land: Landscape, z: Tensor, labels: Tensor) -> Tensor:
    """``∇_f ℓ(f_i, y)`` per sample for labels ``[S, *target]``: ``[S, *z.shape]``."""
    s = labels.shape[0]
    zz = z.detach().unsqueeze(0).expand(s, *z.shape).reshape(s * z.shape[0], *z.shape[1:])
    zz = zz.clone().requires_grad_(True)
    flat = labels.reshape(s * labels.shape[1], *labels.shape[2:])
    with torch.enable_grad():
        term = land.output_stats(zz, flat, s * z.shape[0], metrics=False)[0]
        _finite(term.detach())
        (r,) = torch.autograd.grad(term, zz)
    return r.reshape(s, *z.shape)


class FisherOperator(_OutputOperator):
    """The model's Fisher ``F = (1/N) Σ_i J_iᵀ E_{y~p(y|f_i)}[∇_f ℓ ∇_f ℓᵀ] J_i / c``,
    estimated with ``mc_samples`` labels per input drawn from the model's predictive
    distribution (seeded: the same matrix for every product).

    The criterion is read as a negative log-likelihood, ``ℓ = c · (−log p(y|f))``
    (Martens 2020 §9.2; curvlinops' conventions): ``nn.CrossEntropyLoss`` —
    ``y ~ Categorical(softmax(f))``, ``c = 1``; ``nn.MSELoss`` — ``y ~ N(f, I/2)``
    (the Gaussian whose negative log-likelihood is ``‖f − y‖²``); ``nn.BCEWithLogitsLoss``
    — ``y ~ Bernoulli(σ(f))``; ``c = 1/C`` where ``reduction="mean"`` also averages
    over the ``C`` outputs of a sample, else 1. Dividing by ``c`` puts ``F`` on the
    loss's scale, so ``E[F] = G`` (the :class:`GGNOperator`) exactly for these three.
    Error: ``O(1/√(mc_samples · N))``.

    Args:
        land, point, dataset, params, reuse_graph: as for :class:`GGNOperator`.
        mc_samples: labels drawn per input.
        seed: the draws (per batch, from ``(seed, rank, batch index)``): held data, or a
            streamed loader that yields the same batches in the same order on every
            pass (no shuffling), give one matrix for every product.
    """

    kind = "Fisher"

    def __init__(
        self,
        land: Landscape,
        point: Mapping[str, Tensor] | None = None,
        *,
        dataset: str | None = None,
        params: str | Iterable[str] | None = None,
        reuse_graph: bool | None = None,
        mc_samples: int = 1,
        seed: int = 0,
    ) -> None:
        if not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.mc_samples = mc_samples
        self.seed = seed
        super().__init__(land, point, dataset=dataset, params=params, reuse_graph=reuse_graph)

    def _output_map(self, z: Tensor, target: Tensor, n: int, index: int) -> OutputMap:
        family, c = _likelihood(self.land, z, self.kind)
        rank = self.land.ranks.rank if self.land.ranks is not None else 0
        state = np.random.SeedSequence([self.seed, rank, index]).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(state))
        s, zc = self.mc_samples, z.detach().cpu()
        if family == "categorical":
            probs = torch.softmax(zc.double(), dim=-1)
            labels = torch.multinomial(probs, s, replacement=True, generator=gen).T
        elif family == "gaussian":
            noise = torch.randn((s, *zc.shape), generator=gen, dtype=torch.float64)
            labels = (zc.double() + noise * math.sqrt(0.5)).to(z.dtype)
        else:
            p = torch.sigmoid(zc.double()).expand(s, *zc.shape)
            labels = torch.bernoulli(p, generator=gen).to(z.dtype)
        r = _residuals(self.land, z, labels.to(z.device))
        return _outer_map(r, 1.0 / (self.total * c * s))


class EmpiricalFisherOperator(_OutputOperator):
    """The empirical Fisher ``(1/N) Σ_i g_i g_iᵀ / c`` with ``g_i = ∇_θ ℓ(f_i, y_i)`` the
    per-sample gradients at the data's labels (``c`` as for :class:`FisherOperator`,
    1 for cross-entropy: then exactly ``(1/N) Σ_i g_i g_iᵀ``).

    .. warning::
        The empirical Fisher is *not* the Fisher and not a curvature approximation in
        general: it uses the data's labels where the Fisher uses the model's, so it
        agrees with the Fisher or the GGN only for a well-specified model near a
        minimum with plenty of data, and far from a minimum its eigen-directions follow
        the gradients, not the curvature. Kunstner, Balles & Hennig 2019, "Limitations
        of the empirical Fisher approximation for natural gradient descent"
        (NeurIPS). Prefer :class:`GGNOperator` or :class:`FisherOperator` for curvature.

    Computed as ``g_i g_iᵀ v = J_iᵀ r_i ⟨r_i, J_i v⟩`` with ``r_i = ∇_f ℓ`` (no
    per-sample parameter gradients are stored).
    """

    kind = "empirical Fisher"

    def _output_map(self, z: Tensor, target: Tensor, n: int, index: int) -> OutputMap:
        _, c = _likelihood(self.land, z, self.kind)
        r = _residuals(self.land, z, target.unsqueeze(0))
        return _outer_map(r, 1.0 / (self.total * c))
