"""Do lossmap's error bars cover the truth as often as they claim? (issue #16)

For Hutchinson, Hutch++, XTrace and ``sharpness.average`` at 30, 90 and 300 mat-vecs
(samples for ``average``), on problems whose truth is exact, over many seeds: the
fraction of seeds with ``|estimate − truth| ≤ k · stderr`` for k = 1, 2, 3 (a calibrated
Gaussian error bar: 68.3 / 95.4 / 99.7 %), each with a Wilson 95 % interval, and the
fraction inside ``ci(0.95)`` (Student-t). For XTrace the paper's error estimate
(``meta["stderr_paper"]``, what lossmap reported before) is measured beside the
jackknife that replaced it.

Problems (truth):
- ``logreg``: the seed's logistic regression (``lossmap.examples.logistic_regression``,
  3 parameters): every budget ≥ 3 buys the exact trace; ``average`` (σ = 0.5) against
  ``E[L(θ+δ)] − L(θ)`` by 200-node Gauss–Hermite quadrature, exact to rounding since
  each logit moves by ``N(0, σ²(|x|² + 1))``.
- ``tanh-mlp``/``relu-mlp``: digits MLPs 64-8-10 (610 parameters) trained as in
  ``benchmarks/curvature.py``; truth = trace of the dense float64 Hessian
  (``lossmap.hessian.dense``); the estimators run on that matrix (the same products as
  the HVP, to rounding, and 500 seeds in seconds).
- ``decay``: ``U diag(1/i) Uᵀ``, n = 500, a random orthogonal ``U``: a decaying spectrum
  where the sketch of Hutch++/XTrace matters.
- ``quadratic`` (``average`` only): ``lossmap.examples.quadratic(H)`` with the same
  spectrum at n = 50, at its minimum: ``E[L(θ+δ)] − L(θ) = ½ σ² tr H`` exactly.

The spectral density: W1 to the exact spectrum of the digits MLP A of
``benchmarks/curvature.py`` at 100 HVPs (W1 computed as there), and how often the
exact density broadened with the same σ lies inside ``density ± 2·density_stderr``.

    python benchmarks/coverage.py [--seeds 500] [--no-density]

Writes ``benchmarks/results/coverage.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import lossmap.sharpness as S
from lossmap.examples import digits_data, logistic_regression, make_mlp, quadratic, train
from lossmap.hessian import dense, spectral_density
from lossmap.linalg import hutchinson, hutchpp, xtrace
from lossmap.linalg.trace import Trace
from lossmap.results import broaden

OUT = Path(__file__).parent / "results" / "coverage.md"
BUDGETS = (30, 90, 300)
GAUSS = {1: 68.27, 2: 95.45, 3: 99.73}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95 % interval for a binomial proportion ``k / n``."""
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def cell(hits: np.ndarray) -> str:
    k, n = int(hits.sum()), hits.size
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} ({100 * lo:.0f}–{100 * hi:.0f})"


def row(name: str, budget: int, err: np.ndarray, se: np.ndarray, inside: np.ndarray | None) -> str:
    exact = bool(np.all(se == 0) and np.all(err == 0))
    ks = " | ".join(cell(err <= k * se) for k in (1, 2, 3))
    note = " (exact: budget ≥ n)" if exact else ""
    ratio = np.median(err / np.where(se > 0, se, np.nan)) / 0.6745 if not exact else 0.0
    return (
        f"| {name}{note} | {budget} | {len(err)} | {ks} "
        f"| {'—' if inside is None else cell(inside)} | {ratio:.2f} |"
    )


# ------------------------------------------------------------------ problems
def mlp_hessian(activation: str) -> np.ndarray:
    x, y = digits_data()["train"]
    model = make_mlp([64, 8, 10], activation=activation, seed=0)
    train(model, nn.CrossEntropyLoss(), x, y, epochs=20, batch_size=64, lr=1e-2, seed=0)
    import lossmap as lm

    land = lm.Landscape(model.double(), nn.CrossEntropyLoss(), data=(x.double(), y))
    return dense(land).numpy()


def decay_matrix(n: int, seed: int = 1) -> np.ndarray:
    U = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))[0]
    return (U * (1.0 / np.arange(1, n + 1))) @ U.T


def trace_problems() -> dict[str, np.ndarray]:
    import lossmap as lm

    return {
        "logreg": dense(lm.examples.logistic_regression()).numpy(),
        "tanh-mlp": mlp_hessian("tanh"),
        "relu-mlp": mlp_hessian("relu"),
        "decay": decay_matrix(500),
    }


# ------------------------------------------------------------------ studies
METHODS: dict[str, Callable[..., Trace]] = {
    "hutchinson": hutchinson,
    "hutch++": hutchpp,
    "xtrace": xtrace,
}


def trace_study(seeds: int) -> list[str]:
    lines = []
    for pname, A in trace_problems().items():
        truth = float(np.trace(A))
        lines.append(f"| **{pname}** (n = {A.shape[0]}, tr = {truth:.6g}) | | | | | | | |")
        for mname, fn in METHODS.items():
            for b in BUDGETS:
                t0 = time.perf_counter()
                runs = [fn(A, matvecs=b, seed=s) for s in range(seeds)]
                err = np.array([abs(r.value - truth) for r in runs])
                se = np.array([r.stderr for r in runs])
                ins = np.array([lo <= truth <= hi for lo, hi in (r.ci(0.95) for r in runs)])
                lines.append(row(mname, b, err, se, ins))
                if mname == "xtrace" and not runs[0].meta.get("exact"):
                    old = np.array([r.meta["stderr_paper"] for r in runs])
                    lines.append(row("xtrace, paper's stderr (before)", b, err, old, None))
                print(pname, mname, b, f"{time.perf_counter() - t0:.1f}s", flush=True)
    return lines


