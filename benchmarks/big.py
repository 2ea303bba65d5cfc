"""Real model sizes on this machine: ResNet-20 and a ≥ 10 M-parameter transformer LM,
each through a plane, the top 5 Hessian eigenvalues and a trace, with time, peak memory
and the strategy the engine chose.

Usage::

    python benchmarks/big.py --out benchmarks/results/big.md            # ~40 min, 2 cores
    python benchmarks/big.py --quick --out /tmp/big.md                  # smoke test, ~2 min
    python benchmarks/big.py --only resnet --resnet-n 10000 --steps 3   # costs at full size

Models (``lossmap.zoo``): ResNet-20 (He et al. 2016, 269,722 parameters, BatchNorm in
eval mode) on generated CIFAR-shaped images, briefly trained; a GPT-style decoder
(11.5 M parameters: d_model 384, 6 layers, 6 heads, vocabulary 2,048, tied embedding,
padded sequences of up to 128 tokens, the exact per-token mean) on generated token
sequences, briefly trained. For each, in one process with torch's default threads:

1. the build (generation and training);
2. ``lossmap.plane`` on the training set (``auto``; the strategy and why) and, where
   ``auto`` chose a one-point strategy, a 3 × 3 plane with ``vmap`` and with ``loop``
   for the ratio;
3. ``lossmap.hessian.eigenvalues(k=5, tol=1e-3)``: Lanczos, products, seconds, and
   whether the gradient graph was kept (``HessianOperator.reuse_graph``);
4. ``lossmap.hessian.trace(method="hutch++", matvecs=30)``;

with the process's peak resident memory after each step (``ru_maxrss``). The machine
is shared: the load average is printed with each model.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

import lossmap as lm
from lossmap import zoo


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def analyse(name: str, build: Any, steps: int, eig: bool, lines: list[str]) -> None:
    lines += [f"## {name}", "", f"Load average before: {_load()}.", ""]
    t0 = time.perf_counter()
    land = build()
    ds = land.dataset("train")
    lines += [
        f"- **Build**: {time.perf_counter() - t0:.1f} s; {land.num_parameters:,} parameters; "
        f"training set {ds.count():,} samples in {len(ds.batches or [])} batches; "
        f"peak memory {_peak_gib():.2f} GiB.",
    ]
    print(lines[-1], flush=True)
    if steps:
        _plane(land, steps, lines)
    if eig:
        _curvature(land, lines)
    lines += ["", f"Load average after: {_load()}.", ""]


def _plane(land: Any, steps: int, lines: list[str]) -> None:
    d1, d2 = lm.directions.random(land, 2, seed=0)
    t0 = time.perf_counter()
    surf = lm.plane(land, d1, d2, steps=steps, datasets=["train"])
    secs = time.perf_counter() - t0
    e = surf.meta["engine"]
    lines.append(
        f"- **Plane {steps} × {steps}**: {secs:.1f} s ({1000 * secs / steps**2:.0f} ms per point); "
        f"auto chose `{e['strategy']}` ({e['reason']}), chunks of {e['chunk_size']}; "
        f"train loss at θ0 {float(surf['loss'][steps // 2, steps // 2]):.4f}, range "
        f"{float(surf['loss'].min()):.3g}–{float(surf['loss'].max()):.3g}; "
        f"peak memory {_peak_gib():.2f} GiB."
    )
    print(lines[-1], flush=True)
    if e["strategy"] in ("loop", "affine"):
        times = {}
        for strategy in ("loop", "vmap"):
            t0 = time.perf_counter()
            try:
                lm.plane(land, d1, d2, steps=3, datasets=["train"], strategy=strategy)
                times[strategy] = time.perf_counter() - t0
            except (RuntimeError, ValueError) as err:
                times[strategy] = float("nan")
                lines.append(f"  - vmap could not run: {str(err).splitlines()[0][:200]}")
        lines.append(
            f"  - 3 × 3 plane: loop {times['loop']:.1f} s, vmap {times['vmap']:.1f} s "
            f"(vmap / loop = {times['vmap'] / times['loop']:.2f}); peak memory "
            f"{_peak_gib():.2f} GiB."
        )
        print(lines[-1], flush=True)


def _curvature(land: Any, lines: list[str]) -> None:
    op = lm.hessian.HessianOperator(land)
    t0 = time.perf_counter()
    res = lm.hessian.eigenvalues(op, k=5, tol=1e-3)
    secs = time.perf_counter() - t0
    vals = ", ".join(f"{v:.4g}" for v in res.values)
    lines.append(
        f"- **Top-5 eigenvalues** (Lanczos, tol 1e-3): {vals}; {op.matvecs} products in "
        f"{secs:.1f} s ({1000 * op.seconds / max(op.matvecs, 1):.0f} ms each); gradient "
        f"graph {'kept' if op.reuse_graph else 'rebuilt per product (too big to keep)'}; "
        f"peak memory {_peak_gib():.2f} GiB."
    )
    print(lines[-1], flush=True)
    t0 = time.perf_counter()
    tr = lm.hessian.trace(land, method="hutch++", matvecs=30)
    lines.append(
        f"- **Trace** (Hutch++, 30 products): {tr.value:.4g} ± {tr.stderr:.2g} in "
        f"{time.perf_counter() - t0:.1f} s; peak memory {_peak_gib():.2f} GiB."
    )
    print(lines[-1], flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "big.md")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", choices=["resnet", "transformer"])
    p.add_argument("--steps", type=int, default=21, help="points per axis; 0: no plane")
    p.add_argument("--no-curvature", action="store_true")
    p.add_argument("--resnet-n", type=int, default=1250)
    p.add_argument("--resnet-train-steps", type=int, default=40)
    p.add_argument("--lm-sequences", type=int, default=40)
    p.add_argument("--lm-train-steps", type=int, default=20)
    a = p.parse_args()
    steps = 3 if a.quick else a.steps
    lines = [
        "# Real model sizes on this machine",
        "",
        f"`{' '.join(sys.argv)}`; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores.",
        "",
    ]
    eig = not (a.quick or a.no_curvature)
    models = {
        "resnet": (
            200 if a.quick else a.resnet_n,
            "ResNet-20 on {n:,} CIFAR-shaped images (80 % train)",
            zoo.resnet20,
            a.resnet_train_steps,
        ),
        "transformer": (
            10 if a.quick else a.lm_sequences,
            "Transformer LM on {n} sequences of up to 128 tokens (80 % train)",
            zoo.transformer_lm,
            a.lm_train_steps,
        ),
    }
    for name, (n, title, make, train_steps) in models.items():
        if a.only in (None, name):
            build = functools.partial(make, n, train_steps=2 if a.quick else train_steps)
            analyse(title.format(n=n), build, steps, eig, lines)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
