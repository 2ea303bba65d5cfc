"""Keskar et al. 2017 on digits: are large-batch minima sharper than small-batch ones?

Usage::

    python benchmarks/keskar.py            # 3 seeds: benchmarks/results/keskar.md
    python benchmarks/keskar.py --quick    # 1 seed, fewer samples; prints (no file)
    python benchmarks/keskar.py --quick --out /tmp/keskar-quick.md

Setting (Keskar, Mudigere, Nocedal, Smelyanskiy, Tang 2017, "On Large-Batch Training
for Deep Learning: Generalization Gap and Sharp Minima", ICLR): for each seed, one
initialisation of a 64-128-128-10 ReLU MLP (``lossmap.examples.make_mlp``) is trained
twice on scikit-learn's digits (1,437 training images, ``lossmap.examples.digits_data``)
with Adam (lr 1e-3): small batches (SB, 32, reshuffled every epoch) and full batch (LB,
1,437). Each run stops as soon as the full-training-set loss, checked before every
step, falls below the same threshold, so both minima have the same training loss.

At each minimum: train/test loss and accuracy; λ_max of the training-loss Hessian
(``lossmap.hessian.eigenvalues``, Lanczos); Keskar's ε-sharpness on the box
``|δ_i| ≤ ε(|θ_i|+1)`` for ε = 1e-3 and 5e-4 (L-BFGS-B, 10 iterations per start, the
start at δ = 0 plus 2 random starts); adaptive worst-case sharpness (ℓ2, η = 0,
ρ = 0.05 and 0.5: Andriushchenko et al. 2023); average sharpness with σ = 0.01
(isotropic) and adaptive average sharpness with σ = 0.1 (δ = σ|θ|⊙z), 100 samples
each. Nothing here was tuned to make LB look sharper: the settings were fixed before
the first full run and are the ones named in the task.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import cpu_model, version
from torch import Tensor, nn

import lossmap as lm
from lossmap import sharpness as S
from lossmap.examples import digits_data, make_mlp
from lossmap.hessian import eigenvalues

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = [64, 128, 128, 10]
LR = 1e-3
SB_BATCH = 32


@dataclass
class Settings:
    seeds: tuple[int, ...] = (0, 1, 2)
    threshold: float = 0.01
    eps: tuple[float, ...] = (1e-3, 5e-4)
    rhos: tuple[float, ...] = (0.05, 0.5)
    sigma: float = 0.01
    sigma_adaptive: float = 0.1
    samples: int = 100
    lbfgsb_iter: int = 10
    # the same maximisation run much longer, to see whether 10 iterations change the verdict
    long_eps: tuple[float, ...] = (1e-3,)
    long_iter: int = 100
    restarts: int = 2
    adaptive_steps: int = 20
    max_steps: int = 20_000


@dataclass
class Minimum:
    seed: int
    regime: str  # "SB" or "LB"
    batch: int
    steps: int = 0
    epochs: float = 0.0
    train_seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)  # standard errors
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    lbfgsb: dict[str, list[str]] = field(default_factory=dict)  # exit message per start


def train_to(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    threshold: float,
    batch: int,
    seed: int,
    max_steps: int,
) -> tuple[int, float]:
    """Adam until the full-training-set loss (checked before each step) < threshold."""
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    perm, pos = torch.randperm(n, generator=gen), 0
    model.train()
    for step in range(max_steps + 1):
        with torch.no_grad():
            full = float(crit(model(x), y))
        if full < threshold:
            model.eval()
            return step, full
        if step == max_steps:
            break
        if batch >= n:
            xb, yb = x, y
        else:
            if pos + batch > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos : pos + batch]
            pos += batch
            xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        crit(model(xb), yb).backward()
        opt.step()
    raise RuntimeError(
        f"batch {batch}, seed {seed}: the training loss {full:.4g} did not reach {threshold} "
        f"in {max_steps} steps"
    )


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(m: Minimum, land: lm.Landscape, st: Settings, log: Callable[[str], None]) -> None:
    ev = land.evaluate([land.point()])
    m.stats = {
        f"{d}/{s}": float(ev[f"{d}/{s}"][0])
        for d in ("train", "test")
        for s in ("loss", "accuracy")
    }
    eig, m.seconds["λ_max"] = timed(lambda: eigenvalues(land, 1, seed=m.seed))
    m.values["λ_max"] = float(eig.values[0])
    if not eig.converged:
        m.notes.append("λ_max not certified to tol")
    runs = [(eps, st.lbfgsb_iter, st.restarts, f"φ box ε={eps:g}") for eps in st.eps]
    runs += [
        (eps, st.long_iter, 0, f"φ box ε={eps:g}, δ=0 start, {st.long_iter} it.")
        for eps in st.long_eps
    ]
    for eps, iters, restarts, key in runs:
        r, m.seconds[key] = timed(
            lambda eps=eps, iters=iters, restarts=restarts: S.epsilon(
                land, eps, max_iter=iters, restarts=restarts, seed=m.seed
            )
        )
        m.values[key] = r.value
        m.lbfgsb[key] = r.meta["lbfgsb_messages"]
    for rho in st.rhos:
        key = f"adaptive ℓ2 ρ={rho:g}"
        r, m.seconds[key] = timed(
            lambda rho=rho: S.adaptive(
                land, rho, p=2, steps=st.adaptive_steps, restarts=st.restarts, seed=m.seed
            )
        )
        m.values[key] = r.value
    for adaptive, sigma in ((False, st.sigma), (True, st.sigma_adaptive)):
        key = f"{'adaptive ' if adaptive else ''}average σ={sigma:g}"
        a, m.seconds[key] = timed(
            lambda adaptive=adaptive, sigma=sigma: S.average(
                land, sigma, samples=st.samples, adaptive=adaptive, seed=m.seed
            )
        )
        m.values[key] = a.value
        m.errors[key] = a.stderr
    log(f"seed {m.seed} {m.regime}: measured")


def run(st: Settings, log: Callable[[str], None]) -> list[Minimum]:
    data = digits_data()
    x, y = data["train"]
    out = []
    for seed in st.seeds:
        init = make_mlp(SIZES, seed=seed)
        for regime, batch in (("SB", SB_BATCH), ("LB", len(x))):
            model = copy.deepcopy(init)
            m = Minimum(seed, regime, batch)
            (m.steps, _), m.train_seconds = timed(
                lambda model=model, batch=batch, seed=seed: train_to(
                    model,
                    x,
                    y,
                    threshold=st.threshold,
                    batch=batch,
                    seed=seed,
                    max_steps=st.max_steps,
                )
            )
            m.epochs = m.steps * min(batch, len(x)) / len(x)
            log(f"seed {seed} {regime}: {m.steps} steps ({m.epochs:.1f} epochs)")
            land = lm.Landscape(model, nn.CrossEntropyLoss(), data=data)
            measure(m, land, st, log)
            out.append(m)
    return out


# ------------------------------------------------------------------ report


def g(x: float, spec: str = ".3g") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def header(st: Settings, quick: bool, load: float) -> list[str]:
    return [
        f"# Keskar et al. 2017 on digits: small- vs large-batch minima{' (--quick)' if quick else ''}",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores), torch threads: "
        f"{torch.get_num_threads()}; load average at start {load:.2f} (shared machine: "
        "wall times are noisy)",
        f"- torch {torch.__version__}, numpy {np.__version__}, scipy {version('scipy')}, "
        f"python {platform.python_version()}, lossmap {version('lossmap')}",
        f"- command: `python benchmarks/keskar.py{' --quick' if quick else ''}`",
        "",
        "## Settings",
        "",
        f"- model: MLP {'-'.join(map(str, SIZES))} ReLU (26,122 parameters), float32; data: "
        "digits, 1,437 train / 360 test images, standardised",
        f"- training: Adam lr {LR:g} from the same initialisation per seed (make_mlp(seed)); "
        f"SB batch {SB_BATCH} (reshuffled each epoch), LB full batch (1,437); each stops when "
        f"the full training loss, checked before every step, first falls below {st.threshold:g}",
        f"- seeds: {', '.join(map(str, st.seeds))} (initialisation, batch order, random starts "
        "and noise)",
        "- λ_max: `lossmap.hessian.eigenvalues(land, 1)` (Lanczos, certified to tol 1e-6)",
        f"- φ box: `sharpness.epsilon(land, ε)`: Keskar's 100·(max L(θ+δ) − L)/(1 + L) over "
        f"|δ_i| ≤ ε(|θ_i|+1), L-BFGS-B with {st.lbfgsb_iter} iterations per start, "
        f"{st.restarts + 1} starts (δ = 0 and {st.restarts} uniform in the box)",
        f"- adaptive: `sharpness.adaptive(land, ρ, p=2, eta=0)`: max L(θ+δ) − L over "
        f"||δ/|θ| ||₂ ≤ ρ, {st.adaptive_steps} ascent steps per start, {st.restarts + 1} starts",
        f"- average: `sharpness.average(land, σ)`: E L(θ+σz) − L, and adaptive "
        f"E L(θ+σ|θ|⊙z) − L, {st.samples} samples (± is one standard error)",
        f"- φ box ε={', '.join(f'{e:g}' for e in st.long_eps)}, δ=0 start, {st.long_iter} it.: "
        f"one L-BFGS-B run from δ = 0 with {st.long_iter} iterations (not in Keskar et al.), "
        "to see whether the short budget decides the comparison",
        "- all sharpness values on the training loss",
        "",
    ]


def metric_keys(ms: list[Minimum]) -> list[str]:
    return list(ms[0].values)


def tables(ms: list[Minimum], st: Settings) -> list[str]:
    keys = metric_keys(ms)
    out = [
        "## Minima",
        "",
        "| seed | run | steps | epochs | train s | train loss | train acc | test loss | test acc |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in ms:
        out.append(
            f"| {m.seed} | {m.regime} | {m.steps} | {m.epochs:.1f} | {m.train_seconds:.1f} | "
            f"{m.stats['train/loss']:.4f} | {m.stats['train/accuracy']:.4f} | "
            f"{m.stats['test/loss']:.4f} | {m.stats['test/accuracy']:.4f} |"
        )
    out += [
        "",
        "## Sharpness",
        "",
        "| seed | run | " + " | ".join(keys) + " |",
        "|---:|---|" + "---:|" * len(keys),
    ]
    for m in ms:
        cells = []
        for k in keys:
            cell = g(m.values[k])
            if k in m.errors:
                cell += f" ± {g(m.errors[k], '.2g')}"
            cells.append(cell)
        out.append(f"| {m.seed} | {m.regime} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Wall seconds per measurement:",
        "",
        "| seed | run | " + " | ".join(keys) + " |",
        "|---:|---|" + "---:|" * len(keys),
    ]
    for m in ms:
        out.append(
            f"| {m.seed} | {m.regime} | " + " | ".join(f"{m.seconds[k]:.2f}" for k in keys) + " |"
        )
    notes = sorted({f"seed {m.seed} {m.regime}: {n}" for m in ms for n in m.notes})
    for key in ms[0].lbfgsb:
        msgs = [msg for m in ms for msg in m.lbfgsb[key]]
        limit = sum("LIMIT" in msg for msg in msgs)
        notes.append(
            f"{key}: L-BFGS-B stopped at its iteration/evaluation limit in {limit} of "
            f"{len(msgs)} starts (the value is the best loss found, a lower bound)"
        )
    if notes:
        out += ["", *[f"- {n}" for n in notes]]
    return out


def verdict(ms: list[Minimum]) -> list[str]:
    keys = metric_keys(ms)
    seeds = sorted({m.seed for m in ms})
    by = {(m.seed, m.regime): m for m in ms}
    out = [
        "",
        "## Is the large-batch minimum sharper?",
        "",
        "LB/SB ratio of each measure per seed (> 1: LB sharper). For the Monte Carlo "
        "averages a difference counts only beyond 2 combined standard errors.",
        "",
        "| measure | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | LB sharper | SB sharper | tie |",
        "|---|" + "---:|" * len(seeds) + "---:|---:|---:|",
    ]
    summary = []
    for k in keys:
        ratios, lb_sharper, sb_sharper, tied = [], 0, 0, 0
        for s in seeds:
            sb, lb = by[(s, "SB")], by[(s, "LB")]
            ratios.append(lb.values[k] / sb.values[k] if sb.values[k] else float("nan"))
            diff = lb.values[k] - sb.values[k]
            if k in sb.errors and abs(diff) <= 2 * math.hypot(sb.errors[k], lb.errors[k]):
                tied += 1
            elif diff > 0:
                lb_sharper += 1
            else:
                sb_sharper += 1
        out.append(
            f"| {k} | "
            + " | ".join(g(r, ".2f") for r in ratios)
            + f" | {lb_sharper} | {sb_sharper} | {tied} |"
        )
        summary.append((k, lb_sharper, sb_sharper))
    gap = [by[(s, "LB")].stats["test/loss"] - by[(s, "SB")].stats["test/loss"] for s in seeds]
    acc = [
        by[(s, "LB")].stats["test/accuracy"] - by[(s, "SB")].stats["test/accuracy"] for s in seeds
    ]
    out += [
        "",
        f"Test loss LB − SB per seed: {', '.join(f'{d:+.4f}' for d in gap)}; "
        f"test accuracy LB − SB: {', '.join(f'{d:+.4f}' for d in acc)}.",
        "",
    ]
    n = len(seeds)
    yes = [k for k, lbs, _ in summary if lbs == n]
    no = [k for k, _, sbs in summary if sbs == n]
    mixed = [k for k in keys if k not in yes and k not in no]
    out.append(
        "Summary (written by the script from the numbers above): "
        + (f"The LB minimum is sharper on every seed by {', '.join(yes)}. " if yes else "")
        + (f"The SB minimum is sharper on every seed by {', '.join(no)}. " if no else "")
        + (f"Mixed across seeds or within noise: {', '.join(mixed)}." if mixed else "")
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, fewer samples (< 1 min)")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = ap.parse_args(argv)
    st = Settings()
    if args.quick:
        st = Settings(
            seeds=(0,), threshold=0.05, eps=(1e-3,), rhos=(0.05,), samples=20, long_iter=30
        )
    out_path = args.out if args.out or args.quick else RESULTS / "keskar.md"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    ms = run(st, log)
    lines = header(st, args.quick, load) + tables(ms, st) + verdict(ms)
    lines += ["", f"Total wall time: {time.perf_counter() - t_start:.0f} s.", ""]
    text = "\n".join(lines)
    print(text)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text)
        log(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
