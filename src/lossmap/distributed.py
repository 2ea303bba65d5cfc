"""Several processes, one result: lossmap under ``torchrun`` (``torch.distributed``).

Li et al. (2018) spread the 2,601 points of a ResNet-56 plane over GPUs and hosts with
MPI; lossmap does the same on the engine PyTorch users already run. A landscape built
inside an initialised process group of more than one process shares its work in one of
two ways (:attr:`Ranks.mode`):

- ``"points"`` (the default): the engine's chunks of points are dealt round-robin to
  the ranks, each rank evaluates its chunks on all the data, and every rank receives
  every row (rank 0 journals and writes them). The chunks are those of a single
  process, so the values are the single process's bit for bit, whatever the number of
  ranks.
- ``"data"``: every rank evaluates every point on its *share* of each data set (a
  contiguous range of samples, :func:`share_range`: every sample exactly once, shares
  differing by at most one sample; a streamed loader is dealt batch by batch), and the
  per-point sums (and sample or token counts) are all-reduced: the exact data-set mean,
  equal to a single process's up to rounding (the sums are grouped differently).

Derivatives always share the data, in both modes: a gradient or a Hessian-vector
product is taken at one point, each rank over its share, then summed with one
all-reduce per product (the ``reduce`` hook of the derivative core,
:meth:`lossmap.objective.Objective.value_and_grad`). The algorithms around the
products (Lanczos, power iteration, Hutchinson and Hutch++, spectral density, sharpness
ascent, gradient descent) run in lockstep on every rank: the same seeds and the same
reduced products (an all-reduce hands every rank the same bytes) give every rank the
same iterates, with no broadcast. Anything that loops over data outside the derivative
core and the engine (BatchNorm statistics of a path) runs whole on every rank:
correct, only not shared.

A rank that dies makes the others' next collective fail (the gloo and NCCL backends
notice a closed connection) or time out after the process group's ``timeout``: the
survivors raise :class:`RankFailure`, one line naming the rank and what to do; the
journal holds every finished chunk.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "MODES",
    "RankFailure",
    "dealt_chunk",
    "Ranks",
    "detect",
    "init",
    "share_range",
]

MODES = ("points", "data")
"""How ranks share the evaluation of points (derivatives always share the data)."""

DEFAULT_TIMEOUT = 600.0
T = TypeVar("T")


class RankFailure(RuntimeError):
    """A collective failed: another rank died, or did not answer within the timeout."""


def share_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The samples ``[lo, hi)`` of rank ``rank`` out of ``world``: contiguous, every
    sample of ``0..n-1`` in exactly one share, the first ``n % world`` shares one longer
    (as ``DistributedSampler`` without padding or shuffling).

    >>> [share_range(10, r, 4) for r in range(4)]
    [(0, 3), (3, 6), (6, 8), (8, 10)]
    >>> share_range(1, 1, 2)   # more ranks than samples: an empty share
    (1, 1)
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"rank must be in [0, world) and world >= 1, got rank={rank}, world={world}"
        )
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


ROUNDS_PER_RANK = 8
"""Points mode deals at least this many chunks to each rank where the grid allows, so
that no rank idles while another finishes a long last chunk: with 4, a 7 × 7 plane was
7 chunks of 7 points, 28 points for one rank and 21 for the other (at best 87.5 %
parallel efficiency; 84 % measured); with 8 it is 25 and 24."""


def dealt_chunk(chunk: int, n: int, world: int) -> int:
    """The chunk size for ``n`` points dealt to ``world`` ranks: ``chunk`` (what one
    process would take), made small enough that each rank gets
    :data:`ROUNDS_PER_RANK` chunks. A given ``chunk_size`` is never changed: a single
    process with the same one computes the same chunks, bit for bit.

    >>> dealt_chunk(64, 441, 2), dealt_chunk(64, 49, 2), dealt_chunk(3, 49, 2)
    (28, 4, 3)
    """
    return max(1, min(chunk, -(-n // (ROUNDS_PER_RANK * world))))


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _group_ready() -> bool:
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of the default process group, and how they
    share work (``mode``: one of :data:`MODES`). Every collective goes through here,
    so that a failed one becomes a :class:`RankFailure`.
    """

    rank: int
    world: int
    mode: str = "points"
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that journals and writes."""
        return self.rank == 0

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (RuntimeError, ValueError) as e:  # gloo/NCCL errors are RuntimeErrors
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            limit = f"{self.timeout:g} s" if self.timeout else "the process group's timeout"
            raise RankFailure(
                f"rank {self.rank} of {self.world}: {what} failed: another rank died or did "
                f"not answer within {limit} ({first}); finished chunks are journaled: run "
                "the same command again to resume"
            ) from None

    def all_sum(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The element-wise sums of ``tensors`` over the ranks, every rank receiving
        the same: one all-reduce per dtype and device (the tensors are flattened into
        one buffer), so a Hessian-vector product costs one all-reduce."""
        dist = _dist()
        out: list[Tensor] = [t for t in tensors]
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((t.dtype, t.device), []).append(i)
        for idx in groups.values():
            flat = torch.cat([tensors[i].detach().reshape(-1) for i in idx])
            self._call("an all-reduce", functools.partial(dist.all_reduce, flat))
            at = 0
            for i in idx:
                n = tensors[i].numel()
                out[i] = flat[at : at + n].view_as(tensors[i])
                at += n
        return out

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        dist = _dist()
        got: list[Any] = [None] * self.world
        self._call("a gather", lambda: dist.all_gather_object(got, obj))
        return got

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` (picklable), on every rank."""
        dist = _dist()
        box: list[Any] = [obj if self.main else None]
        self._call("a broadcast", lambda: dist.broadcast_object_list(box, src=0))
        return box[0]  # type: ignore[no-any-return]

    def check_same(self, what: str, value: object) -> None:
        """Raise ValueError (the same on every rank) unless every rank holds the same
        ``value``: e.g. a hash of θ0, which a model initialised without a seed breaks."""
        values = self.all_gather(value)
        odd = [r for r, v in enumerate(values) if v != values[0]]
        if odd:
            raise ValueError(
                f"{what} differs between rank 0 and rank(s) {odd}: every rank must build the "
                "same model and data (seed the initialisation, or load a checkpoint)"
            )


def _finish() -> None:
    dist = _dist()
    if dist.is_initialized():
        dist.destroy_process_group()


def detect(mode: str = "points") -> Ranks | None:
    """The :class:`Ranks` of the default process group when one of more than one
    process is initialised, else ``None`` (one process: nothing is shared)."""
    if not _group_ready():
        return None
    dist = _dist()
    return Ranks(dist.get_rank(), dist.get_world_size(), mode)


def init(
    mode: str = "points",
    *,
    backend: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    device: str | torch.device | None = None,
) -> Ranks | None:
    """Join the processes ``torchrun`` started (or an already initialised group) and
    return this process's :class:`Ranks`; ``None`` outside ``torchrun`` (no
    ``WORLD_SIZE`` in the environment, or a world of one).

    Args:
        mode: ``"points"`` or ``"data"`` (see the module's docstring).
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (CUDA); by default from ``device``.
        timeout: seconds a collective waits for the other ranks before it fails: the
            longest a dead rank can keep the others waiting.
        device: the device this rank computes on (``"cuda"`` means ``cuda:LOCAL_RANK``).

    Raises:
        ValueError: an unknown mode, or a non-positive timeout.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    dist = _dist()
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if backend is None:
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":  # this rank's GPU: the one named, else cuda:LOCAL_RANK
            index = dev.index if dev.index is not None else os.environ.get("LOCAL_RANK", "0")
            torch.cuda.set_device(int(index))
        limit = datetime.timedelta(seconds=timeout)
        # Each attempt of a job torchrun restarts (--max-restarts) meets under its own
        # prefix: the keys a dead attempt left in a reused store must not be read.
        store, rank, world = next(dist.rendezvous("env://", timeout=limit))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"lossmap/attempt-{attempt}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=limit)
        # The group this call made is ended at exit (gloo can abort a process that
        # exits with it alive: "terminate called without an active exception").
        atexit.register(_finish)
        return Ranks(dist.get_rank(), dist.get_world_size(), mode, timeout)
    return detect(mode)  # the caller's group: its own timeout