def logreg_expected_increase(sigma: float) -> float:
    """``E[L(θ+δ)] − L(θ)`` for the logistic regression, δ ~ N(0, σ² I), by quadrature."""
    from lossmap.examples import logistic_regression_data

    land = logistic_regression()
    x, y = logistic_regression_data()
    w = land.model.weight.detach().reshape(-1).numpy()
    b = float(land.model.bias.detach())
    xs, ys = x.numpy(), y.numpy().reshape(-1)
    z0 = xs @ w + b
    s = sigma * np.sqrt(np.sum(xs**2, axis=1) + 1.0)
    t, wt = np.polynomial.hermite_e.hermegauss(200)
    wt = wt / wt.sum()
    z = z0[:, None] + s[:, None] * t[None, :]
    loss = np.logaddexp(0.0, z) - ys[:, None] * z  # BCE with logits
    e = float(np.mean(loss @ wt))
    l0 = float(np.mean(np.logaddexp(0.0, z0) - ys * z0))
    return e - l0


def average_study(seeds: int) -> list[str]:
    lines = []
    H = decay_matrix(50)
    cases = [
        ("logreg", logistic_regression(), 0.5, logreg_expected_increase(0.5)),
        ("quadratic", quadratic(H), 0.1, 0.5 * 0.1**2 * float(np.trace(H))),
    ]
    for pname, land, sigma, truth in cases:
        lines.append(f"| **{pname}** (σ = {sigma}, E = {truth:.6g}) | | | | | | | |")
        for b in BUDGETS:
            t0 = time.perf_counter()
            runs = [
                S.average(land, sigma, samples=b, seed=s, chunk=b, strategy="loop")
                for s in range(seeds)
            ]
            err = np.array([abs(r.value - truth) for r in runs])
            se = np.array([r.stderr for r in runs])
            ins = np.array([r.ci[0] <= truth <= r.ci[1] for r in runs])
            lines.append(row("average", b, err, se, ins))
            print(pname, "average", b, f"{time.perf_counter() - t0:.1f}s", flush=True)
    return lines


def density_study(seeds: int = 5) -> list[str]:
    sys.path.insert(0, str(Path(__file__).parent))
    from curvature import problem_a, w1

    p = problem_a()
    exact = p.spectrum
    assert exact is not None
    lines = [
        "| probes × steps | HVPs | W1 median (min–max) | grid points inside ±2·stderr |",
        "| --- | --- | --- | --- |",
    ]
    for probes, steps in ((1, 100), (2, 50), (4, 25), (4, 100)):
        ws, inside = [], []
        for seed in range(seeds):
            sp = spectral_density(p.land, probes=probes, steps=steps, seed=seed)
            ws.append(w1(sp.nodes, sp.weights, exact))
            truth = broaden(
                exact[None, :], np.full((1, exact.size), 1 / exact.size), sp.grid, sp.sigma
            )
            band = sp.density_stderr
            if np.all(np.isfinite(band)):
                inside.append(np.mean(np.abs(sp.density - truth) <= 2 * band))
        cov = f"{100 * np.mean(inside):.0f} %" if inside else "— (one probe: no band)"
        lines.append(
            f"| {probes} × {steps} | {probes * steps} | {np.median(ws):.2e} "
            f"({min(ws):.1e}–{max(ws):.1e}) | {cov} |"
        )
        print("density", probes, steps, flush=True)
    return lines


HEAD = (
    "| method | budget | seeds | ≤1·stderr % (Wilson 95 %) | ≤2·stderr % | ≤3·stderr % "
    "| inside ci(0.95) % | median(|err|/stderr)/0.6745 |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=500)
    ap.add_argument("--average-seeds", type=int, default=500)
    ap.add_argument("--no-density", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tr = trace_study(args.seeds)
    av = average_study(args.average_seeds)
    de = [] if args.no_density else density_study()
    text = [
        "# Coverage of lossmap's error bars",
        "",
        f"`python benchmarks/coverage.py --seeds {args.seeds} --average-seeds "
        f"{args.average_seeds}` ({time.perf_counter() - t0:.0f} s). Gaussian targets: "
        "68.3 / 95.4 / 99.7 %. Each cell: the percentage of seeds with "
        "|estimate − truth| ≤ k·stderr, and its Wilson 95 % interval. The last column "
        "is ~1 for a calibrated stderr (< 1: too wide; > 1: too narrow). See the "
        "module docstring for the problems and their exact truths.",
        "",
        "## Trace",
        "",
        HEAD,
        *tr,
        "",
        "## Average sharpness (`sharpness.average`, budget = samples)",
        "",
        HEAD,
        *av,
    ]
    if de:
        text += [
            "",
            "## Spectral density on digits MLP A (2,410 parameters)",
            "",
            "W1 as in `benchmarks/curvature.py`; 5 seeds. The band column: the share of "
            "grid points where the exact spectrum, broadened with the same σ, lies within "
            "`density ± 2·density_stderr` (the band covers the SLQ noise across probes, "
            "not the bias of few Lanczos steps).",
            "",
            *de,
        ]
    OUT.write_text("\n".join(text) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
