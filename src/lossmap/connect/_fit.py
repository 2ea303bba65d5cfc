"""Fitting a low-loss curve between two minima by SGD on its bend (Garipov et al. 2018).

Each minibatch step takes ``∇L`` at ``φ(t)`` from the derivative core
(:meth:`lossmap.objective.Objective.value_and_grad`) and applies the chain rule to the
bend: ``φ(t) = c_a a + c_θ θ + c_b b`` is linear in ``θ``, so ``∂L/∂θ = c_θ ∇L(φ(t))``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap.connect._barrier import barrier, barriers
from lossmap.connect._batchnorm import bn_layers, values_with_bn
from lossmap.connect._curve import CurveFit, CurveKind, blend, coefficients, kind_of
from lossmap.connect._points import check_endpoints, check_pair
from lossmap.data import Batch, DataSet
from lossmap.data import batch_size as size_of
from lossmap.directions import Direction
from lossmap.evaluate import Progress, Span, run
from lossmap.landscape import Landscape
from lossmap.slices import result_meta
from lossmap.store import Blobs, fingerprint_diff, hash_tensors

Bend = dict[str, Tensor]  # the trainable control point θ: leaves that require grad


# ------------------------------------------------------------------ data order
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
            and all(ok(x, size_of(b)) for x in b)
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
            and all(ok(x, size_of(b)) for x in b.values())
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


def _epoch_draws(
    ds: DataSet,
    joined: Batch | None,
    gen: torch.Generator,
    batch_size: int,
    device: torch.device,
) -> Iterator[tuple[float, Batch]]:
    """One epoch's ``(t, minibatch)`` pairs, all drawn from ``gen``.

    In-memory data (``joined``): a permutation into minibatches of ``batch_size``, then
    one ``t`` per minibatch; streamed data: the loader's batches, a ``t`` drawn after
    each is taken.
    """
    if joined is None:
        for batch in ds:
            yield float(torch.rand((), generator=gen, dtype=torch.float64)), batch
        return
    n = int(ds.size or 0)
    perm = torch.randperm(n, generator=gen)
    ts = torch.rand(math.ceil(n / batch_size), generator=gen, dtype=torch.float64)
    for j, batch in enumerate(_minibatches(joined, perm, batch_size, device)):
        yield float(ts[j]), batch


# ------------------------------------------------------------------ journal
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


def _check_config(journal: Blobs, config: dict[str, Any]) -> None:
    """Store the fit's settings under ``"curve/config"``, or refuse other stored ones."""
    text = json.dumps(config, sort_keys=True)
    stored = journal.get("curve/config")
    if stored is None:
        journal.put("curve/config", np.frombuffer(text.encode(), dtype=np.uint8).copy())
        return
    old = json.loads(bytes(np.asarray(stored, dtype=np.uint8)).decode())
    diff = fingerprint_diff(old, json.loads(text))
    if diff:
        raise ValueError(
            f"the journal holds a curve fit with other settings ({'; '.join(diff)}); "
            "use a fresh journal or the same settings"
        )


def _restore(
    journal: Blobs, config: dict[str, Any], epochs: int, bend: Bend, opt: torch.optim.SGD
) -> list[float]:
    """The losses of the epochs the journal holds; the bend and momentum set to the last."""
    _check_config(journal, config)
    history: list[float] = []
    while len(history) < epochs:
        got = journal.get(f"curve/epoch/{len(history)}")
        if got is None:
            break
        history.append(float(np.asarray(got).reshape(-1)[0]))
    if not history:
        return history
    last = len(history) - 1
    bend_arr = journal.get(f"curve/bend/{last}")
    mom_arr = journal.get(f"curve/momentum/{last}")
    if bend_arr is None or mom_arr is None:
        raise ValueError(
            f"the journal marks epoch {last} done but lacks its curve state; "
            "it is damaged: use a fresh journal"
        )
    leaves = list(bend.values())
    with torch.no_grad():
        for leaf, saved in zip(leaves, _unflat(bend_arr, leaves), strict=True):
            leaf.copy_(saved)
    if np.asarray(mom_arr).size:
        for leaf, buf in zip(leaves, _unflat(mom_arr, leaves), strict=True):
            opt.state[leaf]["momentum_buffer"] = buf
    return history


def _record(
    journal: Blobs, epoch: int, bend: Bend, opt: torch.optim.SGD, epoch_loss: float
) -> None:
    """Store a finished epoch: bend, momentum buffers, then (last) its loss."""
    leaves = list(bend.values())
    journal.put(f"curve/bend/{epoch}", _flat(leaves))
    bufs = [opt.state[leaf].get("momentum_buffer") for leaf in leaves]
    journal.put(
        f"curve/momentum/{epoch}",
        _flat([x for x in bufs if x is not None])
        if all(x is not None for x in bufs)
        else np.zeros(0),
    )
    journal.put(f"curve/epoch/{epoch}", np.array([epoch_loss], dtype=np.float64))


