"""Average-case sharpness ``E_δ[L(θ + δ)] − L(θ)`` by Monte Carlo."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.stats
import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap.landscape import Landscape
from lossmap.sharpness._common import (
    ANDRIUSHCHENKO,
    KESKAR,
    count,
    finite,
    generator,
    positive,
    setup,
)
from lossmap.store import Blobs


@dataclass
class Average:
    """Average-case sharpness ``E[L(θ+δ)] − L(θ)`` by Monte Carlo.

    ``stderr`` is the standard error of the mean increase, ``ci`` a 95 % Student-t
    interval (``interval(level)`` for another level; measured coverage of
    ``± 2·stderr`` over 500 seeds in ``benchmarks/results/coverage.md``); ``losses`` holds ``L(θ + δ_j)`` for every sample ``j`` (``[samples]``);
    ``evaluations`` counts the points evaluated by this call (chunks restored from a
    journal are not counted).
    """

    value: float
    stderr: float
    ci: tuple[float, float]
    loss: float
    avg_loss: float
    samples: int
    evaluations: int
    seconds: float
    losses: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    meta: dict[str, Any] = field(default_factory=dict)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The two-sided ``level`` Student-t interval ``value ± t_{samples-1} · stderr``
        (``ci`` is ``interval(0.95)``; the samples are independent, so the t with
        ``samples - 1`` degrees of freedom is the textbook reference).

        >>> a = Average(1.0, 0.1, (0.0, 0.0), 0.0, 1.0, 10, 10, 0.0)
        >>> [round(x, 4) for x in a.interval(0.9)]
        [0.8167, 1.1833]
        """
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), e.g. 0.95, got {level!r}")
        half = float(scipy.stats.t.ppf(0.5 + level / 2, self.samples - 1)) * self.stderr
        return (self.value - half, self.value + half)


def average(
    land: Landscape,
    sigma: float,
    *,
    samples: int = 100,
    adaptive: bool = False,
    seed: int = 0,
    point: Mapping[str, Tensor] | None = None,
    dataset: str | None = None,
    chunk: int = 50,
    journal: Blobs | None = None,
    ignore: Sequence[str] = (),
    strategy: str = "auto",
) -> Average:
    """Average-case sharpness: ``E_δ[L(θ + δ)] − L(θ)`` by Monte Carlo.

    Plain: ``δ ~ N(0, σ² I)``. Adaptive (``adaptive=True``): ``δ = σ |θ| ⊙ z``,
    ``z ~ N(0, I)``, invariant to the rescalings of ReLU networks that keep the
    function (Andriushchenko et al. 2023, who call these average-case adaptive
    sharpness; the Gaussian perturbation is the PAC-Bayes view of flatness, Jiang et
    al. 2020, "Fantastic Generalization Measures and Where to Find Them", ICLR).

    The ``samples`` points are evaluated in chunks of ``chunk``, one batched
    ``land.evaluate`` call per chunk. Chunk ``i`` draws its noise from a generator
    seeded by ``(seed, i)`` (float64 on the CPU), so a chunk gives the same numbers
    whether or not the chunks before it were recomputed; the draws do depend on
    ``chunk``. With a ``journal``, chunk ``i``'s losses are stored under
    ``"average/{i}"`` and reused on a rerun: one journal per set of arguments.

    Args:
        land: the landscape.
        sigma: the noise scale σ (> 0).
        samples: Monte Carlo samples (≥ 2, for the standard error).
        adaptive: scale the noise by ``|θ|`` elementwise.
        seed: the noise seed.
        point, dataset, ignore: as in :func:`epsilon` (ignored parameters get no noise).
        chunk: points per ``evaluate`` call.
        journal: an object with ``get(key)`` / ``put(key, array)``
            (``lossmap.store.Journal``), for resume.
        strategy: the evaluation strategy (see :mod:`lossmap.evaluate`); fix it
            (e.g. ``"vmap"``) for bit-identical resumes across processes, since
            ``"auto"`` picks by timing.

    Returns:
        :class:`Average`: the mean increase, its standard error, a 95 % interval.

    Raises:
        ValueError: ``sigma`` not positive, ``samples < 2`` or ``chunk < 1``.

    >>> from lossmap.examples import quadratic as quadratic_landscape
    >>> land = quadratic_landscape(np.eye(3))
    >>> a = average(land, 0.1, samples=400)
    >>> a.ci[0] < 0.015 < a.ci[1]  # ½ σ² tr H
    True
    """
    sigma = positive(sigma, "sigma", "e.g. sigma=0.01")
    samples = count(samples, "samples", 2)
    chunk = count(chunk, "chunk", 1)
    t0 = time.perf_counter()
    theta, ds, mask = setup(land, point, dataset, ignore)
    flat = V.flatten(theta)
    scale = sigma * (flat.abs() if adaptive else torch.ones_like(flat)) * mask
    loss0 = finite(float(land.evaluate([theta], datasets=[ds], strategy=strategy)[f"{ds}/loss"][0]))
    losses, evaluated, restored = _sample_losses(
        land,
        theta,
        scale,
        ds,
        samples=samples,
        chunk=chunk,
        seed=seed,
        journal=journal,
        strategy=strategy,
    )
    meta: dict[str, Any] = {
        "definition": (
            "E_z[L(θ + sigma |θ| ⊙ z)] - L(θ), z ~ N(0, I)"
            if adaptive
            else "E_z[L(θ + sigma z)] - L(θ), z ~ N(0, I)"
        ),
        "paper": ANDRIUSHCHENKO if adaptive else f"{KESKAR}; {ANDRIUSHCHENKO}",
        "sigma": sigma,
        "samples": samples,
        "adaptive": bool(adaptive),
        "seed": int(seed),
        "chunk": chunk,
        "dataset": ds,
        "ignore": list(ignore),
        "chunks_restored": restored,
        "nonfinite": int((~np.isfinite(losses)).sum()),
    }
    return _summary(losses, loss0, evaluated, time.perf_counter() - t0, meta)


