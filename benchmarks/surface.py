"""Time a loss plane (41 × 41 = 1681 points) with lossmap, a naive loop and loss-landscapes.

Usage::

    python benchmarks/surface.py            # 41 × 41, 5 repeats: benchmarks/results/surface.md
    python benchmarks/surface.py --quick    # 11 × 11, 1 repeat: results/surface-quick.md
    python benchmarks/surface.py --models AC --steps 21 --repeats 3

Five models, each evaluated on one full-batch data set (the loss only, no metrics):

- A, compute-bound: a 64-128-128-10 ReLU MLP on the 1,437 digits training images;
- B, overhead-bound: the seed's logistic regression (float64, 2 -> 1, 400 samples);
- C, overhead-bound: a 16-16-3 tanh MLP on 512 generated samples;
- D, compute-bound, not an ``nn.Sequential``: a residual CNN with BatchNorm (eval
  mode, 5,306 parameters) on 512 images 3 × 16 × 16 (at most 9 × 9 points: ~0.05 s
  per forward; loss-landscapes is not run on it);
- E, overhead-bound, a Sequential whose chain vmap must run: a 16-32-3 ReLU MLP with
  BatchNorm on C's data.

Then, under load (two busy-loop processes running), auto and every strategy are timed
20 times round-robin on B, C and E (31 × 31) and A (21 × 21): how often auto picked
each strategy, whether its values were the same bits every time, and its time against
the fastest strategy and the naive loop in the same repeats.

Methods, timed round-robin (one untimed warm-up each, then the median of the repeats;
the minimum is shown too, as the machine may be shared):

1. the naive loop: a copy of the model, ``p.copy_(θ0 + α d1 + β d2)`` and one full-batch
   forward per point (the baseline);
2. loss-landscapes' ``random_plane`` (its own random directions, ``normalization="filter"``,
   ``distance`` chosen so its grid step equals ours);
3. ``lossmap.plane`` with ``strategy="auto"`` (its timing trial included) and with every
   eligible explicit strategy;
4. one full-batch forward + criterion under ``torch.inference_mode`` (the unit of cost).

Checks: every lossmap strategy agrees with the naive loop at every grid point (relative
1e-4, else the script exits with status 1). loss-landscapes is compared value for value
through ``planar_interpolation`` (end models built so that its directions equal ours)
and through ``random_plane`` with our directions injected: the grid offsets it really
evaluates are found by matching its values against lossmap at shifted coordinates.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from _machine import code_state, cpu_model, version
from _models import ResidualCNN
from torch import Tensor, nn

import lossmap as lm
from lossmap import vectors as V
from lossmap.evaluate import Span
from lossmap.evaluate import run as run_points
from lossmap.examples import digits_data, logistic_regression_data, make_mlp, train
from lossmap.slices import grid

try:  # the peer library is optional (the "bench" extra)
    import loss_landscapes
    import loss_landscapes.main as ll_main
    from loss_landscapes.metrics import Loss as LLLoss
    from loss_landscapes.model_interface.model_parameters import ModelParameters

    LL_ERROR = ""
except ImportError as e:  # pragma: no cover - depends on the environment
    loss_landscapes = None
    LL_ERROR = f"not installed ({e}); pip install -e '.[bench]'"

STRATEGIES = ("loop", "vmap", "affine", "affine-vmap")
SPAN = (-1.0, 1.0)
REL_TOL = 1e-4
RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------- problems
@dataclass
class Problem:
    """A model, its loss, one full-batch data set, a landscape and two directions."""

    key: str
    name: str
    model: nn.Module
    criterion: nn.Module
    x: Tensor
    y: Tensor
    land: lm.Landscape = field(init=False)
    d1: dict[str, Tensor] = field(init=False)
    d2: dict[str, Tensor] = field(init=False)
    normalization: str = "filter"
    ignore: tuple[str, ...] = ("bias", "norm")
    max_steps: int | None = None  # a cap on points per axis (slow models)
    peer: bool = True  # run loss-landscapes on it

    def __post_init__(self) -> None:
        self.model.eval()
        self.land = lm.Landscape(self.model, self.criterion, data=(self.x, self.y), metrics={})
        d1, d2 = lm.directions.random(
            self.land, 2, normalization=self.normalization, ignore=self.ignore, seed=0
        )
        self.d1, self.d2 = dict(d1), dict(d2)

    @property
    def n_params(self) -> int:
        return self.land.num_parameters

    @property
    def n_samples(self) -> int:
        return int(self.x.shape[0])


def mlp_digits() -> Problem:
    """A: the compute-bound case, a 64-128-128-10 ReLU MLP on the digits training set."""
    x, y = digits_data()["train"]
    model = make_mlp([64, 128, 128, 10], seed=0)
    train(model, nn.CrossEntropyLoss(), x, y, epochs=5, batch_size=64, lr=1e-3, seed=0)
    return Problem("A", "MLP 64-128-128-10 (digits)", model, nn.CrossEntropyLoss(), x, y)


def logreg() -> Problem:
    """B: the seed's logistic regression (float64), rebuilt without the accuracy metric."""
    model = lm.examples.logistic_regression().model
    x, y = logistic_regression_data()
    return Problem(
        "B",
        "logistic regression (f64)",
        model,
        nn.BCEWithLogitsLoss(),
        x,
        y,
        normalization="unit",
        ignore=(),
    )


