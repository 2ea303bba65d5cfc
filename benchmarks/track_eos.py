"""The edge-of-stability run redone with ``lossmap.track.Tracker`` inside a plain loop.

``benchmarks/edge_of_stability.py`` trains with ``lossmap.trajectory.gradient_descent``
(θ ← θ − η ∇L through the landscape's functional loss) and records λ_max every
``--every`` steps. Here the same problem (imported from that file: the first 1,000
digits images, one-hot targets, MLP 64-64-64-10 tanh, Cohen et al.'s square loss) is
trained by a plain PyTorch loop on the module's own parameters (``loss.backward()``,
``p ← p − η p.grad``), with ``tracker.step(model, t)`` before each update, and the
λ_max series is compared with ``gradient_descent``'s for the same η, steps and
tolerance (1e-4): the largest relative difference should be within the Lanczos
tolerance.

Usage::

    python benchmarks/track_eos.py            # writes benchmarks/results/track_eos.md
    python benchmarks/track_eos.py --quick    # 320 steps, one η; prints only
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import code_state, cpu_model
from edge_of_stability import THRESHOLDS, HalfSquaredError, problem

import lossmap as lm
from lossmap.trajectory import gradient_descent

ROOT = Path(__file__).resolve().parent


def plain_loop(
    samples: int, lr: float, steps: int, every: int, out: Path
) -> tuple[lm.track.Tracker, float]:
    """Full-batch GD as a user writes it, the tracker called before each update."""
    model, x, y = problem(samples)
    crit = HalfSquaredError()
    tracker = lm.track.Tracker(
        lambda m: lm.Landscape(m, crit, data=(x, y)),
        every=every,
        lr=lr,
        out=out,
        options={"lambda_max": {"tol": 1e-4}},
    )
    t0 = time.perf_counter()
    for t in range(steps + 1):
        tracker.step(model, t)
        if t == steps:
            break
        model.zero_grad()
        crit(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p - lr * p.grad)
    seconds = time.perf_counter() - t0
    tracker.close()
    return tracker, seconds


def compare(samples: int, thr: float, steps: int, every: int, folder: Path) -> dict[str, float]:
    lr = 2.0 / thr
    model, x, y = problem(samples)
    land = lm.Landscape(model, HalfSquaredError(), data=(x, y))
    ref = gradient_descent(land, lr=lr, steps=steps, sharpness_every=every, tol=1e-4)
    tracker, seconds = plain_loop(samples, lr, steps, every, folder / f"eta_{thr:g}")
    got = np.asarray(tracker.history["lambda_max"])
    if tracker.history["step"] != ref.sharpness_steps.tolist():
        raise SystemExit("the tracker measured other steps than gradient_descent")
    rel = np.abs(got - ref.sharpness) / np.abs(ref.sharpness)
    t0 = time.perf_counter()
    again, _ = plain_loop(samples, lr, steps, every, folder / f"eta_{thr:g}")
    rerun = time.perf_counter() - t0
    return {
        "threshold": thr,
        "n": float(len(got)),
        "max_rel": float(rel.max()),
        "identical": float(np.sum(got == ref.sharpness)),
        "final": float(got[-1]),
        "mean_ratio_2nd": float(got[ref.sharpness_steps >= steps // 2].mean() / thr),
        "gd_s": ref.seconds,
        "track_s": seconds,
        "rerun_s": rerun,
        "restored": float(again.restored),
        "rerun_same": float(again.history == tracker.history),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="320 steps, one η, print only")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--every", type=int, default=40)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="markdown file")
    args = ap.parse_args(argv)
    steps = args.steps or (320 if args.quick else 6000)
    if steps % args.every:
        ap.error(
            "--steps must be a multiple of --every (gradient_descent also measures the last step)"
        )
    thresholds = THRESHOLDS[1:2] if args.quick else THRESHOLDS
    out = args.out or (None if args.quick else ROOT / "results" / "track_eos.md")
    torch.set_num_threads(args.threads)
    state = code_state()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for thr in thresholds:
            r = compare(args.samples, thr, steps, args.every, Path(tmp))
            rows.append(r)
            print(
                f"2/η = {thr:g}: {r['n']:.0f} λ_max, largest relative difference "
                f"{r['max_rel']:.2e} ({r['identical']:.0f} identical); final λ_max "
                f"{r['final']:.4f}; GD {r['gd_s']:.1f} s, loop+tracker {r['track_s']:.1f} s, "
                f"rerun from the journal {r['rerun_s']:.1f} s ({r['restored']:.0f} restored)",
                flush=True,
            )
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    table = (
        "| η | 2/η | λ_max measured | largest relative difference | identical | "
        "final λ_max | mean λ_max/(2/η), 2nd half | gradient_descent s | loop + tracker s | "
        "rerun, all from the journal s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for r in rows:
        table += (
            f"| {2 / r['threshold']:.4g} | {r['threshold']:g} | {r['n']:.0f} | {r['max_rel']:.1e} | "
            f"{r['identical']:.0f} | {r['final']:.4f} | {r['mean_ratio_2nd']:.3f} | "
            f"{r['gd_s']:.1f} | {r['track_s']:.1f} | {r['rerun_s']:.1f} |\n"
        )
    print(table)
    if out is None:
        return 0
    worst = max(r["max_rel"] for r in rows)
    restored = all(r["rerun_same"] and r["restored"] == r["n"] for r in rows)
    doc = f"""# The edge-of-stability series from a plain training loop with the tracker

Generated by `python benchmarks/track_eos.py` on {datetime.date.today().isoformat()}.
Machine: {cpu_model()}, {os.cpu_count()} CPUs, torch threads {args.threads}, load average
{load} (1, 5, 15 min, at the end: wall times grow with other jobs on the machine; the
two columns of one row ran one after the other). {state}. Versions: lossmap
{lm.__version__}, torch {torch.__version__}, numpy {np.__version__}, Python
{sys.version.split()[0]} ({platform.machine()}).

Problem: `benchmarks/edge_of_stability.py`'s (imported from it): the first {args.samples}
digits training images, one-hot targets, MLP 64-64-64-10 tanh (seed 0), loss
`(1/n) Σ_i ½‖f(x_i) − y_i‖²`, full-batch GD for {steps} steps, λ_max every {args.every}
steps at relative tolerance 1e-4. Reference: `lossmap.trajectory.gradient_descent`.
Tracker: a plain PyTorch loop (`loss.backward()`, then `p ← p − η p.grad` on the
module's parameters) calling `lm.track.Tracker(land_fn, every={args.every}, lr=η,
out=...).step(model, t)` before each update.

{table}
Largest relative difference over all runs: {worst:.1e} (goal: within the Lanczos
tolerance 1e-4). The two loops compute the same parameters bit for bit (the same
forward and backward on the same full batch, the same update `p − η g`), and the
tracker warm-starts each λ_max from the previous top eigenvector through the same
`trajectory.warm_lambda_max` (random part seeded by `(seed, step)`) that
`gradient_descent` uses, so equal series are
expected; "identical" counts the measurements equal to the last bit.

Resume: running the same loop again with the same `out` measured nothing (every λ_max
came back from the journal after the check of each step's parameters) and gave the same
history: {"yes" if restored else "NO"}; its wall time is the training alone plus the
journal reads and the hash of the parameters at each measured step.
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
