"""The Landscape: a model, a loss and data sets, seen as a function of the parameters.

``Landscape(model, criterion, data)`` snapshots the trained point θ0 (the trainable
parameters) and the model's buffers, moves the data to the device once, and evaluates
the loss (and metrics) at any other point with :func:`torch.func.functional_call`, so
the caller's model is never written to.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lossmap import vectors as V

Batch = Any  # a tuple/list (inputs..., target), or a dict of tensors
LossFn = Callable[[Callable[..., Any], Batch], Tensor]
Metric = Callable[..., Tensor]

__all__ = ["Batch", "DataSet", "Landscape", "accuracy", "binary_accuracy"]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = (*_NORM_TYPES, nn.RMSNorm)


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


def batch_size(batch: Batch) -> int:
    """Number of samples in a batch: the leading size of its first tensor."""
    items: Iterable[Any]
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    items = batch.values() if isinstance(batch, Mapping) else batch
    for item in items:
        if isinstance(item, Tensor) and item.ndim > 0:
            return int(item.shape[0])
    raise TypeError(
        f"cannot find the batch size of a {type(batch).__name__}: a batch must be a tuple "
        "(inputs..., target) or a dict holding at least one tensor with a batch dimension"
    )


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _nbytes(batch: Batch) -> int:
    if isinstance(batch, Tensor):
        return batch.numel() * batch.element_size()
    if isinstance(batch, Mapping):
        return sum(_nbytes(v) for v in batch.values())
    if isinstance(batch, list | tuple):
        return sum(_nbytes(v) for v in batch)
    return 0


def available_memory(device: torch.device) -> int:
    """Bytes of free memory on ``device`` (a conservative guess where unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**31


def total_memory(device: torch.device) -> int:
    """Bytes of memory on ``device`` in all (a conservative guess where unknown): unlike
    free memory, the same on every run, so sizes derived from it are too."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**33


@dataclass
class DataSet:
    """One named data set: batches held on the device, or a loader streamed per pass."""

    name: str
    batches: list[Batch] | None = None
    loader: Iterable[Batch] | None = None
    size: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def in_memory(self) -> bool:
        return self.batches is not None

    def __iter__(self) -> Iterator[Batch]:
        if self.batches is not None:
            yield from self.batches
            return
        assert self.loader is not None
        for b in self.loader:
            yield _to_device(b, self.device)


def _make_dataset(name: str, data: object, device: torch.device, cache_bytes: int) -> DataSet:
    if isinstance(data, tuple | list) and data and all(isinstance(t, Tensor) for t in data):
        n = {int(t.shape[0]) for t in data if t.ndim > 0}
        if len(n) != 1:
            raise ValueError(
                f"data set {name!r}: tensors in (X, y) must share their first dimension, "
                f"got shapes {[tuple(t.shape) for t in data]}"
            )
        size = n.pop()
        if size == 0:
            raise ValueError(f"data set {name!r} is empty (0 samples); pass at least one sample")
        return DataSet(name, [_to_device(tuple(data), device)], None, size, device)
    if isinstance(data, Tensor):
        raise TypeError(
            f"data set {name!r} is a single tensor; pass a tuple (X, y), a DataLoader, "
            "or a loss=callable(model, batch) with batches it understands"
        )
    if not isinstance(data, Iterable) or isinstance(data, str | bytes | Mapping):
        raise TypeError(
            f"data set {name!r} must be a tuple of tensors (X, y), a DataLoader or an iterable "
            f"of batches, got {type(data).__name__}"
        )
    # A loader: hold it on the device if it fits, otherwise stream it once per chunk.
    held: list[Batch] = []
    total = 0
    count = 0
    fits = True
    for b in data:
        count += batch_size(b)
        total += _nbytes(b)
        if total > cache_bytes:
            fits = False
            break
        held.append(_to_device(b, device))
    if fits:
        if count == 0:
            raise ValueError(f"data set {name!r} is empty (its loader yields no samples)")
        return DataSet(name, held, None, count, device)
    n_total: int | None = len(data.dataset) if hasattr(data, "dataset") else None
    return DataSet(name, None, data, n_total, device)


@contextlib.contextmanager
def _mode(module: nn.Module, train: bool) -> Iterator[None]:
    """Set train/eval mode for the duration, then restore every submodule's own flag."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.train(train)
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class _Caller:
    """Stands in for the model inside a custom ``loss(model, batch)``: calls it at θ."""

    def __init__(self, module: nn.Module, tensors: dict[str, Tensor]) -> None:
        self._module = module
        self._tensors = tensors

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self._module, self._tensors, args, kwargs)