def tanh_mlp() -> Problem:
    """C: a 16-16-3 tanh MLP on 512 samples labelled by a random linear teacher."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=gen)
    teacher = torch.randn(16, 3, generator=gen)
    y = (x @ teacher).argmax(dim=1)
    model = make_mlp([16, 16, 3], activation="tanh", seed=0)
    train(model, nn.CrossEntropyLoss(), x, y, steps=200, lr=1e-2, seed=0)
    return Problem("C", "MLP 16-16-3 tanh (512 samples)", model, nn.CrossEntropyLoss(), x, y)


def residual_cnn() -> Problem:
    """D: a residual CNN with BatchNorm, 512 images labelled by a random linear teacher."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, 16, 16, generator=gen)
    y = (x.mean(dim=(2, 3)) @ torch.randn(3, 10, generator=gen)).argmax(dim=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ResidualCNN()
    train(model, nn.CrossEntropyLoss(), x, y, steps=20, lr=1e-2, seed=0)
    return Problem(
        "D",
        "residual CNN + BatchNorm (512 × 3×16×16)",
        model,
        nn.CrossEntropyLoss(),
        x,
        y,
        max_steps=9,
        peer=False,
    )


def batchnorm_mlp() -> Problem:
    """E: a 16-32-3 ReLU MLP with BatchNorm on C's data."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=gen)
    y = (x @ torch.randn(16, 3, generator=gen)).argmax(dim=1)
    model = make_mlp([16, 32, 3], seed=0, batchnorm=True)
    train(model, nn.CrossEntropyLoss(), x, y, steps=200, lr=1e-2, seed=0)
    return Problem("E", "MLP 16-32-3 + BatchNorm (512 samples)", model, nn.CrossEntropyLoss(), x, y)


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "A": mlp_digits,
    "B": logreg,
    "C": tanh_mlp,
    "D": residual_cnn,
    "E": batchnorm_mlp,
}


# ------------------------------------------------------------------ methods
def naive_plane(p: Problem, alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """The baseline: write each point into a copy of the model, one forward per point."""
    model = copy.deepcopy(p.model)
    params = dict(model.named_parameters())
    theta = p.land.point()
    out = np.empty((len(alphas), len(betas)))
    with torch.no_grad():
        for i, a in enumerate(alphas):
            for j, b in enumerate(betas):
                for k, t in params.items():
                    t.copy_(theta[k] + float(a) * p.d1[k] + float(b) * p.d2[k])
                out[i, j] = p.criterion(model(p.x), p.y).item()
    return out


def lossmap_plane(p: Problem, steps: int, strategy: str) -> lm.Surface:
    return lm.plane(p.land, p.d1, p.d2, span=SPAN, steps=steps, strategy=strategy)


def ll_distance(p: Problem, steps: int) -> float:
    """The ``distance`` that makes loss-landscapes' step equal ours.

    ``random_plane`` scales each direction to ``||θ0|| / distance / steps``; our step is
    ``h * d1`` with ``h = (hi - lo) / (steps - 1)``.
    """
    h = (SPAN[1] - SPAN[0]) / (steps - 1)
    return float(V.norm(p.land.point())) / (steps * h * float(V.norm(p.d1)))


def ll_random_plane(p: Problem, steps: int) -> np.ndarray:
    metric = LLLoss(p.criterion, p.x, p.y)
    return loss_landscapes.random_plane(
        p.model,
        metric,
        distance=ll_distance(p, steps),
        steps=steps,
        normalization="filter",
        deepcopy_model=True,
    )


def forward_ms(p: Problem, n: int) -> float:
    """Median time of one full-batch forward + criterion (ms)."""
    times = []
    with torch.inference_mode():
        for _ in range(n):
            t0 = time.perf_counter()
            p.criterion(p.model(p.x), p.y)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


# --------------------------------------------------- loss-landscapes' grid
def _model_at(p: Problem, point: dict[str, Tensor]) -> nn.Module:
    m = copy.deepcopy(p.model)
    with torch.no_grad():
        for k, t in m.named_parameters():
            t.copy_(point[k])
    return m


def ll_planar(p: Problem, steps: int) -> np.ndarray:
    """``planar_interpolation`` from our corner ``θ0 + lo d1 + lo d2`` with end models
    ``corner + steps h d_k``: its directions are then ours (step ``h d_k``), and if it
    walked our grid, its ``[i, j]`` would be our ``[i, j]``."""
    h = (SPAN[1] - SPAN[0]) / (steps - 1)
    corner = V.add(V.add(p.land.point(), p.d1, alpha=SPAN[0]), p.d2, alpha=SPAN[0])
    ends = [V.add(corner, d, alpha=steps * h) for d in (p.d1, p.d2)]
    return loss_landscapes.planar_interpolation(
        _model_at(p, corner),
        _model_at(p, ends[0]),
        _model_at(p, ends[1]),
        LLLoss(p.criterion, p.x, p.y),
        steps=steps,
        deepcopy_model=True,
    )


def ll_random_plane_ours(p: Problem, steps: int) -> np.ndarray:
    """``random_plane`` itself with our two directions injected in place of its draws
    (``normalization=None``; ``distance`` makes its step ``h d_k``). Needs ``||d1|| =
    ||d2||``, true for our filter- and unit-normalised directions."""
    names = list(p.land.point())

    def as_ll(d: dict[str, Tensor]) -> Callable[[Any], ModelParameters]:
        return lambda *_: ModelParameters([d[k].clone() for k in names])

    with (
        mock.patch.object(ll_main, "rand_u_like", as_ll(p.d1)),
        mock.patch.object(ll_main, "orthogonal_to", as_ll(p.d2)),
    ):
        return loss_landscapes.random_plane(
            p.model,
            LLLoss(p.criterion, p.x, p.y),
            distance=ll_distance(p, steps),
            steps=steps,
            normalization=None,
            deepcopy_model=True,
        )


def lossmap_at(p: Problem, coeffs: np.ndarray) -> np.ndarray:
    """lossmap's loss at ``θ0 + c0 d1 + c1 d2`` for each row of ``coeffs``."""
    res = run_points(p.land, Span(p.land.point(), [p.d1, p.d2], coeffs))
    return res.values[f"{p.land.default_dataset}/loss"]


OFFSETS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # candidate grid offsets, in steps


def fit_offsets(p: Problem, values: np.ndarray) -> dict[str, Any]:
    """Which points a loss-landscapes grid really holds, relative to ours.

    Row ``i``, column ``j`` of ``values`` is matched against lossmap at
    ``(lo + (i + oi) h, lo + (j + oj) h)`` for half-step offsets ``(oi, oj)``, on a few
    rows of each parity; the best offset per row parity is then checked on every point.
    """
    steps = values.shape[0]
    h = (SPAN[1] - SPAN[0]) / (steps - 1)
    rows = sorted({0, 1, 2, 3, steps - 2, steps - 1})
    cands = [(oi, oj) for oi in OFFSETS for oj in OFFSETS]
    j = np.arange(steps)
    coeffs = np.concatenate(
        [
            np.stack([np.full(steps, SPAN[0] + (i + oi) * h), SPAN[0] + (j + oj) * h], axis=1)
            for i in rows
            for oi, oj in cands
        ]
    )
    ours = lossmap_at(p, coeffs).reshape(len(rows), len(cands), steps)
    best: dict[int, tuple[float, float]] = {}
    separation = np.inf  # error of the runner-up / error of the best offset
    for r, i in enumerate(rows):
        err = np.abs(ours[r] - values[i]).max(axis=1)
        order = np.argsort(err)
        best[i] = cands[int(order[0])]
        separation = min(separation, err[order[1]] / max(err[order[0]], 1e-300))
    by_parity = {par: {best[i] for i in rows if i % 2 == par} for par in (0, 1)}
    consistent = all(len(s) == 1 for s in by_parity.values())
    out: dict[str, Any] = {
        "even": sorted(by_parity[0]),
        "odd": sorted(by_parity[1]),
        "consistent": consistent,
        "separation": float(separation),
        "as_ours_abs": None,
    }
    if consistent:
        off = {par: next(iter(s)) for par, s in by_parity.items()}
        ii, jj = np.meshgrid(np.arange(steps), j, indexing="ij")
        oi = np.where(ii % 2 == 0, off[0][0], off[1][0])
        oj = np.where(ii % 2 == 0, off[0][1], off[1][1])
        a, b = SPAN[0] + (ii + oi) * h, SPAN[0] + (jj + oj) * h
        ref = lossmap_at(p, np.stack([a.ravel(), b.ravel()], axis=1)).reshape(steps, steps)
        out["fitted_abs"] = float(np.abs(ref - values).max())
        out["fitted_rel"] = float((np.abs(ref - values) / np.abs(ref)).max())
        out["theta0_on_grid"] = bool(np.any((np.abs(a) < 1e-9 * h) & (np.abs(b) < 1e-9 * h)))
        out["alpha_range"] = (float(a.min()), float(a.max()))
        out["beta_range"] = (float(b.min()), float(b.max()))
    return out


# ------------------------------------------------------------------ timing
def median_ms_per_point(times: list[float], n_points: int) -> float:
    return 1000 * statistics.median(times) / n_points


def rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    return float((np.abs(a - ref) / np.maximum(np.abs(ref), 1e-300)).max())


def log(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def bench_problem(p: Problem, steps: int, repeats: int, n_forward: int) -> dict[str, Any]:
    """Time every method on ``p`` (round-robin over the repeats) and check the values.

    ``n_forward``: forwards per repeat for the unit of cost (their median).
    """
    log("warm-up")
    steps = min(steps, p.max_steps or steps)
    alphas = betas = grid(SPAN[0], SPAN[1], steps)
    n = steps * steps
    # One untimed run of each method (warm-up; its values serve the numerical checks).
    naive = naive_plane(p, alphas, betas)
    auto = lossmap_plane(p, steps, "auto")
    eligible = [s for s in STRATEGIES if s in auto.meta["engine"]["eligible"]]
    values = {"auto": auto["loss"]}
    for s in eligible:
        values[s] = lossmap_plane(p, steps, s)["loss"]
    ll_ok, ll_note = loss_landscapes is not None, LL_ERROR
    if not p.peer:
        ll_ok, ll_note = False, "not run (cost)"
    if ll_ok:
        try:
            ll_random_plane(p, steps)
        except Exception as e:  # report, do not crash: the peer's limits are a result
            ll_ok, ll_note = False, f"fails: {type(e).__name__}: {str(e).splitlines()[0][:80]}"

    methods: dict[str, Callable[[], Any]] = {
        "naive": lambda: naive_plane(p, alphas, betas),
        "auto": lambda: lossmap_plane(p, steps, "auto"),
        **{s: functools.partial(lossmap_plane, p, steps, s) for s in eligible},
    }
    if ll_ok:
        methods["loss-landscapes"] = lambda: ll_random_plane(p, steps)
    log(f"timing {', '.join(methods)}, forward; {repeats} repeat(s)")
    times: dict[str, list[float]] = {k: [] for k in methods}
    fwd: list[float] = []
    picks: list[str] = []
    order = list(methods)
    for r in range(repeats):
        # The unit of cost is measured in the same time windows as the methods.
        fwd.append(forward_ms(p, n_forward))
        # Rotate the order every repeat: whichever method runs right after the naive
        # loop (which allocates a model copy per plane) starts with colder caches.
        for k in order[r % len(order) :] + order[: r % len(order)]:
            fn = methods[k]
            t0 = time.perf_counter()
            res = fn()
            times[k].append(time.perf_counter() - t0)
            if k == "auto":
                picks.append(res.meta["engine"]["strategy"])

    out: dict[str, Any] = {
        "problem": p,
        "steps": steps,
        "n_points": n,
        "forward_ms": statistics.median(fwd),
        "ms": {k: median_ms_per_point(v, n) for k, v in times.items()},
        "ms_min": {k: 1000 * min(v) / n for k, v in times.items()},
        "picks": Counter(picks),
        "reason": auto.meta["engine"].get("reason", ""),
        "eligible": eligible,
        "ll_note": ll_note,
        "abs": {k: float(np.abs(v - naive).max()) for k, v in values.items()},
        "rel": {k: rel_diff(v, naive) for k, v in values.items()},
    }
    if ll_ok:
        log("where loss-landscapes evaluates")
        ll: dict[str, Any] = {}
        calls: dict[str, Callable[[Problem, int], np.ndarray]] = {
            "planar_interpolation": ll_planar,
            "random_plane": ll_random_plane_ours,
        }
        for label, call in calls.items():
            vals = call(p, steps)
            fit = fit_offsets(p, vals)
            fit["as_ours_abs"] = float(np.abs(vals - naive).max())
            ll[label] = fit
        out["ll_grid"] = ll
    return out


# ------------------------------------------------------------- under load
LOAD_STEPS = {"A": 21}  # points per axis under load (default LOAD_STEPS_DEFAULT)
LOAD_STEPS_DEFAULT = 31
LOAD_MODELS = "ABCE"  # D is too slow to plot 20 times
BUSY = "while True: pass"


def bench_under_load(p: Problem, steps: int, repeats: int, busy: int) -> dict[str, Any]:
    """auto, every eligible strategy and the naive loop, ``repeats`` times round-robin
    while ``busy`` busy-loop processes compete for the cores."""
    alphas = betas = grid(SPAN[0], SPAN[1], steps)
    n = steps * steps
    auto0 = lossmap_plane(p, steps, "auto")  # warm-up
    eligible = [s for s in STRATEGIES if s in auto0.meta["engine"]["eligible"]]
    methods: dict[str, Callable[[], Any]] = {
        "naive": lambda: naive_plane(p, alphas, betas),
        "auto": lambda: lossmap_plane(p, steps, "auto"),
        **{s: functools.partial(lossmap_plane, p, steps, s) for s in eligible},
    }
    for s in eligible:
        methods[s]()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in methods}
    picks: list[str] = []
    same_bits = True
    order = list(methods)
    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        time.sleep(1.0)  # let the busy loops get going
        load0 = os.getloadavg()[0]
        for r in range(repeats):
            for k in order[r % len(order) :] + order[: r % len(order)]:
                t0 = time.perf_counter()
                res = methods[k]()
                times[k].append(1000 * (time.perf_counter() - t0) / n)
                if k == "auto":
                    picks.append(res.meta["engine"]["strategy"])
                    same_bits &= bool(np.array_equal(res["loss"], auto0["loss"]))
        load1 = os.getloadavg()[0]
    finally:
        for pr in procs:
            pr.kill()
            pr.wait()
    med = {k: statistics.median(v) for k, v in times.items()}
    fastest = min(eligible, key=lambda s: med[s])
    per_rep_fastest = [min(times[s][r] for s in eligible) for r in range(repeats)]
    return {
        "problem": p,
        "n_points": n,
        "repeats": repeats,
        "busy": busy,
        "load": (load0, load1),
        "picks": Counter(picks),
        "same_bits": same_bits,
        "ms": med,
        "fastest": fastest,
        "pick_vs_fastest": max(med[s] for s in set(picks)) / med[fastest],
        "worst_vs_fastest": max(a / f for a, f in zip(times["auto"], per_rep_fastest, strict=True)),
        "worst_vs_naive": min(nv / a for nv, a in zip(times["naive"], times["auto"], strict=True)),
        "median_vs_naive": med["naive"] / med["auto"],
    }


def load_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    r0 = rows[0]
    out = [
        "## Under load: the choice repeated",
        "",
        f"Each model's plane {r0['repeats']} times, auto, every eligible strategy and the "
        f"naive loop round-robin, while {r0['busy']} busy-loop processes run "
        "(`python -c 'while True: pass'`) on this 2-core machine. auto ÷ fastest: auto's "
        "median ms/pt over the median of the fastest strategy; worst repeat: auto over the "
        "fastest strategy in that repeat (both noisy under load: the pick itself is the same "
        "every time).",
        "",
        "| model | points | load avg (start / end) | auto's picks | same bits every run "
        "| auto ms/pt | fastest strategy (ms/pt) | pick ÷ fastest (medians) "
        "| auto ÷ fastest, worst repeat | speed-up vs naive, median (worst repeat) |",
        "|---|---:|---|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        picks = ", ".join(f"{k} ×{v}" for k, v in r["picks"].most_common())
        out.append(
            f"| {r['problem'].key} | {r['n_points']:,} | {r['load'][0]:.1f} / {r['load'][1]:.1f} "
            f"| {picks} | {'yes' if r['same_bits'] else 'NO'} | {fmt(r['ms']['auto'])} "
            f"| {r['fastest']} ({fmt(r['ms'][r['fastest']])}) | {r['pick_vs_fastest']:.2f} "
            f"| {r['worst_vs_fastest']:.2f} "
            f"| {r['median_vs_naive']:.2f}× ({r['worst_vs_naive']:.2f}×) |"
        )
    out += ["", "Median ms/pt per method under load:", ""]
    out += [
        f"- {r['problem'].key}: " + ", ".join(f"{k} {fmt(v)}" for k, v in r["ms"].items())
        for r in rows
    ]
    return [*out, ""]


def load_goals(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        key = r["problem"].key
        ok = r["pick_vs_fastest"] <= 1.5
        out.append(
            f"| {key} | under load: auto's pick within 1.5× of the fastest strategy "
            f"| {r['pick_vs_fastest']:.2f} | {'yes' if ok else 'NO'} |"
        )
        out.append(
            f"| {key} | under load: auto's values the same bits in every run "
            f"| {r['repeats'] + 1} runs | {'yes' if r['same_bits'] else 'NO'} |"
        )
    return out


# ------------------------------------------------------------------ report


def header(steps: int, repeats: int, load: tuple[float, float], code: str) -> list[str]:
    cpu = cpu_model()
    return [
        f"# lossmap surface benchmark: {steps} × {steps} plane ({steps * steps} points; "
        "model D at most 9 × 9)",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu} ({os.cpu_count()} logical cores), torch threads: {torch.get_num_threads()}",
        f"- torch {torch.__version__}, numpy {np.__version__}, python "
        f"{platform.python_version()}, lossmap {lm.__version__} ({code}), "
        f"loss-landscapes {version('loss-landscapes')}",
        "- command: `python benchmarks/surface.py` (or `make bench`)",
        f"- median of {repeats} repeat(s) of the whole plane after one warm-up, methods "
        "timed round-robin in a rotating order; ms/pt = plane time / points; lossmap auto includes "
        "its choice (a rule on the model's shape; a vmap probe on two points); forward = median "
        "of one full-batch forward + criterion in inference mode, measured in every repeat",
        f"- 1-minute load average at start / end: {load[0]:.2f} / {load[1]:.2f} (the machine "
        "is shared: compare methods within one run)",
        "",
    ]


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}"


def main_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Whole plane, per point",
        "",
        "| model | params | samples | points | naive ms/pt | loss-landscapes ms/pt "
        "| lossmap auto ms/pt (strategy) | speed-up vs naive | lossmap ms/pt ÷ forward "
        "| max abs Δ vs naive (rel) |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        p: Problem = r["problem"]
        ms = r["ms"]
        ll = fmt(ms["loss-landscapes"]) if "loss-landscapes" in ms else r["ll_note"]
        picks = ", ".join(f"{k} ×{v}" for k, v in r["picks"].most_common())
        out.append(
            f"| {p.key}. {p.name} | {p.n_params:,} | {p.n_samples:,} | {r['n_points']:,} "
            f"| {fmt(ms['naive'])} "
            f"| {ll} | {fmt(ms['auto'])} ({picks}) | {ms['naive'] / ms['auto']:.2f}× "
            f"| {ms['auto'] / r['forward_ms']:.2f} "
            f"| {r['abs']['auto']:.2e} ({r['rel']['auto']:.1e}) |"
        )
    out += [
        "",
        "One full-batch forward + criterion (inference mode): "
        + "; ".join(f"{r['problem'].key} {r['forward_ms']:.4f} ms" for r in rows)
        + ".",
        "",
    ]
    return out


def strategy_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## lossmap strategies",
        "",
        "| model | method | ms/pt median (min) | speed-up vs naive "
        "| speed-up vs loss-landscapes | ÷ forward | max rel Δ vs naive |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        key = r["problem"].key
        ll = r["ms"].get("loss-landscapes")
        for s in ("naive", "loss-landscapes", "auto", *r["eligible"]):
            if s not in r["ms"]:
                continue
            ms = r["ms"][s]
            label = s
            if s == "auto":
                label = "lossmap auto → "
                label += ", ".join(f"{k} ×{v}" for k, v in r["picks"].most_common())
            elif s in STRATEGIES:
                label = f"lossmap {s}"
            vs_ll = f"{ll / ms:.2f}×" if ll else "–"
            rel = f"{r['rel'][s]:.1e}" if s in r["rel"] else "–"
            out.append(
                f"| {key} | {label} | {fmt(ms)} ({fmt(r['ms_min'][s])}) "
                f"| {r['ms']['naive'] / ms:.2f}× | {vs_ll} | {ms / r['forward_ms']:.2f} | {rel} |"
            )
    out += ["", "auto's reasons (its rule, no timing):", ""]
    out += [f"- {r['problem'].key}: {r['reason']}" for r in rows]
    return [*out, ""]


def _offsets(s: list[tuple[float, float]]) -> str:
    return " / ".join(f"({oi:+g}, {oj:+g})" for oi, oj in s) or "–"


def ll_table(rows: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in rows if "ll_grid" in r]
    if not rows:
        return []
    out = [
        "## Where loss-landscapes evaluates (with our directions)",
        "",
        "Its value `[i, j]` (i along d1) matched against lossmap at "
        "`(lo + (i + oi) h, lo + (j + oj) h)` on our grid (`h` = our step): the best "
        "half-step offset `(oi, oj)` for even and odd rows, the error there on every "
        "point, and the error if its array is read as our grid.",
        "",
        "| model | call | even rows (oi, oj) | odd rows (oi, oj) | α range | β range "
        "| θ0 on its grid | max abs Δ at fitted points (rel) | runner-up / best error "
        "| max abs Δ read as our grid |",
        "|---|---|---|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        for call, f in r["ll_grid"].items():
            if f["consistent"]:
                fitted = f"{f['fitted_abs']:.1e} ({f['fitted_rel']:.1e})"
                ar = "[{:+.3f}, {:+.3f}]".format(*f["alpha_range"])
                br = "[{:+.3f}, {:+.3f}]".format(*f["beta_range"])
                on = "yes" if f["theta0_on_grid"] else "no"
            else:
                fitted, ar, br, on = "no consistent offset", "–", "–", "–"
            out.append(
                f"| {r['problem'].key} | {call} | {_offsets(f['even'])} | {_offsets(f['odd'])} "
                f"| {ar} | {br} | {on} | {fitted} | {f['separation']:.2g} "
                f"| {f['as_ours_abs']:.2e} |"
            )
    return [*out, ""]


def speedup(r: dict[str, Any]) -> float:
    """Naive-loop time over lossmap-auto time."""
    return r["ms"]["naive"] / r["ms"]["auto"]


def forwards(r: dict[str, Any]) -> float:
    """lossmap-auto's cost per point in full-batch forward passes."""
    return r["ms"]["auto"] / r["forward_ms"]


GOALS = (
    ("A", "lossmap ≤ 1.0 full-batch forward per point", forwards, "≤", 1.0),
    ("A", "lossmap ≥ 1.2× faster than the naive loop", speedup, "≥", 1.2),
    ("B", "lossmap ≥ 10× faster than the naive loop", speedup, "≥", 10.0),
    ("C", "lossmap ≥ 10× faster than the naive loop", speedup, "≥", 10.0),
    ("*", "lossmap never slower than the naive loop", speedup, "≥", 1.0),
)


def goals_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## Goals", "", "| model | goal | measured | holds |", "|---|---|---:|---|"]
    for key, text, value, op, bound in GOALS:
        for r in rows:
            if key not in ("*", r["problem"].key):
                continue
            v = value(r)
            ok = v <= bound if op == "≤" else v >= bound
            out.append(f"| {r['problem'].key} | {text} | {v:.2f} | {'yes' if ok else 'NO'} |")
    return [*out, ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="11 × 11, 1 repeat (smoke test)")
    ap.add_argument("--steps", type=int, default=None, help="points per axis (default 41)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5)")
    ap.add_argument("--models", default="ABCDE", help="which models, e.g. 'AC' (default ABCDE)")
    ap.add_argument(
        "--load-repeats",
        type=int,
        default=None,
        help="planes per method under load (default 20, --quick 3; 0: skip)",
    )
    ap.add_argument("--busy", type=int, default=2, help="busy-loop processes under load")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = ap.parse_args(argv)
    steps = args.steps or (11 if args.quick else 41)
    repeats = args.repeats or (1 if args.quick else 5)
    load_repeats = args.load_repeats if args.load_repeats is not None else (3 if args.quick else 20)
    if steps < 3 or repeats < 1:
        ap.error("--steps must be >= 3 and --repeats >= 1")
    unknown = set(args.models) - set(PROBLEMS)
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}; choose from {''.join(PROBLEMS)}")
    out_path = args.out or RESULTS / ("surface-quick.md" if args.quick else "surface.md")

    load0, code = os.getloadavg()[0], code_state()
    rows = []
    for key in PROBLEMS:
        if key in args.models:
            p = PROBLEMS[key]()
            print(f"[{key}] {p.name}: {p.n_params:,} parameters ...", file=sys.stderr, flush=True)
            rows.append(bench_problem(p, steps, repeats, n_forward=20 if args.quick else 50))
    loaded = []
    if load_repeats > 0:
        for r in rows:
            p = r["problem"]
            if p.key in LOAD_MODELS:
                k = 11 if args.quick else LOAD_STEPS.get(p.key, LOAD_STEPS_DEFAULT)
                print(f"[{p.key}] under load, {k} × {k} ...", file=sys.stderr, flush=True)
                loaded.append(bench_under_load(p, k, load_repeats, args.busy))

    lines = header(steps, repeats, (load0, os.getloadavg()[0]), code)
    lines += main_table(rows) + strategy_table(rows) + ll_table(rows) + load_table(loaded)
    lines += goals_table(rows)[:-1] + load_goals(loaded) + [""]
    bad = [
        f"{r['problem'].key}/{s}: max rel Δ {v:.2e}"
        for r in rows
        for s, v in r["rel"].items()
        if not v <= REL_TOL
    ]
    lines.append(
        f"Numerical check (every lossmap strategy vs the naive loop, rel ≤ {REL_TOL:g}): "
        + ("FAILED: " + "; ".join(bad) if bad else "passed.")
    )
    text = "\n".join(lines) + "\n"
    print(text)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    print(f"written to {out_path}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
