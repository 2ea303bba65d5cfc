"""Buffers kept across chunks of points, so the engine's hot loops allocate nothing."""

from __future__ import annotations

from collections.abc import Hashable

from torch import Tensor

__all__ = ["Scratch"]


class Scratch:
    """Tensors kept across chunks, one per ``key``: a request for fewer rows than the
    one held gets a slice of it, so the run's last, shorter chunk allocates nothing. On
    CPU, fresh multi-MB allocations per chunk (page faults on first touch) cost as much
    as the arithmetic.

    >>> import torch
    >>> s = Scratch()
    >>> a = s.get("h", (4, 3), torch.zeros(1))
    >>> s.get("h", (2, 3), torch.zeros(1)).data_ptr() == a.data_ptr()
    True
    """

    def __init__(self) -> None:
        self._held: dict[Hashable, Tensor] = {}

    def get(self, key: Hashable, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A ``shape`` tensor of ``like``'s dtype and device (its contents undefined)."""
        buf = self._held.get(key)
        if (
            buf is None
            or buf.shape[1:] != shape[1:]
            or buf.shape[0] < shape[0]
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = self._held[key] = like.new_empty(shape)
        return buf[: shape[0]]
