"""The Landscape: a model, a loss and data sets, seen as a function of the parameters.

``Landscape(model, criterion, data)`` snapshots the trained point θ0 (the trainable
parameters) and the model's buffers, moves the data to the device once, and evaluates
the loss (and metrics) at any other point with :func:`torch.func.functional_call`, so
the caller's model is never written to.

The per-batch statistics and the derivative core live in the base class
:class:`lossmap.objective.Objective`; this class adds the loss and metrics at many
points through the engine (:mod:`lossmap.evaluate`), the gradient and Hessian-vector
products.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from lossmap import vectors as V
from lossmap.data import Batch, DataSet
from lossmap.evaluate import Explicit, run
from lossmap.hvp import HessianVectorProduct
from lossmap.objective import Objective, accuracy, binary_accuracy

__all__ = ["Batch", "DataSet", "Landscape", "accuracy", "binary_accuracy"]


class Landscape(Objective):
    """A model, a loss and data: the loss (and metrics) as a function of the parameters.

    Args:
        model: any ``nn.Module``; its trainable parameters at construction are θ0.
        criterion: ``criterion(model(*inputs), target)`` for batches ``(inputs..., target)``;
            use ``reduction="mean"`` (the default) or ``"sum"``.
        data: ``(X, y)`` tensors, a ``DataLoader`` / iterable of batches, or a dict of
            named data sets (``{"train": ..., "test": ...}``; the first is the default).
        loss: instead of ``criterion``, ``loss(model, batch)`` returning either the
            batch's mean loss (weighted by the batch's number of samples, e.g.
            ``lambda m, b: m(**b).loss``) or a pair ``(sum, count)``: the loss summed
            over the batch and its number of tokens (or any weight ≥ 0). With pairs the
            mean is exact per token, ``L = Σ_b sum_b / Σ_b count_b``, for the value,
            every strategy, gradients, Hessians and sharpness; a batch whose count is 0
            adds nothing. Counts must depend on the batch alone (e.g. its attention
            mask): they are summed once per data set, at θ0, and cached.
        metrics: ``{name: fn}``, extra per-batch statistics: ``fn(output, target)`` with
            a criterion (a mean, weighted by the batch size), ``fn(model, batch)`` with
            ``loss`` (a mean weighted by the batch size, or a ``(sum, count)`` pair
            divided by its own counts). Defaults to accuracy for cross-entropy / NLL /
            BCE-with-logits criteria; ``{}`` turns it off.
        device: where to evaluate (``"cpu"``, ``"cuda"``); defaults to the model's.
            If it differs from the model's device, a copy of the model is moved there.
        train_mode: evaluate in training mode (BatchNorm batch statistics, dropout).
        cache_bytes: loaders whose data fit in this many bytes are held on the device.

    The loss at a point is the exact data-set mean: per-batch means are weighted by
    batch size, so an uneven last batch does not bias it. Padded sequences of different
    lengths need the per-token mean: return ``(sum, count)`` from ``loss``, e.g. for a
    ``transformers`` causal language model (labels -100 at padding)::

        def loss(model, batch):
            out = model(**batch)  # out.loss: the batch's mean over its tokens
            n_tokens = (batch["labels"][:, 1:] != -100).sum()  # the shifted targets
            return out.loss * n_tokens, n_tokens

    >>> import torch
    >>> from torch import nn
    >>> X, y = torch.randn(10, 3), torch.randn(10, 1)
    >>> land = Landscape(nn.Linear(3, 1), nn.MSELoss(), data=(X, y))
    >>> abs(land.loss() - float(nn.MSELoss()(land.model(X).detach(), y))) < 1e-6
    True

    The mean over the entries a mask keeps, with one kept of two, then one of one:

    >>> def masked(m, b):
    ...     per = (m(b["x"]) - b["y"]).squeeze(-1) ** 2 * b["mask"]
    ...     return per.sum(), b["mask"].sum()
    >>> data = [
    ...     {"x": torch.tensor([[1.0], [2.0]]), "y": torch.zeros(2, 1), "mask": torch.tensor([1.0, 0])},
    ...     {"x": torch.tensor([[2.0]]), "y": torch.zeros(1, 1), "mask": torch.tensor([1.0])},
    ... ]
    >>> model = nn.Linear(1, 1, bias=False)
    >>> _ = nn.init.constant_(model.weight, 3.0)
    >>> Landscape(model, loss=masked, data=data).loss()  # (3² + 6²) / 2, not 18 per sample
    22.5
    """

    # ----------------------------------------------------------- evaluation
    def loss(
        self, point: Mapping[str, Tensor] | None = None, *, dataset: str | None = None
    ) -> float:
        """Mean loss over the whole data set at ``point`` (θ0 by default)."""
        ds = dataset or self.default_dataset
        vals = self.evaluate([point if point is not None else self.theta0], datasets=[ds])
        return float(vals[f"{ds}/loss"][0])

    def evaluate(
        self,
        points: Sequence[Mapping[str, Tensor]],
        *,
        datasets: Sequence[str] | None = None,
        strategy: str = "auto",
    ) -> dict[str, Any]:
        """Loss and metrics at many points: ``{"<data set>/<stat>": array [n_points]}``.

        The bare statistic names (``"loss"``, ``"accuracy"``) refer to the first data set.
        """
        pts = [V.check_vector(p, self.theta0, name="point") for p in points]
        res = run(self, Explicit(pts), datasets=datasets, strategy=strategy)
        return res.values_with_aliases()

    # ---------------------------------------------------------- derivatives
    def gradient(
        self, point: Mapping[str, Tensor] | None = None, *, dataset: str | None = None
    ) -> V.Vector:
        """Gradient of the data-set mean loss at ``point`` (θ0 by default)."""
        return {k: g.detach() for k, g in self.value_and_grad(point, dataset=dataset)[1].items()}

    def hvp(
        self,
        point: Mapping[str, Tensor] | None,
        v: Mapping[str, Tensor],
        *,
        dataset: str | None = None,
    ) -> V.Vector:
        """Hessian-vector product ``H(point) v`` of the data-set mean loss.

        The mat-vec of :class:`lossmap.hessian.HessianOperator` (one implementation,
        :class:`lossmap.hvp.HessianVectorProduct`); for many products at one point,
        build the operator once: it reuses the gradient graph.
        """
        v = V.check_vector(v, self.theta0, name="v")
        product = HessianVectorProduct(self, point, dataset=dataset, reuse_graph=False)
        hv = product([v[k].to(t) for k, t in self.theta0.items()])
        return dict(zip(self.theta0, hv, strict=True))

    def __repr__(self) -> str:
        sets = ", ".join(
            f"{k}: {ds.size if ds.size is not None else '?'}" for k, ds in self.datasets.items()
        )
        return (
            f"Landscape({type(self.model).__name__}, {self.num_parameters:,} parameters, "
            f"data {{{sets}}}, device={self.device})"
        )
