"""Fitting a low-loss curve between two minima by SGD on its bend (Garipov et al. 2018)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap.connect._barrier import barrier, barriers
from lossmap.connect._batchnorm import bn_layers, values_with_bn
from lossmap.connect._curve import CurveFit, CurveKind, blend, coefficients, kind_of
from lossmap.connect._points import check_endpoints, check_pair
from lossmap.data import Batch
from lossmap.data import batch_size as _batch_size
from lossmap.evaluate import Progress, Span, run
from lossmap.landscape import Landscape
from lossmap.slices import versions

if TYPE_CHECKING:
    from lossmap.store import Journal


class _JournalLike(Protocol):
    def get(self, key: str) -> np.ndarray | None: ...

    def put(self, key: str, value: np.ndarray) -> None: ...


def _seed_for(seed: int, epoch: int) -> int:
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def _shufflable(ds_batches: list[Batch]) -> Batch | None:
    """All held batches joined into one (for shuffling), or None if they cannot be."""

    def ok(x: object, n: int) -> bool:
        return isinstance(x, Tensor) and x.ndim > 0 and x.shape[0] == n

    if not ds_batches:
        return None
    first = ds_batches[0]
    if isinstance(first, tuple | list):
        if not all(
            isinstance(b, tuple | list)
            and len(b) == len(first)
            and all(ok(x, _batch_size(b)) for x in b)
            for b in ds_batches
        ):
            return None
        return tuple(
            torch.cat([b[i] for b in ds_batches]) if len(ds_batches) > 1 else first[i]
            for i in range(len(first))
        )
    if isinstance(first, Mapping):
        if not all(
            isinstance(b, Mapping)
            and b.keys() == first.keys()
            and all(ok(x, _batch_size(b)) for x in b.values())
            for b in ds_batches
        ):
            return None
        return {
            k: torch.cat([b[k] for b in ds_batches]) if len(ds_batches) > 1 else first[k]
            for k in first
        }
    return None


def _take(batch: Batch, idx: Tensor) -> Batch:
    if isinstance(batch, Mapping):
        return {k: v[idx] for k, v in batch.items()}
    return tuple(x[idx] for x in batch)


def _minibatches(joined: Batch, perm: Tensor, size: int, device: torch.device) -> Iterator[Batch]:
    for i in range(0, int(perm.numel()), size):
        yield _take(joined, perm[i : i + size].to(device))


def _flat(vec: Sequence[Tensor]) -> np.ndarray:
    """Concatenate tensors into one numpy array: float64 if any is, else float32 (so the
    parameters' own dtype for float32/float64 models; float16 and bfloat16 are widened,
    which is exact, as is narrowing them back)."""
    if not vec:
        return np.zeros(0)
    wide = torch.float64 if any(t.dtype == torch.float64 for t in vec) else torch.float32
    return torch.cat([t.detach().reshape(-1).to("cpu", wide) for t in vec]).numpy()


def _unflat(arr: np.ndarray, like: Sequence[Tensor]) -> list[Tensor]:
    flat = torch.from_numpy(np.asarray(arr))
    out, i = [], 0
    for t in like:
        out.append(flat[i : i + t.numel()].reshape(t.shape).to(t.device, t.dtype).clone())
        i += t.numel()
    if i != flat.numel():
        raise ValueError(
            f"the journal holds a curve state of {flat.numel()} numbers, expected {i}; "
            "it was written for another model: use a fresh journal"
        )
    return out


def _digest(vec: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k, t in vec.items():
        h.update(k.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def curve(
    land: Landscape,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    kind: str | CurveKind = "bezier",
    epochs: int = 20,
    lr: float = 0.05,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    steps: int = 41,
    datasets: Sequence[str] | None = None,
    journal: Journal | _JournalLike | None = None,
    strategy: str = "auto",
    progress: Progress | None = None,
) -> CurveFit:
    """Fit a low-loss curve from ``a`` to ``b`` (Garipov et al. 2018, mode connectivity).

    The curve ``φ_θ(t)``, ``t ∈ [0, 1]``, has fixed endpoints ``φ(0) = a``, ``φ(1) = b``
    and one trainable bend ``θ``, initialised at the midpoint ``(a + b) / 2``:

    - Bézier: ``φ(t) = (1 - t)² a + 2 t (1 - t) θ + t² b``;
    - polychain: ``a -> θ`` for ``t ∈ [0, 1/2]``, ``θ -> b`` for ``t ∈ [1/2, 1]``.

    With BatchNorm layers the curve is trained in train mode (batch statistics, dropout
    seeded per epoch) and every evaluated point, on the curve and on the line, gets its
    running statistics recomputed on the first data set before evaluation, as Garipov
    et al. do.

    ``θ`` minimises ``E_{t ~ U(0, 1)} L(φ_θ(t))`` by SGD with momentum, one ``t`` drawn
    per minibatch as in the paper (Garipov et al. 2018, §3.2), on the landscape's first
    data set: in-memory data are shuffled into minibatches of ``batch_size``; streamed
    data are taken in the loader's own batches and order. Each epoch's data order and
    ``t`` draws come from a generator seeded by ``(seed, epoch)``, so a run is
    deterministic. The loss is the landscape's (eval mode, so no dropout, unless it was
    built with ``train_mode=True``). After training, every data set is evaluated at ``steps`` points
    along the curve and along the straight line (one batched evaluation).

    Resume: with a ``journal``, each finished epoch stores the bend and the momentum
    buffers (in the parameters' dtype, exactly) under ``"curve/bend/<i>"``,
    ``"curve/momentum/<i>"``, then ``"curve/epoch/<i>"`` (the epoch's loss, written
    last), and a later call continues after the last stored epoch, ending bit-identical
    to an uninterrupted run (for streamed data, if the loader's order is deterministic).
    ``"curve/config"`` guards against resuming with other settings or endpoints.

    Args:
        land: the landscape (its model is never modified).
        a, b: the endpoints (parameter dicts keyed like ``land.point()``).
        kind: ``"bezier"`` or ``"polychain"``.
        epochs: passes over the data.
        lr, momentum, weight_decay: SGD settings (weight decay on the bend).
        batch_size: minibatch size for in-memory data.
        seed: randomness of data order and ``t`` draws.
        steps: evaluation points along ``t ∈ [0, 1]``.
        datasets: data sets to evaluate (default all).
        journal: a :class:`lossmap.store.Journal` (or anything with ``get``/``put``).
        strategy: evaluation strategy (see :mod:`lossmap.evaluate`).
        progress: ``progress(epochs_done, epochs)`` after each epoch.

    Returns:
        A :class:`CurveFit`.

    Raises:
        ValueError: endpoints of another architecture or with a non-finite loss, an
            unknown ``kind``, bad settings, a model with BatchNorm (statistics along a
            curve are not recomputed yet), or a journal written with other settings.
    """
    k = kind_of(kind)
    for name, val, minimum in (
        ("epochs", epochs, 0),
        ("batch_size", batch_size, 1),
        ("steps", steps, 2),
    ):
        if not isinstance(val, int) or isinstance(val, bool) or val < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {val!r}")
    for name, x in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not (math.isfinite(x) and x >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    if lr == 0:
        raise ValueError("lr must be > 0, e.g. lr=0.05")
    has_bn = bool(bn_layers(land.model))
    # With BatchNorm the curve is trained in train mode (batch statistics, as Garipov et
    # al. do), and every evaluated point gets its statistics recomputed afterwards.
    fit_land = land
    if has_bn:
        fit_land = copy.copy(land)
        fit_land.train_mode = True
    pts = check_pair(land, {"a": a, "b": b})
    a, b = pts["a"], pts["b"]
    ends = check_endpoints(land, a, b)
    t_start = time.perf_counter()

    names = list(a)
    bend = {n: ((a[n] + b[n]) / 2).detach().clone().requires_grad_(True) for n in names}
    leaves = [bend[n] for n in names]
    opt = torch.optim.SGD(leaves, lr=lr, momentum=momentum, weight_decay=weight_decay)

    ds = land.datasets[land.default_dataset]
    joined = _shufflable(ds.batches) if ds.batches is not None else None
    config = {
        "kind": k.value,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "seed": seed,
        "dataset": land.default_dataset,
        "n_parameters": land.num_parameters,
        "a": _digest(a),
        "b": _digest(b),
    }
    history: list[float] = []
    start = 0
    if journal is not None:
        blob = np.frombuffer(json.dumps(config, sort_keys=True).encode(), dtype=np.uint8)
        stored = journal.get("curve/config")
        if stored is None:
            journal.put("curve/config", blob.copy())
        elif bytes(np.asarray(stored, dtype=np.uint8)) != blob.tobytes():
            old = json.loads(bytes(np.asarray(stored, dtype=np.uint8)).decode())
            diff = {key: (old.get(key), val) for key, val in config.items() if old.get(key) != val}
            raise ValueError(
                f"the journal holds a curve fit with other settings {diff} (stored, now); "
                "use a fresh journal or the same settings"
            )
        while start < epochs:
            got = journal.get(f"curve/epoch/{start}")
            if got is None:
                break
            history.append(float(np.asarray(got).reshape(-1)[0]))
            start += 1
        if start:
            last = start - 1
            bend_arr = journal.get(f"curve/bend/{last}")
            mom_arr = journal.get(f"curve/momentum/{last}")
            if bend_arr is None or mom_arr is None:
                raise ValueError(
                    f"the journal marks epoch {last} done but lacks its curve state; "
                    "it is damaged: use a fresh journal"
                )
            with torch.no_grad():
                for leaf, saved in zip(leaves, _unflat(bend_arr, leaves), strict=True):
                    leaf.copy_(saved)
            if np.asarray(mom_arr).size:
                for leaf, buf in zip(leaves, _unflat(mom_arr, leaves), strict=True):
                    opt.state[leaf]["momentum_buffer"] = buf

    with fit_land.mode(), torch.random.fork_rng(devices=[]):
        for epoch in range(start, epochs):
            gen = torch.Generator().manual_seed(_seed_for(seed, epoch))
            torch.manual_seed(_seed_for(seed, epoch))  # dropout, if any: same per epoch
            ts: Tensor | None = None
            batches: Iterable[Batch] = ds
            if joined is not None:
                n = int(ds.size or 0)
                perm = torch.randperm(n, generator=gen)
                ts = torch.rand(math.ceil(n / batch_size), generator=gen, dtype=torch.float64)
                batches = _minibatches(joined, perm, batch_size, land.device)
            total, count = 0.0, 0
            for j, batch in enumerate(batches):
                tj = (
                    float(ts[j])
                    if ts is not None
                    else float(torch.rand((), generator=gen, dtype=torch.float64))
                )
                phi = blend(coefficients(k, tj)[0], a, bend, b)
                nb = _batch_size(batch)
                loss = fit_land.batch_stats(phi, batch, metrics=False)[0] / nb
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * nb
                count += nb
            epoch_loss = total / max(count, 1)
            if not math.isfinite(epoch_loss):
                raise ValueError(
                    f"curve training diverged in epoch {epoch} (mean loss {epoch_loss}); "
                    f"lower lr (now {lr})"
                )
            history.append(epoch_loss)
            if journal is not None:
                journal.put(f"curve/bend/{epoch}", _flat(leaves))
                bufs = [opt.state[leaf].get("momentum_buffer") for leaf in leaves]
                journal.put(
                    f"curve/momentum/{epoch}",
                    _flat([x for x in bufs if x is not None])
                    if all(x is not None for x in bufs)
                    else np.zeros(0),
                )
                journal.put(f"curve/epoch/{epoch}", np.array([epoch_loss], dtype=np.float64))
            if progress is not None:
                progress(epoch + 1, epochs)
    t_train = time.perf_counter() - t_start
    theta = {n: bend[n].detach().clone() for n in names}

    # Curve and line in one batched evaluation: both are affine in (θ - a, b - a).
    t = np.linspace(0.0, 1.0, steps)
    c = coefficients(k, t)
    coeffs = np.concatenate(
        [np.stack([c[:, 1], c[:, 2]], axis=1), np.stack([np.zeros_like(t), t], axis=1)]
    )
    t_eval = time.perf_counter()
    if has_bn:
        dirs = [V.sub(theta, a), V.sub(b, a)]
        all_values = values_with_bn(
            land,
            (
                {k: a[k] + sum(float(ck) * d[k] for ck, d in zip(c, dirs, strict=True)) for k in a}
                for c in coeffs
            ),
            datasets=datasets,
        )
        info = {"strategy": "loop, BatchNorm statistics recomputed at every point"}
    else:
        res = run(
            land,
            Span(a, [V.sub(theta, a), V.sub(b, a)], coeffs),
            datasets=datasets,
            strategy=strategy,
            view="connect",
        )
        all_values, info = res.values, res.info
    values = {key: v[:steps] for key, v in all_values.items()}
    line_values = {key: v[steps:] for key, v in all_values.items()}
    t_eval = time.perf_counter() - t_eval
    meta: dict[str, Any] = {
        **config,
        "epochs": epochs,
        "resumed_from_epoch": start,
        "steps": steps,
        "default_dataset": land.default_dataset,
        "datasets": {key: d.size for key, d in land.datasets.items()},
        "model": type(land.model).__name__,
        "endpoint_loss": ends,
        "distance": float(V.norm(V.sub(b, a))),
        "bend_offset": float(V.norm(V.sub(theta, V.scale(V.add(a, b), 0.5)))),
        "seconds_train": t_train,
        "seconds_eval": t_eval,
        "engine": info,
        "batchnorm": (
            "trained in train mode (batch statistics); statistics recomputed at every "
            "evaluated point"
            if has_bn
            else None
        ),
        "device": str(land.device),
        "versions": versions(),
    }
    fit = CurveFit(
        kind=k.value,
        a=a,
        b=b,
        bend=theta,
        t=t,
        values=values,
        line_values=line_values,
        barrier_curve=barrier(
            values[f"{land.default_dataset}/loss"], t, key=f"{land.default_dataset}/loss"
        ),
        barrier_line=barrier(
            line_values[f"{land.default_dataset}/loss"], t, key=f"{land.default_dataset}/loss"
        ),
        history=np.asarray(history, dtype=np.float64),
        meta=meta,
    )
    fit.meta["barrier"] = {
        "curve": barriers(fit.to_curve("curve")),
        "line": barriers(fit.to_curve("line")),
    }
    return fit
