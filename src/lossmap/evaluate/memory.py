"""Chunk sizing: how many points the engine evaluates per pass over the data.

Sizes come from the model's structure, the data's sizes and the device's *total*
memory, never a clock, and free memory only where it is short (a cap, reported): a
batched strategy's rounding can depend on how many points share a product, so two runs
of one command must cut the same chunks. Every constant below is a measured or chosen
bound; change one and chunk sizes (and so the last bits of batched values) change with
it.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lossmap import devices
from lossmap.data import Batch, batch_size, total_memory
from lossmap.evaluate.kernels import FLAT_NDIM, affine_plan
from lossmap.objective import Objective

__all__ = [
    "OutputSizes",
    "batch_and_param_bytes",
    "cpu_tile",
    "default_chunk_size",
    "memory_budget",
    "output_sizes",
    "vmap_chunk",
]

log = logging.getLogger("lossmap")

MAX_CHUNK_BYTES = 1 << 30
"""A chunk never plans for more than 1 GiB, whatever share of memory it may use."""

MAX_CHUNK_POINTS = 1024
"""The most points one batched call (vmap, or a tiled CPU chunk) handles."""

CPU_VMAP_CHUNK_BYTES = 1 << 26
"""On CPU, a vmap chunk whose activations fall out of cache gets slower per point:
its estimated bytes are kept near 64 MiB (big chunks for tiny models, small for big)."""

TILE_BYTES = 1 << 20
"""On CPU, the features-first path runs a chunk in tiles of points whose widest
activation fits in about this much cache (1 MiB): the same speed in steady state, a
few MB less fresh memory to fault in on a first run (costly on a VM), and the chunk's
output stays small."""

MIN_TILE_POINTS = 8
"""The fewest points a CPU tile holds, however wide its activations."""

TILED_CHUNK_BYTES = 1 << 26
"""A tiled CPU chunk's outputs and loss scratch: across the chunk a point holds only
its output and the loss's scratch, so chunks can be larger than vmap's (fewer passes)."""

PARAM_COPIES = 3
"""Copies of a point's parameters a batched chunk holds per point (the stacked point,
the scratch it is summed in, and what the strategy derives from it)."""

ACTIVATION_COPIES = 3
"""Copies of one forward pass's activations a vmap chunk holds per point."""

UNKNOWN_ACTIVATION_PARAM_COPIES = 4
"""Where activation sizes are unknown (streamed data), a point's activations are
guessed at this many copies of its parameters."""

TILED_OUTPUT_COPIES = 4
"""Copies of the model's output per sample a tiled chunk holds per point (the output
and the loss's scratch)."""

STREAMED_BATCH_GUESS = 256
"""The batch size assumed for data streamed from a loader (unknown until read)."""

LOOP_PARAMETER_BYTES = 4
"""Bytes per parameter the one-point strategies size their chunks with (float32,
whatever the dtype)."""

LOOP_PARAM_COPIES = 2
"""Copies of a point's parameters a one-point chunk holds per point."""

LOOP_CHUNK_POINTS = 64
"""Points per chunk of a one-point strategy on held data."""

LOOP_CHUNK_POINTS_STREAMED = 4096
"""Points per chunk of a one-point strategy on streamed data: many points per pass,
so the loader runs rarely."""

_MEASURE_SAMPLES = 2
PIECE_BYTES = 1 << 25
"""On CPU, a held batch whose forward pass writes more activations than this is
evaluated in pieces that do not: the activations then stay in cache. Measured on a
small ResNet (width 8) on one core: 0.10 ms per image in pieces of up to 128 images
(~25 MiB), 0.27 at 256 and 0.44 in one batch of 1,024."""
"""Samples of the first batch the activation sizes are measured on."""


class OutputSizes(NamedTuple):
    """Per sample: the bytes of all module outputs, the bytes of the model's output,
    and the number of dimensions of the first module's output."""

    activation_bytes: int
    output_bytes: int
    first_ndim: int


def memory_budget(land: Objective, fraction: float, info: dict[str, Any] | None = None) -> int:
    """Bytes a chunk may use: ``fraction`` of the device's total memory, at most
    :data:`MAX_CHUNK_BYTES`. Total, not free: free memory varies between runs, and chunk
    sizes must not (a batched strategy's rounding can depend on how many points share a
    product).

    Free memory only caps the budget where it is short (another process holds most of
    the device: :func:`lossmap.devices.chunk_budget`); the cap is then logged as a
    warning and recorded in ``info["memory_capped"]`` (``{"free": ..., "budget": ...}``,
    bytes), since the chunks, and the last bits of batched values, may differ from an
    uncapped run's."""
    budget = devices.chunk_budget(
        total=total_memory(land.device),
        free=devices.free_memory(land.device),
        fraction=fraction,
        most=MAX_CHUNK_BYTES,
    )
    if budget.capped is not None:
        log.warning(
            "only %.3g GiB of %s memory is free: chunks planned for %.3g GiB instead of "
            "%.3g GiB, so their values may differ in the last bits from a run on a "
            "freer device",
            budget.capped["free"] / 2**30,
            land.device,
            budget.bytes / 2**30,
            budget.capped["budget"] / 2**30,
        )
        if info is not None:
            info["memory_capped"] = budget.capped
    return budget.bytes


# Measured sizes, held only as long as the objective lives. A copy made by
# ``Objective.at`` measures again (same model and data: the same sizes).
_SIZES: weakref.WeakKeyDictionary[Objective, OutputSizes] = weakref.WeakKeyDictionary()