# ------------------------------------------------------------------ training
def _step(
    land: Landscape,
    k: CurveKind,
    t: float,
    ends: tuple[V.Vector, V.Vector],
    bend: Bend,
    opt: torch.optim.SGD,
    batch: Batch,
) -> float:
    """One SGD step on the bend at ``φ(t)``; returns the minibatch's mean loss.

    ``∇L(φ(t))`` comes from the derivative core; ``φ`` is linear in the bend with
    coefficient ``c_θ(t)``, so the bend's gradient is ``c_θ ∇L(φ(t))`` (what autograd
    through the blend computes, in the same floating-point operations).
    """
    c = coefficients(k, t)[0]
    ct = float(c[1])
    with torch.no_grad():
        phi = blend(c, ends[0], bend, ends[1])
    value, grad = land.value_and_grad(phi, batches=[batch])
    opt.zero_grad(set_to_none=True)
    for name, leaf in bend.items():
        leaf.grad = grad[name] * ct
    opt.step()
    return value


def _train(
    land: Landscape,
    s: _Settings,
    ends: tuple[V.Vector, V.Vector],
    bend: Bend,
    opt: torch.optim.SGD,
    history: list[float],
    *,
    journal: Blobs | None,
    progress: Progress | None,
) -> None:
    """The epochs after those in ``history`` (appended to it), each journaled."""
    ds = land.dataset()
    joined = _shufflable(ds.batches) if ds.batches is not None else None
    with torch.random.fork_rng(devices=[]):
        for epoch in range(len(history), s.epochs):
            gen = torch.Generator().manual_seed(_seed_for(s.seed, epoch))
            torch.manual_seed(_seed_for(s.seed, epoch))  # dropout, if any: same per epoch
            total, count = 0.0, 0
            for t, batch in _epoch_draws(ds, joined, gen, s.batch_size, land.device):
                nb = size_of(batch)
                total += _step(land, s.kind, t, ends, bend, opt, batch) * nb
                count += nb
            epoch_loss = total / max(count, 1)
            if not math.isfinite(epoch_loss):
                raise ValueError(
                    f"curve training diverged in epoch {epoch} (mean loss {epoch_loss}); "
                    f"lower lr (now {s.lr})"
                )
            history.append(epoch_loss)
            if journal is not None:
                _record(journal, epoch, bend, opt, epoch_loss)
            if progress is not None:
                progress(epoch + 1, s.epochs)


def _fit_landscape(land: Landscape) -> Landscape:
    """The landscape the curve is trained on: with BatchNorm, a copy in train mode (batch
    statistics, as Garipov et al. do; every evaluated point gets its statistics
    recomputed afterwards)."""
    if not bn_layers(land.model):
        return land
    fit_land = copy.copy(land)
    fit_land.train_mode = True
    return fit_land


def _fit_bend(
    land: Landscape,
    s: _Settings,
    a: V.Vector,
    b: V.Vector,
    *,
    journal: Blobs | None,
    progress: Progress | None,
) -> tuple[V.Vector, list[float], dict[str, Any]]:
    """The trained bend (from the midpoint, or resumed from the journal), the epochs'
    losses, and what the journal's settings check compares (plus the resumed epoch)."""
    bend = {n: ((a[n] + b[n]) / 2).detach().clone().requires_grad_(True) for n in a}
    opt = torch.optim.SGD(
        list(bend.values()), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
    )
    config = s.config(land, a, b)
    history = _restore(journal, config, s.epochs, bend, opt) if journal is not None else []
    start = len(history)
    _train(_fit_landscape(land), s, (a, b), bend, opt, history, journal=journal, progress=progress)
    theta = {n: bend[n].detach().clone() for n in bend}
    return theta, history, {**config, "epochs": s.epochs, "resumed_from_epoch": start}


