"""BatchNorm statistics recomputed at a point, and paths evaluated with them.

Running statistics of ``a``, ``b`` or their average are wrong in between (Garipov et
al. 2018; Frankle et al. 2020): every point gets its own, from one pass over the data in
train mode on a deep copy of the model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lossmap import vectors as V
from lossmap.connect._points import check_pair
from lossmap.data import Batch, batch_size, to_device
from lossmap.evaluate import Progress
from lossmap.landscape import Landscape


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _forward(land: Landscape, module: nn.Module, batch: Batch) -> None:
    if land.loss_fn is not None:
        land.loss_fn(module, batch)
    elif isinstance(batch, tuple | list) and len(batch) >= 2:
        module(*batch[:-1])
    else:
        raise TypeError(
            f"BatchNorm data batches must be tuples (inputs..., target), got {type(batch).__name__}"
        )


def _bn_batches(land: Landscape, data: object) -> Iterable[Batch]:
    if data is None:
        return land.dataset()
    if isinstance(data, tuple | list) and data and all(isinstance(x, Tensor) for x in data):
        return [to_device(tuple(data), land.device)]
    if not isinstance(data, Iterable) or isinstance(data, str | bytes | Mapping):
        raise TypeError(
            f"bn_data must be (X, y) tensors or a DataLoader / iterable of batches, got "
            f"{type(data).__name__}"
        )
    return (to_device(b, land.device) for b in data)


class BNWorkbench:
    """A deep copy of the landscape's model on which BatchNorm statistics are recomputed."""

    def __init__(self, land: Landscape, data: object) -> None:
        self.land = land
        self.data = data
        self.model = copy.deepcopy(land.model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.layers = bn_layers(self.model)
        if not self.layers:
            raise ValueError(
                f"reset_bn=True but {type(land.model).__name__} has no BatchNorm layer with "
                "running statistics; use reset_bn=False"
            )

    @torch.no_grad()
    def buffers_at(self, point: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """All fixed tensors (buffers, frozen parameters) with BatchNorm statistics at ``point``."""
        params = dict(self.model.named_parameters())
        for k, v in point.items():
            params[k].copy_(v)
        for m in self.layers:
            m.reset_running_stats()
        self.model.train()
        seen = 0
        for batch in _bn_batches(self.land, self.data):
            n = batch_size(batch)
            # Weight each batch by its size: the running mean is the exact data-set mean
            # of the batch means, also with an uneven last batch (Garipov et al.'s bn_update).
            for m in self.layers:
                m.momentum = n / (seen + n)
            _forward(self.land, self.model, batch)
            seen += n
        if seen == 0:
            raise ValueError("bn_data yields no samples; pass at least one batch")
        self.model.eval()
        fixed = {n: p.detach().clone() for n, p in self.model.named_parameters() if n not in point}
        fixed.update({n: b.detach().clone() for n, b in self.model.named_buffers()})
        return {k: fixed[k] for k in self.land.fixed}


def recompute_bn(
    land: Landscape, point: Mapping[str, Tensor] | None = None, *, data: object = None
) -> dict[str, Tensor]:
    """BatchNorm running statistics recomputed at ``point`` (θ0 by default).

    On a deep copy of the model at ``point``: every BatchNorm layer's statistics are
    reset, then one pass in train mode over ``data`` (default: the landscape's first
    data set) under ``no_grad`` accumulates them, each batch weighted by its size
    (momentum ``n_b / (n_seen + n_b)``, as Garipov et al.'s ``bn_update``; equal to
    PyTorch's cumulative ``momentum=None`` for equal batches). The running mean is the
    exact data-set mean of the pre-BN activations; the running variance is the
    size-weighted mean of the per-batch unbiased variances (the exact unbiased variance
    when the data set is one batch, as for ``(X, y)`` tensors).

    Returns:
        The landscape's fixed tensors (all buffers and frozen parameters, keyed like
        ``land.buffers()``) with the recomputed statistics; use them with
        ``land.at({**point, **buffers})``.

    Raises:
        ValueError: the model has no BatchNorm layer with running statistics.
    """
    p = land.theta0 if point is None else check_pair(land, {"point": point})["point"]
    return BNWorkbench(land, data).buffers_at(p)


def values_with_bn(
    land: Landscape,
    points: Iterable[V.Vector],
    *,
    data: object = None,
    datasets: Sequence[str] | None = None,
    strategy: str = "loop",
    progress: Progress | None = None,
    total: int = 0,
) -> dict[str, np.ndarray]:
    """Every point evaluated with its own BatchNorm statistics (see :func:`recompute_bn`).

    One pass over ``data`` (default: the first data set) per point recomputes the
    statistics on a deep copy of the model, as Garipov et al.'s ``bn_update`` before
    each evaluation; then the point is evaluated alone (points are not batched). A
    point whose statistics are not finite gets NaN values.

    Returns:
        ``{"<set>/<stat>": array [n_points]}``; ``progress(i, total)`` after point ``i``.
    """
    bench = BNWorkbench(land, data)
    rows: list[dict[str, np.ndarray]] = []
    for i, p in enumerate(points):
        fixed = bench.buffers_at(p)
        if all(torch.isfinite(x).all() for x in fixed.values() if x.is_floating_point()):
            vals = land.at({**p, **fixed}).evaluate([p], datasets=datasets, strategy=strategy)
            rows.append({k: np.asarray(v, dtype=np.float64) for k, v in vals.items() if "/" in k})
        else:
            rows.append({})
        if progress is not None:
            progress(i + 1, total)
    keys = next((list(r) for r in rows if r), [])
    return {k: np.array([r[k][0] if r else np.nan for r in rows]) for k in keys}