def output_sizes(land: Objective) -> OutputSizes | None:
    """:class:`OutputSizes`, measured with hooks on a forward pass over two samples
    (over the first batch with a custom loss, whose batches need not be sliceable), once
    per objective. ``None`` for streamed data."""
    cached = _SIZES.get(land)
    if cached is not None:
        return cached
    ds = next(iter(land.datasets.values()))
    if not ds.in_memory or not ds.batches:
        return None
    batch = ds.batches[0]
    small: Batch = batch
    if land.criterion is not None:
        if not isinstance(batch, tuple | list):
            return None
        small = tuple(
            t[:_MEASURE_SAMPLES] if isinstance(t, Tensor) and t.ndim > 0 else t for t in batch
        )
    outs: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            outs.append(out)

    handles = [m.register_forward_hook(hook) for m in land.model.modules()]
    try:
        with land.mode(), torch.inference_mode():
            land.batch_stats(land.theta0, small)
    finally:
        for h in handles:
            h.remove()
    if not outs:
        return None
    n = max(1, batch_size(small))
    total = sum(o.numel() * o.element_size() for o in outs)
    last = outs[-1]  # the model itself: its hook runs last
    first = next((o for o in outs if o is not last), last)
    sizes = OutputSizes(
        max(1, total // n), max(1, last.numel() * last.element_size() // n), first.ndim
    )
    _SIZES[land] = sizes
    return sizes


def batch_and_param_bytes(land: Objective) -> tuple[int, int]:
    """The largest batch of the first data set (:data:`STREAMED_BATCH_GUESS` when
    streamed) and the bytes of one point's parameters: what the chunk sizes scale with."""
    ds = next(iter(land.datasets.values()))
    biggest = (
        max((batch_size(b) for b in ds.batches), default=1)  # type: ignore[union-attr]
        if ds.in_memory
        else STREAMED_BATCH_GUESS
    )
    return biggest, land.num_parameters * next(iter(land.theta0.values())).element_size()


def vmap_chunk(land: Objective, n_points: int, budget: int) -> int:
    """Points per chunk of a many-points-per-call strategy."""
    sizes = output_sizes(land)
    per_sample = None if sizes is None else sizes.activation_bytes
    biggest, param_bytes = batch_and_param_bytes(land)
    activations = (
        biggest * per_sample * ACTIVATION_COPIES
        if per_sample
        else UNKNOWN_ACTIVATION_PARAM_COPIES * param_bytes
    )
    per_point = PARAM_COPIES * param_bytes + activations
    cap = (
        MAX_CHUNK_POINTS
        if land.device.type == "cuda"
        else max(1, min(MAX_CHUNK_POINTS, CPU_VMAP_CHUNK_BYTES // max(1, per_point)))
    )
    return int(max(1, min(cap, n_points, budget // max(1, per_point))))


def default_chunk_size(
    land: Objective, strategy: str, n: int, vchunk: int, budget: int, streaming: bool
) -> int:
    """Points per chunk for ``strategy`` when the caller names none (``vchunk``: what
    :func:`vmap_chunk` gives)."""
    if strategy == "affine-vmap" and land.device.type == "cpu":
        plan, sizes = affine_plan(land), output_sizes(land)
        if (
            plan is not None
            and plan.batched
            and sizes is not None
            and sizes.first_ndim == FLAT_NDIM
        ):
            # Tiled (see cpu_tile): a point holds only its output and the loss's scratch.
            biggest, param_bytes = batch_and_param_bytes(land)
            per_point = (
                PARAM_COPIES * param_bytes + biggest * sizes.output_bytes * TILED_OUTPUT_COPIES
            )
            return int(
                max(
                    1,
                    min(MAX_CHUNK_POINTS, n, TILED_CHUNK_BYTES // per_point, budget // per_point),
                )
            )
    if strategy.endswith("vmap"):
        return vchunk
    # Loops: many points per pass when streaming, so the loader runs rarely.
    param_bytes = land.num_parameters * LOOP_PARAMETER_BYTES
    most = LOOP_CHUNK_POINTS_STREAMED if streaming else LOOP_CHUNK_POINTS
    return int(max(1, min(n, most, budget // (LOOP_PARAM_COPIES * param_bytes))))


def cpu_tile(n_points: int, point_bytes: int) -> int:
    """Points per CPU tile of the features-first path: the widest activation of a tile
    (``point_bytes`` per point) fits in :data:`TILE_BYTES`, with at least
    :data:`MIN_TILE_POINTS` (and at most ``n_points``).

    >>> cpu_tile(100, TILE_BYTES // 10), cpu_tile(100, TILE_BYTES), cpu_tile(5, 1)
    (10, 8, 5)
    """
    return min(n_points, max(MIN_TILE_POINTS, TILE_BYTES // point_bytes))


def piece_samples(land: Objective, name: str) -> int | None:
    """The most samples the engine evaluates at once from data set ``name``: ``None``
    (whole batches) unless, on CPU, one forward pass over its largest held batch would
    write more than :data:`PIECE_BYTES` of activations (see ``DataSet.share``)."""
    ds = land.datasets[name]
    if land.device.type != "cpu" or not ds.in_memory or not ds.batches:
        return None
    sizes = output_sizes(land)
    if sizes is None:
        return None
    most = max(1, PIECE_BYTES // sizes.activation_bytes)
    return most if max(batch_size(b) for b in ds.batches) > most else None