# ------------------------------------------------------------------ the fit
@dataclass(frozen=True)
class _Settings:
    """The fit's knobs, checked."""

    kind: CurveKind
    epochs: int
    lr: float
    batch_size: int
    momentum: float
    weight_decay: float
    seed: int
    steps: int

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 0), ("batch_size", 1), ("steps", 2)):
            val = getattr(self, name)
            if not isinstance(val, int) or isinstance(val, bool) or val < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {val!r}")
        for name in ("lr", "momentum", "weight_decay"):
            x = getattr(self, name)
            if not (math.isfinite(x) and x >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0, e.g. lr=0.05")

    def config(self, land: Landscape, a: V.Vector, b: V.Vector) -> dict[str, Any]:
        """What a journal must hold to be resumed: these settings on these endpoints."""
        return {
            "kind": self.kind.value,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "dataset": land.default_dataset,
            "n_parameters": land.num_parameters,
            "a": hash_tensors(a),
            "b": hash_tensors(b),
        }


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
    journal: Blobs | None = None,
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
        journal: a :class:`lossmap.store.Journal` (or anything with its ``get`` and
            ``put``).
        strategy: evaluation strategy (see :mod:`lossmap.evaluate`).
        progress: ``progress(epochs_done, epochs)`` after each epoch.

    Returns:
        A :class:`CurveFit`.

    Raises:
        ValueError: endpoints of another architecture or with a non-finite loss, an
            unknown ``kind``, bad settings (``epochs``, ``batch_size``, ``steps`` not
            integers in range; ``lr``, ``momentum``, ``weight_decay`` negative or not
            finite; ``lr = 0``), training that diverges (a non-finite epoch loss), or a
            journal written with other settings, for another model, or damaged.
    """
    s = _Settings(kind_of(kind), epochs, lr, batch_size, momentum, weight_decay, seed, steps)
    pts = check_pair(land, {"a": a, "b": b})
    a, b = pts["a"], pts["b"]
    ends = check_endpoints(land, a, b)
    t0 = time.perf_counter()
    theta, history, settings = _fit_bend(land, s, a, b, journal=journal, progress=progress)
    meta = {**settings, "endpoint_loss": ends, "seconds_train": time.perf_counter() - t0}
    return _result(land, s, (a, theta, b), history, meta, datasets=datasets, strategy=strategy)


def _evaluate(
    land: Landscape,
    k: CurveKind,
    a: V.Vector,
    dirs: list[V.Vector],
    steps: int,
    *,
    datasets: Sequence[str] | None,
    strategy: str,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """``t``, the values along the curve and along the line, and the engine's report.

    Both paths are affine in ``dirs = (θ - a, b - a)``: one batched evaluation, or, with
    BatchNorm, one point at a time with statistics recomputed at each.
    """
    t = np.linspace(0.0, 1.0, steps)
    c = coefficients(k, t)
    coeffs = np.concatenate(
        [np.stack([c[:, 1], c[:, 2]], axis=1), np.stack([np.zeros_like(t), t], axis=1)]
    )
    if bn_layers(land.model):
        points: Iterable[V.Vector] = (
            {n: a[n] + sum(float(cj) * d[n] for cj, d in zip(row, dirs, strict=True)) for n in a}
            for row in coeffs
        )
        values = values_with_bn(land, points, datasets=datasets)
        info: dict[str, Any] = {"strategy": "loop, BatchNorm statistics recomputed at every point"}
    else:
        res = run(land, Span(a, dirs, coeffs), datasets=datasets, strategy=strategy, view="connect")
        values, info = res.values, res.info
    return (
        t,
        {key: v[:steps] for key, v in values.items()},
        {key: v[steps:] for key, v in values.items()},
        info,
    )


_BN_NOTE = (
    "trained in train mode (batch statistics); statistics recomputed at every evaluated point"
)


def _result(
    land: Landscape,
    s: _Settings,
    points: tuple[V.Vector, V.Vector, V.Vector],
    history: list[float],
    extra: dict[str, Any],
    *,
    datasets: Sequence[str] | None,
    strategy: str,
) -> CurveFit:
    """The fitted curve and the line evaluated, with their metadata and every barrier."""
    a, theta, b = points
    t_eval = time.perf_counter()
    dirs = [V.sub(theta, a), V.sub(b, a)]
    t, values, line_values, info = _evaluate(
        land, s.kind, a, dirs, s.steps, datasets=datasets, strategy=strategy
    )
    meta = result_meta(
        land,
        a,
        [Direction(dirs[0], kind="bend"), Direction(dirs[1], kind="between")],
        info,
        **extra,
        steps=s.steps,
        distance=float(V.norm(dirs[1])),
        bend_offset=float(V.norm(V.sub(theta, V.scale(V.add(a, b), 0.5)))),
        seconds_eval=time.perf_counter() - t_eval,
        batchnorm=_BN_NOTE if bn_layers(land.model) else None,
    )
    key = f"{land.default_dataset}/loss"
    fit = CurveFit(
        kind=s.kind.value,
        a=a,
        b=b,
        bend=theta,
        t=t,
        values=values,
        line_values=line_values,
        barrier_curve=barrier(values[key], t, key=key),
        barrier_line=barrier(line_values[key], t, key=key),
        history=np.asarray(history, dtype=np.float64),
        meta=meta,
    )
    fit.meta["barrier"] = {
        "curve": barriers(fit.to_curve("curve")),
        "line": barriers(fit.to_curve("line")),
    }
    return fit
