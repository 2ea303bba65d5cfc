"""The objective: a model, a loss and data sets as a function of the parameters θ.

:class:`Objective` snapshots the trained point θ0 (the trainable parameters) and the
fixed tensors (buffers, frozen parameters), holds the data sets on the device, and
computes per-batch loss and metric sums at any θ with
:func:`torch.func.functional_call`, so the caller's model is never written to.

It is also the one derivative core: :meth:`Objective.gradients` is the one loop over a
data set that takes derivatives, and :meth:`Objective.value_and_grad` sums it. Every
gradient, Hessian-vector product, sharpness ascent, gradient-descent step and
curve-fitting step in lossmap goes through them, with an optional ``reduce`` hook where
several processes sum their shares (see ARCHITECTURE.md).

:class:`lossmap.Landscape` is the public face of this class: it adds evaluation of
many points through the engine (:mod:`lossmap.evaluate`).
"""

from __future__ import annotations

import contextlib
import copy
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Self

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lossmap import data as D
from lossmap import vectors as V
from lossmap.data import Batch, DataSet, batch_size, make_dataset, total_memory
from lossmap.distributed import Ranks, detect
from lossmap.models import NORM_TYPES, Caller, set_mode, tied_names, unwrap

LossFn = Callable[[Callable[..., Any], Batch], Any]
"""``loss(model, batch)``: the batch's mean loss, or a ``(sum, count)`` pair."""
Metric = Callable[..., Any]
Reducer = Callable[[list[Tensor]], list[Tensor]]

__all__ = [
    "LossFn",
    "Metric",
    "Objective",
    "Reducer",
    "accuracy",
    "binary_accuracy",
    "tied_names",
    "unwrap",
]


def accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Fraction of rows whose arg-max equals the integer class target."""
    return (output.argmax(dim=-1) == target).to(output.dtype).mean()


def binary_accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Fraction of logits on the same side of 0 as the {0, 1} target."""
    return ((output > 0) == (target > 0.5)).to(output.dtype).mean()


_INT_TYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _cross_entropy_stats(out: Tensor, target: Tensor, *, with_accuracy: bool) -> Tensor:
    """Sums of cross-entropy (and correct arg-max) over a batch in one pass over the logits.

    Equals ``F.cross_entropy(out, target, reduction="sum")`` (and the summed accuracy)
    for class-index targets; about twice as fast on CPU for few classes because it
    shares one max over the class dimension. Rows whose target is negative
    (``ignore_index``) are not expected here: the caller checks the targets once.
    """
    top = out.max(dim=-1)
    shifted = out - top.values.unsqueeze(-1)
    lse = shifted.exp().sum(dim=-1).log()
    picked = shifted.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    loss = (lse - picked).sum()
    if not with_accuracy:
        return loss.reshape(1)
    correct = (top.indices == target).to(out.dtype).sum()
    return torch.stack([loss, correct])


def _default_metrics(criterion: object) -> dict[str, Metric]:
    if isinstance(criterion, nn.CrossEntropyLoss | nn.NLLLoss):
        return {"accuracy": accuracy}
    if isinstance(criterion, nn.BCEWithLogitsLoss):
        return {"accuracy": binary_accuracy}
    return {}


