"""Data sets as the rest of lossmap sees them: batches, their sizes, and the device.

A data set is held on the device when it fits (``cache_bytes``), otherwise streamed
from its loader once per pass. Every loop over data in lossmap goes through
:class:`DataSet` iteration; the loss at a point is the exact mean over samples, so
each batch is weighted by :func:`batch_size`, or by the count a loss callable returns
with its sum (tokens of padded sequences: :attr:`DataSet.totals`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lossmap.distributed import share_range

Batch = Any  # a tuple/list (inputs..., target), or a dict of tensors

__all__ = [
    "Batch",
    "DataSet",
    "available_memory",
    "batch_size",
    "count_weights",
    "form_changed",
    "make_dataset",
    "nbytes",
    "pair_of",
    "slice_batch",
    "to_device",
    "total_memory",
    "weighted_sums",
]


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


# ------------------------------------------------------------- batch weights
# A loss callable returns the batch's mean (weighted by the batch size) or a pair
# (sum, count): the loss summed over the batch and its number of tokens (any weight),
# so that the data-set mean Σ_b sum_b / Σ_b count_b is exact per token.
_PAIR = 2


def pair_of(value: object, what: str) -> tuple[Any, Any] | None:
    """``(sum, count)`` where a callable returned a pair, ``None`` for a plain mean.

    Raises:
        TypeError: a tuple or list that is not a pair.
    """
    if not isinstance(value, tuple | list):
        return None
    if len(value) != _PAIR:
        raise TypeError(
            f"{what} must return a mean (a scalar tensor) or a (sum, count) pair, "
            f"got a {type(value).__name__} of {len(value)}"
        )
    return value[0], value[1]


def form_changed(what: str) -> str:
    """The message for a callable that returned a pair on one batch, a mean on another."""
    return (
        f"{what} returned a (sum, count) pair on one batch and a plain mean on another; "
        "return the same form on every batch"
    )


def _weight_of(value: object, pair: bool, n: int, what: str) -> float:
    """The weight of one batch's statistic: its count (checked), or the batch size ``n``
    for a plain mean."""
    got = pair_of(value, what)
    if (got is not None) != pair:
        raise TypeError(form_changed(what))
    if got is None:
        return float(n)
    total, count = torch.as_tensor(got[0]), torch.as_tensor(got[1])
    if total.numel() != 1 or count.numel() != 1:
        raise ValueError(
            f"{what} returned (sum, count) of shapes {list(total.shape)}, {list(count.shape)}; "
            "both must be scalars: (loss summed over the batch, number of tokens)"
        )
    c = float(count)
    if not 0 <= c < float("inf"):
        raise ValueError(f"{what} returned the count {c}; a count must be finite and >= 0")
    return c


def count_weights(
    batches: Iterable[Batch],
    returns: Callable[[Batch], list[Any]],
    names: list[str],
    forms: tuple[bool, ...] | None = None,
) -> tuple[Tensor, int, tuple[bool, ...]]:
    """Per statistic, the weights summed over ``batches`` (float64 ``[S]``: counts of
    pairs, batch sizes of plain means), the number of samples, and the forms (which
    statistics are pairs; seen on the first batch when ``forms`` is ``None``).

    ``returns(batch)`` gives what the callables called ``names`` return on a batch.

    Raises:
        TypeError / ValueError: a malformed pair, a return that changed form, a sum or
            count that is not a scalar, a negative or non-finite count.
    """
    sums: list[float] = []
    samples = 0
    for b in batches:
        n = batch_size(b)
        samples += n
        vals = returns(b)
        if forms is None:
            forms = tuple(pair_of(v, w) is not None for v, w in zip(vals, names, strict=True))
        w = [_weight_of(v, forms[j], n, names[j]) for j, v in enumerate(vals)]
        sums = w if not sums else [s + x for s, x in zip(sums, w, strict=True)]
    return torch.tensor(sums, dtype=torch.float64), samples, forms or ()


def weighted_sums(vals: list[Any], forms: tuple[bool, ...], n: int) -> tuple[Tensor, Tensor]:
    """Per-batch sums and counts ``([S], [S])`` of ``vals``, the returns of the loss and
    metric callables (pairs or per-batch means, as ``forms`` says; a mean's sum is the
    mean times the batch size ``n``, its count ``n``); a sum whose count is 0 is 0, so a
    batch without tokens adds nothing (not NaN). Works under ``torch.vmap``.

    Raises:
        TypeError: a return that is not of the form detected.
    """
    sums, counts = [], []
    for v, pair in zip(vals, forms, strict=False):
        got = pair_of(v, "a loss or metric callable")
        if (got is not None) != pair:
            raise TypeError(form_changed("a loss or metric callable"))
        if got is None:
            total = torch.as_tensor(v).reshape(()) * n
            count = torch.full((), float(n), dtype=total.dtype, device=total.device)
        else:
            total = torch.as_tensor(got[0]).reshape(())
            count = torch.as_tensor(got[1]).to(total.dtype).reshape(())
        sums.append(total)
        counts.append(count)
    s, c = torch.stack(sums), torch.stack(counts)
    return torch.where(c > 0, s, torch.zeros_like(s)), c


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor in it (nested tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def slice_batch(batch: Batch, lo: int, hi: int) -> Batch:
    """Samples ``lo:hi`` of a batch: every tensor whose leading size is the batch's is
    sliced (a view), anything else (a scalar, a per-batch tensor) is kept as it is."""
    n = batch_size(batch)

    def cut(x: Any) -> Any:
        if isinstance(x, Tensor):
            return x[lo:hi] if x.ndim > 0 and x.shape[0] == n else x
        if isinstance(x, Mapping):
            return {k: cut(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return type(x)(cut(v) for v in x)
        return x

    return cut(batch)


def nbytes(batch: Batch) -> int:
    """Bytes held by the tensors in a batch."""
    if isinstance(batch, Tensor):
        return batch.numel() * batch.element_size()
    if isinstance(batch, Mapping):
        return sum(nbytes(v) for v in batch.values())
    if isinstance(batch, list | tuple):
        return sum(nbytes(v) for v in batch)
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
    """One named data set: batches held on the device, or a loader streamed per pass.

    ``totals`` caches, for a loss whose callable returns ``(sum, count)`` pairs, the
    counts summed over the data set per statistic (float64, ``[1 + n_metrics]``): the
    denominators of exact means, counted once (see ``Objective.weight_totals``).
    """

    name: str
    batches: list[Batch] | None = None
    loader: Iterable[Batch] | None = None
    size: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    totals: Tensor | None = None
    _shares: dict[tuple[int, int, int | None], list[Batch]] = field(
        default_factory=dict, repr=False
    )

    @property
    def in_memory(self) -> bool:
        return self.batches is not None

    def count(self) -> int:
        """Number of samples (counted in one pass, once, for a loader without ``len``)."""
        if self.size is None:
            self.size = sum(batch_size(b) for b in self)
        return self.size

    def __iter__(self) -> Iterator[Batch]:
        if self.batches is not None:
            yield from self.batches
            return
        assert self.loader is not None
        for b in self.loader:
            yield to_device(b, self.device)

    def share(self, rank: int = 0, world: int = 1, *, most: int | None = None) -> Iterable[Batch]:
        """The batches of rank ``rank`` out of ``world`` (see :mod:`lossmap.distributed`):
        held data, the samples of :func:`~lossmap.distributed.share_range` cut out of
        the held batches (views, made once: the engine caches work per batch object),
        each cut again into pieces of at most ``most`` samples if given; a streamed
        loader, every ``world``-th batch from the ``rank``-th (the loader must yield the
        same batches in the same order on every rank: no shuffling; never cut)."""
        if world == 1 and most is None:
            return self
        if self.batches is None:
            return self._dealt(rank, world)
        key = (rank, world, most)
        if key not in self._shares:
            lo, hi = share_range(self.count(), rank, world)
            cut, at = [], 0
            for b in self.batches:
                n = batch_size(b)
                a, z = max(lo - at, 0), min(hi - at, n)
                step = max(1, z - a if most is None else most)
                for s in range(a, z, step):
                    e = min(s + step, z)
                    cut.append(b if (s, e) == (0, n) else slice_batch(b, s, e))
                at += n
            self._shares[key] = cut
        return self._shares[key]

    def _dealt(self, rank: int, world: int) -> Iterator[Batch]:
        assert self.loader is not None
        for i, b in enumerate(self.loader):
            if i % world == rank:
                yield to_device(b, self.device)


def make_dataset(name: str, data: object, device: torch.device, cache_bytes: int) -> DataSet:
    """A :class:`DataSet` from ``(X, y)`` tensors or a loader: held on ``device`` when
    its batches fit in ``cache_bytes``, otherwise streamed.

    Raises:
        ValueError / TypeError: empty data, tensors of different lengths, a single
            tensor, or something that is not an iterable of batches.
    """
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
        return DataSet(name, [to_device(tuple(data), device)], None, size, device)
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
        total += nbytes(b)
        if total > cache_bytes:
            fits = False
            break
        held.append(to_device(b, device))
    if fits:
        if count == 0:
            raise ValueError(f"data set {name!r} is empty (its loader yields no samples)")
        return DataSet(name, held, None, count, device)
    n_total: int | None = len(data.dataset) if hasattr(data, "dataset") else None
    return DataSet(name, None, data, n_total, device)