class Landscape:
    """A model, a loss and data: the loss (and metrics) as a function of the parameters.

    Args:
        model: any ``nn.Module``; its trainable parameters at construction are θ0.
        criterion: ``criterion(model(*inputs), target)`` for batches ``(inputs..., target)``;
            use ``reduction="mean"`` (the default) or ``"sum"``.
        data: ``(X, y)`` tensors, a ``DataLoader`` / iterable of batches, or a dict of
            named data sets (``{"train": ..., "test": ...}``; the first is the default).
        loss: instead of ``criterion``, ``loss(model, batch) -> mean loss over the batch``
            (e.g. ``lambda m, b: m(**b).loss``).
        metrics: ``{name: fn}``, extra per-batch means: ``fn(output, target)`` with a
            criterion, ``fn(model, batch)`` with ``loss``. Defaults to accuracy for
            cross-entropy / NLL / BCE-with-logits criteria; ``{}`` turns it off.
        device: where to evaluate (``"cpu"``, ``"cuda"``); defaults to the model's.
            If it differs from the model's device, a copy of the model is moved there.
        train_mode: evaluate in training mode (BatchNorm batch statistics, dropout).
        cache_bytes: loaders whose data fit in this many bytes are held on the device.

    The loss at a point is the exact data-set mean: per-batch means are weighted by
    batch size, so an uneven last batch does not bias it.

    >>> import torch
    >>> from torch import nn
    >>> X, y = torch.randn(10, 3), torch.randn(10, 1)
    >>> land = Landscape(nn.Linear(3, 1), nn.MSELoss(), data=(X, y))
    >>> abs(land.loss() - float(nn.MSELoss()(land.model(X).detach(), y))) < 1e-6
    True
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
                "loss=callable(model, batch) -> mean loss"
            )
        if data is None:
            raise ValueError("data is required: (X, y) tensors, a DataLoader, or a dict of them")
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
            str(k): _make_dataset(str(k), v, dev, budget) for k, v in named.items()
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

    def norm_parameter_names(self) -> set[str]:
        """Names of the trainable parameters that belong to normalisation layers."""
        out: set[str] = set()
        for mname, m in self.model.named_modules():
            if isinstance(m, _NORM_TYPES):
                for pname, _ in m.named_parameters(recurse=False):
                    full = f"{mname}.{pname}" if mname else pname
                    if full in self._params0:
                        out.add(full)
        return out

    def at(self, state: Mapping[str, Tensor], *, strict: bool = True) -> Landscape:
        """The same landscape with θ0 (and any buffers) taken from a state dict.

        Raises:
            ValueError: missing/unexpected keys or shape mismatches (the first are
                listed), or non-finite values in the state.
        """
        state = V.check_vector(state, name="state dict")
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

    # ------------------------------------------------------------- per batch
    def mode(self) -> contextlib.AbstractContextManager[None]:
        """Context manager: the model in eval (or train) mode, restored afterwards."""
        return _mode(self.model, self.train_mode)

    def batch_stats(
        self, params: Mapping[str, Tensor], batch: Batch, *, metrics: bool = True
    ) -> Tensor:
        """Per-batch *sums* of ``[loss, *metrics]`` at ``params`` (a 1-D tensor).

        Summing these over batches and dividing by the data-set size gives exact means.
        Call inside :meth:`mode`. Works under ``torch.vmap`` over ``params``.
        ``metrics=False`` computes the loss alone (``[loss]``), e.g. for derivatives.
        """
        tensors = {**self._fixed_for(params), **params}
        n = batch_size(batch)
        if self.loss_fn is not None:
            caller = _Caller(self.model, tensors)
            vals = [self.loss_fn(caller, batch)]
            if metrics:
                vals += [m(caller, batch) for m in self.metrics.values()]
            return torch.stack([torch.as_tensor(v).reshape(()) for v in vals]) * n
        if not isinstance(batch, tuple | list) or len(batch) < 2:
            raise TypeError(
                "with a criterion, each batch must be a tuple (inputs..., target), got "
                f"{type(batch).__name__}; for other batches pass loss=callable(model, batch)"
            )
        out = functional_call(self.model, tensors, tuple(batch[:-1]))
        return self.output_stats(out, batch[-1], n, metrics=metrics)

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

    @property
    def classes_first_ok(self) -> bool:
        """Whether :meth:`batched_output_stats` takes logits laid out ``[P, C, N]``."""
        return self._fast_ce

    def batched_output_stats(
        self,
        out: Tensor,
        target: Tensor,
        n: int,
        *,
        classes_first: bool = False,
        owned: bool = False,
    ) -> Tensor | None:
        """:meth:`output_stats` for ``out: [P, *output]`` (P points at once), ``[P, S]``.

        Known criteria with their default metrics only (cross-entropy, BCE-with-logits,
        MSE, with mean or sum reduction); ``None`` otherwise (the caller then vmaps
        :meth:`output_stats`, which is much slower for these losses on CPU).
        ``classes_first``: cross-entropy logits are ``[P, C, N]``; reducing over the
        class dimension then runs along contiguous samples, several times faster on CPU
        when there are few classes. ``owned``: ``out`` is a scratch tensor the caller
        gives up, which cross-entropy then overwrites instead of allocating its like.
        """
        crit = self.criterion
        reduction = getattr(crit, "reduction", None)
        if reduction not in ("mean", "sum"):
            return None
        dims = tuple(range(1, out.ndim))
        if self._fast_ce and target.dtype in _INT_TYPES and target.ndim == 1 and out.ndim == 3:
            cdim = 1 if classes_first else 2
            p, c = out.shape[0], out.shape[cdim]
            top = out.amax(dim=cdim, keepdim=True)
            onehot = torch.nn.functional.one_hot(target, c).to(out.dtype)  # [N, C]
            if classes_first:
                onehot = onehot.t()
            onehot = onehot.reshape(-1)
            index = target.view(1, 1, -1) if classes_first else target.view(1, -1, 1)
            full = [-1 if d == cdim else s for d, s in enumerate(out.shape)]
            if self.metrics:
                # Correct iff the target is the arg-max, ties going to the first maximum
                # as argmax does. Comparisons against the maximum already computed cost a
                # fraction of an argmax over the (few) classes, slow on CPU.
                ismax = out == top
                if int(ismax.sum(dim=cdim).amax()) <= 1:
                    # At most one maximum per sample (no ties): correct iff it is the
                    # target's (a sample with NaN logits has none, and is not correct).
                    correct = ismax.reshape(p, -1).to(out.dtype) @ onehot
                else:
                    # Ties: also no lower class index may reach the maximum.
                    picked = out.gather(cdim, index.expand(*full))
                    classes = torch.arange(c, device=out.device)
                    lower = (
                        classes.view(1, -1, 1) < target.view(1, 1, -1)
                        if classes_first
                        else classes.view(1, 1, -1) < target.view(1, -1, 1)
                    )
                    earlier = (ismax & lower).any(dim=cdim)
                    hit = (picked.squeeze(cdim) == top.squeeze(cdim)) & ~earlier
                    correct = hit.to(out.dtype).sum(dim=-1)
            # With s = out − max (in place when the caller gave ``out`` up), the loss is
            # Σ_n log Σ_c exp s[c, n] − Σ_n s[y_n, n]: two sums of small terms near a
            # minimum (no cancellation), the second one matrix-vector product with the
            # targets' one-hot mask, a fraction of a gather's cost on CPU.
            shifted = out.sub_(top) if owned else out - top
            picked_sum = shifted.reshape(p, -1) @ onehot
            if bool(picked_sum.isnan().any()):
                # 0 · −inf is NaN: a point with a −inf logit outside the targets (its loss
                # may be finite) takes the gather.
                picked_sum = shifted.gather(cdim, index.expand(*full)).sum(dim=(1, 2))
            lse_sum = shifted.exp_().sum(dim=cdim).log_().sum(dim=-1)
            cols = [lse_sum - picked_sum]
            if self.metrics:
                cols.append(correct)
            return torch.stack(cols, dim=1)
        if type(crit) is nn.BCEWithLogitsLoss and crit.weight is None and crit.pos_weight is None:
            if not (self.metrics == {} or self.metrics == {"accuracy": binary_accuracy}):
                return None
            t = target.expand_as(out)
            # BCE(x, t) = softplus(x) − t x: one elementwise pass and a mat-vec for the
            # t x term (threshold 50: above it log(1 + eˣ) = x to double precision).
            flat = out.reshape(out.shape[0], -1)
            tvec = t[0].reshape(-1).to(out.dtype)
            sums = torch.nn.functional.softplus(flat, threshold=50).sum(dim=1) - flat @ tvec
            cols = [sums * (n / flat.shape[1]) if reduction == "mean" else sums]
            if self.metrics:
                cols.append(((out > 0) == (t > 0.5)).to(out.dtype).mean(dim=dims) * n)
            return torch.stack(cols, dim=1)
        if type(crit) is nn.MSELoss and not self.metrics:
            sq = (out - target.expand_as(out)) ** 2
            return (sq.mean(dim=dims) * n if reduction == "mean" else sq.sum(dim=dims)).unsqueeze(1)
        return None

    def _fixed_for(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        fixed = self._fixed0
        if self.train_mode and fixed:
            # Train-mode BatchNorm updates running statistics in place: hand it copies.
            return {k: t.clone() for k, t in fixed.items()}
        return fixed

    # ----------------------------------------------------------- evaluation
    def loss(
        self, point: Mapping[str, Tensor] | None = None, *, dataset: str | None = None
    ) -> float:
        """Mean loss over the whole data set at ``point`` (θ0 by default)."""
        ds = dataset or self.default_dataset
        vals = self.evaluate([point if point is not None else self._params0], datasets=[ds])
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
        from lossmap.evaluate import Explicit, run

        pts = [V.check_vector(p, self._params0, name="point") for p in points]
        res = run(self, Explicit(pts), datasets=datasets, strategy=strategy)
        return res.values_with_aliases()

    # ---------------------------------------------------------- derivatives
    def _full_loss(self) -> Callable[[dict[str, Tensor], Batch, int], Tensor]:
        def f(params: dict[str, Tensor], batch: Batch, total: int) -> Tensor:
            return self.batch_stats(params, batch, metrics=False)[0] / total

        return f

    def _dataset_size(self, ds: DataSet) -> int:
        if ds.size is None:
            ds.size = sum(batch_size(b) for b in ds)
        return ds.size

    def gradient(
        self, point: Mapping[str, Tensor] | None = None, *, dataset: str | None = None
    ) -> V.Vector:
        """Gradient of the data-set mean loss at ``point`` (θ0 by default)."""
        from torch.func import grad

        p = (
            V.check_vector(point, self._params0, name="point")
            if point is not None
            else self._params0
        )
        ds = self.datasets[dataset or self.default_dataset]
        n = self._dataset_size(ds)
        g = grad(self._full_loss())
        out = V.zeros_like(p)
        with self.mode():
            for b in ds:
                gb = g({k: t.detach() for k, t in p.items()}, b, n)
                out = {k: out[k] + gb[k] for k in out}
        return out

    def hvp(
        self,
        point: Mapping[str, Tensor] | None,
        v: Mapping[str, Tensor],
        *,
        dataset: str | None = None,
    ) -> V.Vector:
        """Hessian-vector product ``H(point) v`` of the data-set mean loss (forward-over-reverse)."""
        from torch.func import grad, jvp

        p = (
            V.check_vector(point, self._params0, name="point")
            if point is not None
            else self._params0
        )
        v = V.check_vector(v, self._params0, name="v")
        ds = self.datasets[dataset or self.default_dataset]
        n = self._dataset_size(ds)
        g = grad(self._full_loss())
        out = V.zeros_like(p)
        p = {k: t.detach() for k, t in p.items()}
        with self.mode():
            for b in ds:
                hb = jvp(lambda q, b=b: g(q, b, n), (p,), (dict(v),))[1]
                out = {k: out[k] + hb[k] for k in out}
        return out

    def __repr__(self) -> str:
        sets = ", ".join(
            f"{k}: {ds.size if ds.size is not None else '?'}" for k, ds in self.datasets.items()
        )
        return (
            f"Landscape({type(self.model).__name__}, {self.num_parameters:,} parameters, "
            f"data {{{sets}}}, device={self.device})"
        )
