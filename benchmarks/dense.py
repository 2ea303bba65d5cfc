"""Time ``lossmap.hessian.dense``: one Hessian-vector product per column vs blocks of columns.

Usage::

    python benchmarks/dense.py            # writes benchmarks/results/dense.md
    python benchmarks/dense.py --quick    # a smaller model, prints only

A 64-24-10 tanh MLP (1,810 parameters) on the 1,437 digits training images, float64.
``columns=1`` is the old one-product-per-column loop; larger blocks take their columns
in one batched backward pass (``is_grads_batched``). The matrices are compared, and the
times are medians of the repeats, round-robin, on this shared machine.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import torch
from _machine import code_state, cpu_model
from torch import nn

import lossmap as lm


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 64-8-10 MLP, one repeat, no file")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dense.md")
    args = ap.parse_args()
    hidden, repeats = (8, 1) if args.quick else (24, args.repeats)
    x, y = lm.examples.digits_data()["train"]
    model = lm.examples.make_mlp([64, hidden, 10], activation="tanh", seed=0).double()
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x.double(), y))
    blocks = [1, 8, 32, 128]
    times: dict[int, list[float]] = {b: [] for b in blocks}
    ref = None
    for _ in range(repeats):
        for b in blocks:
            t0 = time.perf_counter()
            H = lm.hessian.dense(land, columns=b)
            times[b].append(time.perf_counter() - t0)
            ref = H if ref is None else ref
            assert float((H - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
    base = statistics.median(times[1])
    lines = [
        "# dense(): one product per column vs blocks of columns",
        "",
        f"- {datetime.datetime.now().isoformat(timespec='seconds')}, {cpu_model()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); {code_state()}",
        f"- model: 64-{hidden}-10 tanh MLP, {land.num_parameters:,} parameters, 1,437 digits, "
        f"float64; median of {repeats} (round-robin)",
        "",
        "| columns per block | s (min) | speed-up vs 1 |",
        "|---:|---:|---:|",
    ]
    for b in blocks:
        med = statistics.median(times[b])
        lines.append(f"| {b} | {med:.2f} ({min(times[b]):.2f}) | {base / med:.1f}× |")
    lines += ["", "Every block size gives the same matrix to 1e-12 of its largest entry."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
