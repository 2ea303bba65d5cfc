"""What ``precision=`` costs in accuracy, and what it saves (or costs) in time, on CPU.

Usage::

    PYTHONPATH=src python3 benchmarks/precision.py --out benchmarks/results/precision.md
    python benchmarks/precision.py --quick --out /tmp/precision.md   # smoke test

Two trained models: the digits MLP (``lossmap.examples.digits_mlp``, 64-128-128-10)
and a small CNN on the same digits as 1×8×8 images (conv 1→16 3×3, ReLU, conv 16→32
3×3, ReLU, flatten, linear 512→10; Adam, 30 epochs, batch 64, seed 0). For each, a
21 × 21 plane (``span=1``, filter-normalised directions, seed 0) at float32 (``auto``
and ``loop``) and at each lower precision (``loop``: the one strategy autocast reaches,
see ``lossmap.evaluate.strategies``). Accuracy: the max and median relative difference
of the train loss over the 441 points against float32 ``loop`` (the same strategy, so
only the precision differs; with the float32 loss where the relative difference is
largest), the max absolute difference, and the largest difference of train accuracy.

Time: the CPU time of the process (``time.process_time``) on one torch thread by
default (``--threads``): on a shared machine the wall clock of a plane varied 5× between
two runs at load 3-4 on 2 cores, while CPU time on one thread counts this process's
work alone. One warm-up of each, then the median of ``--repeats`` planes timed
round-robin (float16: two); ratios against float32 ``loop`` and float32 ``auto``. The
load average before and after is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _machine import code_state, cpu_model
from torch import nn

import lossmap as lm


def digits_cnn(seed: int = 0) -> lm.Landscape:
    """A small CNN on the digits (1×8×8 images), trained like the digits MLP."""
    data = lm.examples.digits_data()
    images = {k: (x.reshape(-1, 1, 8, 8), y) for k, (x, y) in data.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 10),
        )
        x, y = images["train"]
        lm.examples.train(
            model, nn.CrossEntropyLoss(), x, y, epochs=30, batch_size=64, lr=1e-3, seed=seed
        )
    return lm.Landscape(model, nn.CrossEntropyLoss(), data=images)


def _timed(fn: Callable[[], lm.Surface], repeats: int) -> tuple[lm.Surface, list[float]]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def measure(name: str, land: lm.Landscape, steps: int, repeats: int) -> list[str]:
    d1, d2 = lm.directions.random(land, 2, seed=0)
    configs = {
        "float32 auto": {},
        "float32 loop": {"strategy": "loop"},
        "bfloat16": {"precision": "bfloat16"},
        "float16": {"precision": "float16"},
    }
    results: dict[str, lm.Surface] = {}
    times: dict[str, list[float]] = {k: [] for k in configs}
    for k, kw in configs.items():  # warm-up, and the values
        results[k] = lm.plane(land, d1, d2, steps=steps, **kw)  # type: ignore[arg-type]
    for _ in range(repeats):  # round-robin: a load change hits every configuration
        for k, kw in configs.items():
            if k == "float16" and len(times[k]) >= 2:
                continue  # emulated on this CPU, and slow: two timings are enough
            t = time.process_time()
            lm.plane(land, d1, d2, steps=steps, **kw)  # type: ignore[arg-type]
            times[k].append(time.process_time() - t)
    ref = results["float32 loop"]
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        f"### {name} ({land.num_parameters:,} parameters, {steps} × {steps} plane)",
        "",
        f"Train loss over the plane: {ref.values['train/loss'].min():.3g} to "
        f"{ref.values['train/loss'].max():.3g} (float32).",
        "",
        "| precision | strategy | max rel. diff. of loss (loss there) | median rel. diff. "
        "| max abs. diff. | max acc. diff. | CPU s per plane | × float32 loop | × float32 auto |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, r in results.items():
        diff = np.abs(r.values["train/loss"] - ref.values["train/loss"])
        rel = diff / ref.values["train/loss"]
        worst = int(np.argmax(rel))
        acc = np.abs(r.values["train/accuracy"] - ref.values["train/accuracy"])
        rows.append(
            f"| {r.meta['engine']['precision']} | {r.meta['engine']['strategy']} "
            f"| {rel.max():.2e} ({ref.values['train/loss'].flat[worst]:.3g}) "
            f"| {np.median(rel):.2e} | {diff.max():.2e} | {acc.max():.4f} "
            f"| {med[k]:.3g} | {med[k] / med['float32 loop']:.2f} "
            f"| {med[k] / med['float32 auto']:.2f} |"
        )
    return [*rows, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="9 × 9 planes, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, repeats = (9, 1) if args.quick else (21, args.repeats)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    lines = [
        "# Precision on CPU: accuracy and time (benchmarks/precision.py)",
        "",
        f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {code_state()}",
        "",
    ]
    for name, make in (("digits MLP", lm.examples.digits_mlp), ("digits CNN", digits_cnn)):
        lines += measure(name, make(), steps, repeats)
        args.out.write_text("\n".join(lines) + "\n")
    load1 = os.getloadavg()
    lines.append(
        f"Load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load0)} at start, "
        f"{', '.join(f'{x:.2f}' for x in load1)} at the end; {time.perf_counter() - t0:.0f} s."
    )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
