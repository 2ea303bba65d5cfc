"""The run: every point of a point set on the chosen data sets, chunk by chunk.

A run settles its strategy (asked for, ``auto``'s pick, or a journal's) and its chunk
size once, then streams the chunks: each chunk is one pass over every data set, each
batch serving every point of the chunk. With a journal, finished chunks are recorded
before the next starts, and a resumed run reuses the first attempt's strategy and
chunk size, so its values equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lossmap._checks import choice
from lossmap.data import batch_size
from lossmap.devices import Precision
from lossmap.distributed import dealt_chunk
from lossmap.evaluate.choice import choose_and_probe, eligible
from lossmap.evaluate.memory import default_chunk_size, memory_budget, piece_samples, vmap_chunk
from lossmap.evaluate.points import EvalResult, PointSet, Progress, chunks
from lossmap.evaluate.strategies import STRATEGIES, Evaluator
from lossmap.objective import Objective

if TYPE_CHECKING:
    from lossmap.store import Journal

log = logging.getLogger("lossmap")

__all__ = ["run"]


def run(
    land: Objective,
    points: PointSet,
    *,
    datasets: Sequence[str] | None = None,
    strategy: str = "auto",
    chunk_size: int | None = None,
    progress: Progress | None = None,
    memory_fraction: float = 0.25,
    journal: Journal | None = None,
    view: str = "points",
    precision: str = "float32",
) -> EvalResult:
    """Evaluate every point of ``points`` on the chosen data sets.

    Args:
        land: the landscape (any :class:`~lossmap.objective.Objective`).
        points: a :class:`Span` or :class:`Explicit` set of points.
        datasets: names of the data sets to evaluate (default: all).
        strategy: one of :data:`STRATEGIES`; ``"auto"`` applies :func:`choose`.
        chunk_size: points per chunk (default: from the model, the data and the
            device's total memory).
        progress: ``progress(done, total)`` called after each chunk.
        memory_fraction: share of the device's total memory (at most 1 GiB) a chunk
            may use.
        journal: a :class:`~lossmap.store.Journal`: points it already holds (under
            ``view``) are not recomputed, each finished chunk is recorded before the next
            starts, and the strategy and chunk size of the first attempt are reused, so
            a resumed run gives the same values, bit for bit, as an uninterrupted one.
        view: the name of this grid in the journal.
        precision: a :class:`~lossmap.devices.Precision` (a journal refuses another).

    Returns:
        :class:`EvalResult` with non-finite values stored as NaN. Two calls with the
        same arguments return the same values bit for bit: the strategy and the chunks
        do not depend on timing or free memory (except as ``info`` records it:
        ``oom_halvings``, ``memory_capped``: free memory short of the chunk budget).

    Raises:
        ValueError: an unknown strategy or data set (the message lists the valid ones),
            no points, a strategy that cannot run here, or a journal that holds points
            beyond this grid.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    dsets = list(datasets) if datasets is not None else list(land.datasets)
    unknown = [d for d in dsets if d not in land.datasets]
    if unknown:
        raise ValueError(f"unknown data set(s) {unknown}; this landscape has {list(land.datasets)}")
    n = len(points)
    if n == 0:
        raise ValueError("no points to evaluate")
    precision = choice(precision, Precision, "precision").value
    t_start = time.perf_counter()
    can = eligible(land, points, precision)
    info: dict[str, Any] = {"n_points": n, "eligible": can, "precision": precision}
    budget = memory_budget(land, memory_fraction, info)
    streaming = any(not land.datasets[d].in_memory for d in dsets)
    out = np.empty((n, len(dsets) * len(land.stat_names)))
    done_mask = np.zeros(n, dtype=bool)
    ranks = land.ranks
    journal, stored = _start(land, journal, view, out, done_mask, info)

    with land.mode(), torch.inference_mode():
        for d in dsets:  # (sum, count) losses: each data set's tokens, counted once, first
            land.weight_totals(d)
        probed: Evaluator | None = None
        if stored is not None:
            # Resuming: the first attempt's strategy and chunks, for identical values.
            strategy, chunk_size = str(stored["strategy"]), int(stored["chunk_size"])
            info["reason"] = f"resumed: {stored.get('reason', '')}"
        elif strategy == "auto":
            strategy, info["reason"], probed = choose_and_probe(land, points, dsets, precision)
        elif strategy not in can:
            raise ValueError(
                f"strategy {strategy!r} cannot run here (eligible: {', '.join(can)}); "
                "use strategy='auto'"
            )
        else:
            info["reason"] = "asked for"
        if chunk_size is None:
            vchunk = vmap_chunk(land, n, budget)
            chunk_size = default_chunk_size(land, strategy, n, vchunk, budget, streaming)
            if ranks is not None and ranks.mode == "points":
                chunk_size = dealt_chunk(chunk_size, n, ranks.world)
        if ranks is not None:  # rank 0's settings, the same on every rank
            strategy, chunk_size, info["reason"] = ranks.broadcast(
                (strategy, chunk_size, info["reason"])
            )
            probed = probed if probed is not None and probed.strategy == strategy else None
        # The probe's evaluator keeps the first layer's products it computed on the data.
        ev = probed or Evaluator(land, points, strategy, precision=precision)
        if journal is not None and stored is None:
            settings = {"strategy": strategy, "chunk_size": chunk_size, "precision": precision}
            journal.set_meta(f"engine/{view}", {**settings, "reason": info["reason"]})
        info["strategy"] = strategy
        info["chunk_size"] = chunk_size
        _compute(ev, land, points, dsets, chunk_size, out, done_mask, info, progress, journal, view)
    return _result(land, dsets, out, info, t_start)


def _start(
    land: Objective,
    journal: Journal | None,
    view: str,
    out: np.ndarray,
    done_mask: np.ndarray,
    info: dict[str, Any],
) -> tuple[Journal | None, dict[str, Any] | None]:
    """:func:`_resume` from the journal; with ranks, rank 0 alone keeps the journal and
    hands every rank what it holds. Returns the journal this rank writes to (if any) and
    the first attempt's engine settings."""
    ranks = land.ranks
    if ranks is not None and not ranks.main:
        journal = None
    stored = _resume(journal, view, out, done_mask, info) if journal is not None else None
    if ranks is not None:
        info["ranks"] = {"world": ranks.world, "mode": ranks.mode}
        stored, out[:], done_mask[:] = ranks.broadcast((stored, out, done_mask))
    return journal, stored


def _resume(
    journal: Journal, view: str, out: np.ndarray, done_mask: np.ndarray, info: dict[str, Any]
) -> dict[str, Any] | None:
    """Start ``view`` in the journal, fill in the rows it holds, and return the first
    attempt's engine settings (``None`` on a first attempt); refuse rows evaluated at
    another precision than ``info["precision"]``."""
    n, width = out.shape
    journal.start(view, n)
    stored = journal.meta(f"engine/{view}")
    was = info["precision"] if stored is None else stored.get("precision", "float32")
    if was != info["precision"]:
        raise ValueError(
            f"{journal.path}: holds points evaluated at precision {was}, not "
            f"{info['precision']}; pass --restart"
        )
    idx_done, rows_done = journal.rows(view, width)
    if len(idx_done) and idx_done.max() >= n:
        raise ValueError(f"{journal.path}: holds points beyond this grid; pass --restart")
    out[idx_done] = rows_done
    done_mask[idx_done] = True
    info["resumed_points"] = len(idx_done)
    return stored


def _compute(
    ev: Evaluator,
    land: Objective,
    points: PointSet,
    dsets: Sequence[str],
    chunk_size: int,
    out: np.ndarray,
    done_mask: np.ndarray,
    info: dict[str, Any],
    progress: Progress | None,
    journal: Journal | None,
    view: str,
) -> None:
    """Fill the rows of ``out`` not yet done, chunk by chunk (with ranks sharing points,
    a round of one chunk per rank at a time); an out-of-memory error halves the chunk
    (recorded in ``info``) and goes on."""
    n = len(out)
    queue = [c for c in chunks(n, chunk_size) if not done_mask[c].all()]
    queue = [c[~done_mask[c]] for c in queue]
    done = int(done_mask.sum())
    if progress is not None and done:
        progress(done, n)
    ranks = land.ranks
    deal = ranks is not None and ranks.mode == "points"
    while queue:
        if deal:
            assert ranks is not None
            round_, queue = queue[: ranks.world], queue[ranks.world :]
            mine = round_[ranks.rank] if ranks.rank < len(round_) else None
            rows: np.ndarray | None = (
                None if mine is None else _rows(ev, land, points, mine, dsets, info)
            )
            gathered = ranks.all_gather((mine, rows))
            finished = [(i, r) for i, r in gathered if i is not None and r is not None]
        else:
            first = queue.pop(0)
            finished = [(first, _rows(ev, land, points, first, dsets, info))]
        for idx, vals in finished:
            out[idx] = vals
            if journal is not None:
                journal.add_rows(view, idx, vals)
            done += len(idx)
        if progress is not None:
            progress(done, n)


def _rows(
    ev: Evaluator,
    land: Objective,
    points: PointSet,
    idx: np.ndarray,
    dsets: Sequence[str],
    info: dict[str, Any],
) -> np.ndarray:
    """The rows of the points ``idx``; out of memory, the two halves one after the other
    (recorded in ``info``). With ranks sharing the data every rank must take the same
    halves; a one-sided out-of-memory error there ends in a :class:`RankFailure`."""
    try:
        return _passes(ev, land, points, idx, dsets, cache=True).numpy()
    except torch.OutOfMemoryError:
        if len(idx) == 1:
            raise
    half = len(idx) // 2
    info["chunk_size"] = half
    info["oom_halvings"] = info.get("oom_halvings", 0) + 1
    log.warning("out of memory on %d points: halving the chunk to %d", len(idx), half)
    first = _rows(ev, land, points, idx[:half], dsets, info)
    return np.concatenate([first, _rows(ev, land, points, idx[half:], dsets, info)])


def _passes(
    ev: Evaluator,
    land: Objective,
    points: PointSet,
    idx: np.ndarray,
    dsets: Sequence[str],
    cache: bool,
) -> Tensor:
    """``[len(idx), len(dsets) * n_stats]`` float64 data-set means for the points ``idx``:
    the sums over batches divided by the number of samples, or where callables return
    ``(sum, count)`` pairs by the counts summed over the data set (``weight_totals``).
    With ranks sharing the data, each sums over its share and the sums and the sample
    counts are all-reduced."""
    params = points.stacked(idx, ev.keys)
    ranks = land.ranks if land.ranks is not None and land.ranks.mode == "data" else None
    rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
    cols = []
    for name in dsets:
        ds = land.datasets[name]
        totals = land.weight_totals(name)
        acc = torch.zeros(len(idx), len(land.stat_names), dtype=torch.float64, device=land.device)
        count = 0
        for b in ds.share(rank, world, most=piece_samples(land, name)):
            part = ev(params, idx, b, cache and ds.in_memory).double()
            acc = part if count == 0 else acc + part
            count += batch_size(b)
        if ranks is not None:
            here = torch.tensor([float(count)], dtype=torch.float64, device=acc.device)
            acc, total = ranks.all_sum([acc, here])
            count = int(total.item())
        if ds.size is None:
            ds.size = count
        cols.append(acc / count if totals is None else acc / totals.to(acc.device))
    return torch.cat(cols, dim=1).cpu()


def _result(
    land: Objective, dsets: Sequence[str], out: np.ndarray, info: dict[str, Any], t_start: float
) -> EvalResult:
    """The finished run: non-finite values as NaN, one array per statistic, timings."""
    n = len(out)
    out[~np.isfinite(out)] = np.nan
    keys = [f"{d}/{s}" for d in dsets for s in land.stat_names]
    values = {k: out[:, j].copy() for j, k in enumerate(keys)}
    secs = time.perf_counter() - t_start
    info["seconds"] = secs
    info["ms_per_point"] = 1000 * secs / n
    info["nonfinite"] = int(np.isnan(out[:, 0 :: len(land.stat_names)]).any(axis=1).sum())
    return EvalResult(values, info, land.default_dataset)