class Objective:
    """A model, a loss and data sets: per-batch statistics and derivatives at any θ.

    Construct a :class:`lossmap.Landscape` (same arguments); this base class holds
    what the engine and the derivative core need, and nothing that depends on them.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable[[Any, Any], Tensor] | None = None,
        data: object = None,
        *,
        loss: LossFn | None = None,
        metrics: Mapping[str, Metric] | None = None,
        device: str | torch.device | None = None,
        train_mode: bool = False,
        cache_bytes: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if (criterion is None) == (loss is None):
            raise ValueError(
                "pass exactly one of criterion= (e.g. nn.CrossEntropyLoss()) or "
                "loss=callable(model, batch) -> mean loss or (sum, count)"
            )
        if data is None:
            raise ValueError("data is required: (X, y) tensors, a DataLoader, or a dict of them")
        self.ranks: Ranks | None = detect()  # in a group of several processes: shared
        inner, self.wrapper_prefix = unwrap(model)
        if inner is not model:
            warnings.warn(
                f"lossmap evaluates the module inside the {type(model).__name__} wrapper "
                "(the same function; wrappers refuse functional calls)",
                stacklevel=3,
            )
            model = inner
        self.aliases = tied_names(model)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not params:
            raise ValueError(
                "the model has no trainable parameters (requires_grad=True); nothing to map"
            )
        model_device = next(iter(params.values())).device
        dev = torch.device(device) if device is not None else model_device
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                "device 'cuda' was asked for but torch.cuda.is_available() is False; use device='cpu'"
            )
        if dev != model_device and not (dev.type == model_device.type and dev.index is None):
            model = copy.deepcopy(model).to(dev)
            params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.model = model
        self.device = dev
        self.criterion = criterion
        self.loss_fn = loss
        self.train_mode = bool(train_mode)
        self._params0 = V.clone(params)
        # Frozen parameters and buffers are held fixed at their current values.
        fixed: dict[str, Tensor] = {
            n: p for n, p in model.named_parameters() if not p.requires_grad
        }
        fixed.update(dict(model.named_buffers()))
        self._fixed0 = {n: t.detach().clone() for n, t in fixed.items()}
        if metrics is None:
            metrics = _default_metrics(criterion) if criterion is not None else {}
        bad = [k for k in metrics if "/" in k or k == "loss"]
        if bad:
            raise ValueError(f"metric names must not be 'loss' or contain '/', got {bad}")
        self.metrics: dict[str, Metric] = dict(metrics)
        self._forms = None if loss is not None else (False,) * (1 + len(self.metrics))
        # Plain cross-entropy (with or without the default accuracy) has a fused path.
        self._fast_ce = (
            type(criterion) is nn.CrossEntropyLoss
            and criterion.weight is None
            and criterion.label_smoothing == 0.0
            and criterion.reduction in ("mean", "sum")
            and (
                not self.metrics
                or (list(self.metrics) == ["accuracy"] and self.metrics["accuracy"] is accuracy)
            )
        )
        # From total memory, not free memory: whether a loader is held (and so which
        # strategy auto picks) must not change between runs of one command.
        budget = cache_bytes if cache_bytes is not None else min(2**31, total_memory(dev) // 4)
        named = data if isinstance(data, Mapping) else {"train": data}
        if not named:
            raise ValueError("data is an empty dict; pass at least one data set")
        self.datasets: dict[str, DataSet] = {
            str(k): make_dataset(str(k), v, dev, budget) for k, v in named.items()
        }
        for k in self.datasets:
            if "/" in k:
                raise ValueError(f"data set names must not contain '/', got {k!r}")
        if self._fast_ce:
            # The fused path has no ignore_index: use it only when no target is negative.
            self._fast_ce = all(
                ds.in_memory
                and all(
                    isinstance(b, tuple | list)
                    and isinstance(b[-1], Tensor)
                    and bool((b[-1] >= 0).all())
                    for b in ds.batches or []
                )
                for ds in self.datasets.values()
            )

    # ------------------------------------------------------------------ basics
    @property
    def stat_names(self) -> list[str]:
        """Names of the per-point statistics: ``["loss", *metrics]``."""
        return ["loss", *self.metrics]

    @property
    def keys(self) -> list[str]:
        """Result keys ``"<data set>/<statistic>"`` in evaluation order."""
        return [f"{d}/{s}" for d in self.datasets for s in self.stat_names]

    @property
    def default_dataset(self) -> str:
        return next(iter(self.datasets))

    @property
    def num_parameters(self) -> int:
        return V.numel(self._params0)

    def point(self) -> V.Vector:
        """A copy of θ0: the trainable parameters as ``dict[str, Tensor]``."""
        return V.clone(self._params0)

    def buffers(self) -> dict[str, Tensor]:
        """A copy of the fixed tensors (buffers and frozen parameters) used at every point."""
        return {k: t.clone() for k, t in self._fixed0.items()}

    @property
    def fused_cross_entropy(self) -> bool:
        """Whether the loss is plain cross-entropy (no class weights, no label smoothing,
        mean or sum) with at most the default accuracy, on held class-index targets none
        of which is negative: the case :meth:`output_stats` reduces in one fused pass."""
        return self._fast_ce

    @property
    def theta0(self) -> Mapping[str, Tensor]:
        """θ0 itself, read-only (no copy: for shapes, dtypes, devices and reading);
        :meth:`point` gives a copy to change."""
        return types.MappingProxyType(self._params0)

    @property
    def fixed(self) -> Mapping[str, Tensor]:
        """The fixed tensors themselves, read-only; :meth:`buffers` gives a copy."""
        return types.MappingProxyType(self._fixed0)

    def dataset(self, name: str | None = None) -> DataSet:
        """The data set called ``name`` (the default one when ``None``).

        Raises:
            ValueError: no data set of that name (the message lists them).
        """
        key = self.default_dataset if name is None else name
        if key not in self.datasets:
            raise ValueError(f"unknown data set {key!r}; this landscape has {list(self.datasets)}")
        return self.datasets[key]

    def dataset_size(self, name: str | None = None) -> int:
        """Number of samples in a data set (the default one when ``None``)."""
        return self.dataset(name).count()

    def norm_parameter_names(self) -> set[str]:
        """Names of the trainable parameters that belong to normalisation layers."""
        out: set[str] = set()
        for mname, m in self.model.named_modules():
            if isinstance(m, NORM_TYPES):
                for pname, _ in m.named_parameters(recurse=False):
                    full = f"{mname}.{pname}" if mname else pname
                    if full in self._params0:
                        out.add(full)
        return out

    def at(self, state: Mapping[str, Tensor], *, strict: bool = True) -> Self:
        """The same landscape with θ0 (and any buffers) taken from a state dict.

        Raises:
            ValueError: missing/unexpected keys or shape mismatches (the first are
                listed), or non-finite values in the state.
        """
        state = self.canonical_state(V.check_vector(state, name="state dict"))
        expected = {**self._params0, **self._fixed0}
        problems = V.mismatches(state, expected)
        if not strict:
            problems = [p for p in problems if not p.startswith(("missing", "unexpected"))]
        if problems:
            raise ValueError("checkpoint does not fit the model: " + "; ".join(problems))
        bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise ValueError(
                f"checkpoint holds non-finite values (NaN/Inf) in {bad[:5]}; "
                "use a checkpoint from before training diverged"
            )
        new = copy.copy(self)
        new._params0 = {
            k: (state.get(k, t)).detach().to(t.device, t.dtype).clone()
            for k, t in self._params0.items()
        }
        new._fixed0 = {
            k: (state.get(k, t)).detach().to(t.device, t.dtype).clone()
            for k, t in self._fixed0.items()
        }
        return new

    def distribute(self, mode: str | Ranks | None) -> Self:
        """The same objective, its work shared by the ranks of the initialised process
        group in ``mode`` (``"points"`` or ``"data"``, see :mod:`lossmap.distributed`;
        or the :class:`~lossmap.distributed.Ranks` that ``distributed.init`` returned),
        or not shared (``None``). Built inside a group of several ranks, an objective
        shares points by default."""
        new = copy.copy(self)
        new.ranks = detect(mode) if isinstance(mode, str) else mode
        return new

    def local(self, name: str | None = None) -> Iterable[Batch]:
        """The batches of a data set this process takes derivatives over: its share
        when the work is shared by ranks, all of them otherwise."""
        ds = self.dataset(name)
        return ds if self.ranks is None else ds.share(self.ranks.rank, self.ranks.world)

    def canonical_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A state dict keyed like this objective's tensors: the prefix of a wrapper the
        model had (``module.``, ``_orig_mod.``) removed when every key carries it, and
        each tied alias folded into the name it is tied to.

        Raises:
            ValueError: two tied keys hold different values.
        """
        out = dict(state)
        pre = self.wrapper_prefix
        if pre and out and all(k.startswith(pre) for k in out):
            out = {k.removeprefix(pre): t for k, t in out.items()}
        for alias, name in self.aliases.items():
            if alias not in out:
                continue
            t = out.pop(alias)
            if name not in out:
                out[name] = t
            elif out[name].shape != t.shape or not torch.equal(out[name], t):
                raise ValueError(
                    f"checkpoint: {alias} and {name} are tied in the model but hold different "
                    "values; save the checkpoint from the tied model (model.state_dict())"
                )
        return out

    # ------------------------------------------------------------- per batch
    def mode(self) -> contextlib.AbstractContextManager[None]:
        """Context manager: the model in eval (or train) mode, restored afterwards."""
        return set_mode(self.model, self.train_mode)

    def batch_stats(
        self, params: Mapping[str, Tensor], batch: Batch, *, metrics: bool = True
    ) -> Tensor:
        """Per-batch *sums* of ``[loss, *metrics]`` at ``params`` (a 1-D tensor).

        Summed over batches and divided by the data-set size (by :meth:`weight_totals`
        where callables return ``(sum, count)``: a sum as it is, 0 where its count is 0)
        they give exact means. Call inside :meth:`mode`. Works under ``torch.vmap``.
        ``metrics=False`` computes the loss alone (``[loss]``), e.g. for derivatives.
        """
        n = batch_size(batch)
        if self.loss_fn is not None:
            vals = self._returns(params, batch, metrics=metrics)
            forms = self.stat_forms()
            if any(forms[: len(vals)]):
                return D.weighted_sums(vals, forms, n)[0]
            if any(isinstance(v, tuple | list) for v in vals):
                raise TypeError(D.form_changed("a loss or metric callable"))
            return torch.stack([torch.as_tensor(v).reshape(()) for v in vals]) * n
        if not isinstance(batch, tuple | list) or len(batch) < 2:
            raise TypeError(
                "with a criterion, each batch must be a tuple (inputs..., target), got "
                f"{type(batch).__name__}; for other batches pass loss=callable(model, batch)"
            )
        tensors = {**self._fixed_for(params), **params}
        out = functional_call(self.model, tensors, tuple(batch[:-1]))
        return self.output_stats(out, batch[-1], n, metrics=metrics)

    def _returns(self, params: Mapping[str, Tensor], batch: Batch, *, metrics: bool) -> list[Any]:
        """What ``loss(model, batch)`` (and each metric) returns at ``params``."""
        assert self.loss_fn is not None
        caller = Caller(self.model, {**self._fixed_for(params), **params})
        vals = [self.loss_fn(caller, batch)]
        return vals + [m(caller, batch) for m in self.metrics.values()] if metrics else vals

    def _count(self, batches: Iterable[Batch]) -> tuple[Tensor, int, tuple[bool, ...]]:
        """:func:`~lossmap.data.count_weights` at θ0, in the model's mode, without
        gradients, the random state restored (dropout must not shift later draws)."""
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        names = ["loss(model, batch)", *(f"metric {k!r}" for k in self.metrics)]
        with torch.random.fork_rng(devices=cuda), self.mode(), torch.no_grad():
            return D.count_weights(
                batches, lambda b: self._returns(self._params0, b, metrics=True), names, self._forms
            )

    def stat_forms(self) -> tuple[bool, ...]:
        """Per statistic ``[loss, *metrics]``, whether its callable returns a ``(sum,
        count)`` pair, not a per-batch mean: seen once, at θ0 on the default data set's
        first batch (plain means with a ``criterion``); every batch must keep its form."""
        if self._forms is None:
            self._forms = self._count([next(iter(self.dataset()))])[2]
        return self._forms

    def weight_totals(self, name: str | None = None) -> Tensor | None:
        """Where a callable returns ``(sum, count)`` pairs, the denominators of exact
        means: per statistic ``[loss, *metrics]``, the counts summed over the data set
        (float64 ``[S]``; a plain mean counts its batch's size), counted once at θ0 and
        cached on the data set (counts depend on the batch alone: tokens, a mask).
        ``None`` where all are plain means, weighted by :meth:`dataset_size` as before.
        Raises ValueError / TypeError for a malformed pair, a negative count, no tokens.
        """
        if not any(self.stat_forms()):
            return None
        ds = self.dataset(name)
        if ds.totals is None:
            totals, samples, _ = self._count(ds)
            if totals[0] == 0:
                raise ValueError(f"data set {ds.name!r}: every count the loss returns is 0")
            ds.totals, ds.size = totals, samples if ds.size is None else ds.size
        return ds.totals

    def output_stats(self, out: Tensor, target: Tensor, n: int, *, metrics: bool = True) -> Tensor:
        """Per-batch sums of ``[loss, *metrics]`` from the model's output."""
        assert self.criterion is not None
        if self._fast_ce and target.dtype in _INT_TYPES and target.ndim == 1 and out.ndim == 2:
            return _cross_entropy_stats(out, target, with_accuracy=metrics and bool(self.metrics))
        loss = self.criterion(out, target)
        reduction = getattr(self.criterion, "reduction", "mean")
        if reduction == "sum":
            loss_sum = loss
        elif reduction == "none":
            loss_sum = loss.sum()
        else:
            loss_sum = loss * n
        vals = [loss_sum.reshape(())]
        if metrics:
            vals += [m(out, target).reshape(()) * n for m in self.metrics.values()]
        return torch.stack(vals)

    def _fixed_for(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        fixed = self._fixed0
        if self.train_mode and fixed:
            # Train-mode BatchNorm updates running statistics in place: hand it copies.
            return {k: t.clone() for k, t in fixed.items()}
        return fixed

    # --------------------------------------------------- the derivative core
    def leaves(self, point: Mapping[str, Tensor] | None = None) -> V.Vector:
        """Tensors to differentiate at: ``point`` (θ0 by default) in θ0's key order, as
        leaves that require grad. Tensors that already are such leaves are used as
        they are (so a caller can differentiate again with respect to them, as a
        Hessian-vector product does); others are detached copies."""
        p = self._params0 if point is None else V.check_vector(point, self._params0, name="point")
        return {
            k: p[k] if p[k].requires_grad and p[k].is_leaf else p[k].detach().requires_grad_(True)
            for k in self._params0
        }

    def gradients(
        self,
        point: Mapping[str, Tensor] | None = None,
        *,
        dataset: str | None = None,
        batches: Iterable[Batch] | None = None,
        create_graph: bool = False,
    ) -> Iterator[tuple[Tensor, V.Vector]]:
        """The one loop over data that takes derivatives: per batch ``b``, the term
        ``ℓ_b = (Σ_{i∈b} loss_i) / N`` and its gradient at ``point`` (θ0 by default).

        ``N`` is the number of samples of the data set (or of ``batches``, a list of
        batches given instead, e.g. one minibatch), so the terms sum to the exact
        data-set mean and an uneven last batch is weighted by its size. Where
        ``loss(model, batch)`` returns ``(sum, count)``, ``ℓ_b = sum_b / N`` with ``N``
        the counts summed (:meth:`weight_totals`; over ``batches``, one more forward
        pass each, without gradients); a batch whose count is 0 yields nothing. Unused
        parameters get a zero gradient. With ``create_graph`` the gradients keep their
        graph for a second derivative with respect to :meth:`leaves` of ``point``.
        """
        leaves = self.leaves(point)
        weighted = self.stat_forms()[0]
        if batches is None:
            ds: Iterable[Batch] = self.local(dataset)
            totals = self.weight_totals(dataset) if weighted else None
            total = self.dataset_size(dataset) if totals is None else float(totals[0])
        else:
            ds = list(batches)
            weights = self._count(ds)[0] if weighted and ds else None
            total = sum(batch_size(b) for b in ds) if weights is None else float(weights[0])
            if self.ranks is not None:  # the given batches, shared like a data set
                ds = list(DataSet("batches", ds).share(self.ranks.rank, self.ranks.world))
        if total == 0:
            raise ValueError("the data set is empty: no samples to take a gradient over")
        with self.mode(), torch.enable_grad():
            for b in ds:
                if weighted:
                    vals = self._returns(leaves, b, metrics=False)
                    sums, counts = D.weighted_sums(vals, self.stat_forms(), batch_size(b))
                    if not counts[0] > 0:
                        continue
                    term = sums[0] / total
                else:
                    term = self.batch_stats(leaves, b, metrics=False)[0] / total
                g = torch.autograd.grad(
                    term, list(leaves.values()), create_graph=create_graph, allow_unused=True
                )
                yield (
                    term,
                    {
                        k: torch.zeros_like(t) if gi is None else gi
                        for (k, t), gi in zip(leaves.items(), g, strict=True)
                    },
                )

    def value_and_grad(
        self,
        point: Mapping[str, Tensor] | None = None,
        *,
        dataset: str | None = None,
        batches: Iterable[Batch] | None = None,
        create_graph: bool = False,
        reduce: Reducer | None = None,
    ) -> tuple[float, V.Vector]:
        """The data-set mean loss at ``point`` (θ0 by default) and its gradient.

        The sum of :meth:`gradients` over the batches, in order; the value is summed
        in double precision. ``reduce`` (e.g. an all-reduce over processes that each
        hold a share of the batches) receives ``[value, *gradient]`` as tensors and
        returns their sums; it is the one place where several processes meet. For an
        objective shared by ranks (:attr:`ranks`), each process takes its share of the
        data set (or of the ``batches`` given, the same on every rank) and ``reduce``
        defaults to their all-reduce.

        >>> import torch
        >>> from torch import nn
        >>> from lossmap.landscape import Landscape
        >>> X, y = torch.ones(4, 1), torch.zeros(4, 1)
        >>> land = Landscape(nn.Linear(1, 1, bias=False), nn.MSELoss(), data=(X, y))
        >>> with torch.no_grad():
        ...     land.at({"weight": torch.tensor([[3.0]])}).value_and_grad()[1]["weight"]
        tensor([[6.]])
        """
        value = 0.0
        grad: V.Vector | None = None
        for term, g in self.gradients(
            point, dataset=dataset, batches=batches, create_graph=create_graph
        ):
            value += float(term.detach())
            grad = g if grad is None else {k: grad[k] + g[k] for k in grad}
        shared = self.ranks is not None
        if grad is None and shared:  # this rank's share is empty; the others' are not
            grad = {k: torch.zeros_like(t) for k, t in self._params0.items()}
        if grad is None:
            raise ValueError("the data set yields no batches: no samples to take a gradient over")
        if reduce is None and shared:
            assert self.ranks is not None
            reduce = self.ranks.all_sum
        if reduce is not None:
            parts = reduce([torch.tensor(value, dtype=torch.float64), *grad.values()])
            value, grad = float(parts[0]), dict(zip(grad, parts[1:], strict=True))
        return value, grad