def _summary(
    losses: np.ndarray, loss0: float, evaluated: int, seconds: float, meta: dict[str, Any]
) -> Average:
    """The mean increase over the samples, its standard error and 95 % Student-t interval."""
    samples = losses.size
    inc = losses - loss0
    mean = float(inc.mean())
    stderr = float(inc.std(ddof=1) / math.sqrt(samples))
    half = float(scipy.stats.t.ppf(0.975, samples - 1)) * stderr
    return Average(
        value=mean,
        stderr=stderr,
        ci=(mean - half, mean + half),
        loss=loss0,
        avg_loss=float(losses.mean()),
        samples=samples,
        evaluations=evaluated,
        seconds=seconds,
        losses=losses,
        meta=meta,
    )


def _restored(journal: Blobs | None, i: int, m: int) -> np.ndarray | None:
    """Chunk ``i``'s ``m`` losses from the journal, if it holds them."""
    got = journal.get(f"average/{i}") if journal is not None else None
    if got is None:
        return None
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    if got.shape != (m,):
        raise ValueError(
            f"journal entry 'average/{i}' holds {got.size} values, expected {m}: the "
            "journal is from a run with other samples/chunk; use a fresh journal"
        )
    return got


def _sample_losses(
    land: Landscape,
    theta: V.Vector,
    scale: Tensor,
    ds: str,
    *,
    samples: int,
    chunk: int,
    seed: int,
    journal: Blobs | None,
    strategy: str,
) -> tuple[np.ndarray, int, int]:
    """``L(θ + scale ⊙ z_j)`` for every sample ``j``, chunk by chunk (chunk ``i``'s noise
    from the stream ``(seed, i)``), and how many points were evaluated and chunks restored."""
    flat = V.flatten(theta)
    key = f"{ds}/loss"
    losses = np.empty(samples)
    evaluated = 0
    restored = 0
    for i, start in enumerate(range(0, samples, chunk)):
        m = min(chunk, samples - start)
        got = _restored(journal, i, m)
        if got is not None:
            losses[start : start + m] = got
            restored += 1
            continue
        gen = generator(seed, i)
        points = []
        for _ in range(m):
            z = torch.randn(flat.numel(), generator=gen, dtype=torch.float64)
            points.append(V.unflatten(flat + z.to(flat) * scale, theta))
        vals = np.asarray(land.evaluate(points, datasets=[ds], strategy=strategy)[key])
        losses[start : start + m] = vals
        evaluated += m
        if journal is not None:
            journal.put(f"average/{i}", vals.astype(np.float64))
    return losses, evaluated, restored
