"""Data sets as the rest of lossmap sees them: batches, their sizes, and the device.

A data set is held on the device when it fits (``cache_bytes``), otherwise streamed
from its loader once per pass. Every loop over data in lossmap goes through
:class:`DataSet` iteration; the loss at a point is the exact mean over samples, so
each batch is weighted by :func:`batch_size`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Batch = Any  # a tuple/list (inputs..., target), or a dict of tensors

__all__ = [
    "Batch",
    "DataSet",
    "available_memory",
    "batch_size",
    "make_dataset",
    "nbytes",
    "to_device",
    "total_memory",
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


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor in it (nested tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


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
    """One named data set: batches held on the device, or a loader streamed per pass."""

    name: str
    batches: list[Batch] | None = None
    loader: Iterable[Batch] | None = None
    size: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

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
