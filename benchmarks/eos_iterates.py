"""Write the gradient-descent iterates of the edge-of-stability runs (2/η = 9 and 12)
that ``tests/test_block_eigen.py`` checks block Lanczos on (issue #12).

The problem of ``benchmarks/edge_of_stability.py`` (1,000 digits, MLP 64-64-64-10 tanh,
8,970 parameters, Cohen et al.'s square loss), full-batch GD with η = 2/9 for 6,000
steps, θ every 300 steps. Kept, as float32 in ``tests/data/eos_iterates.npz``: the
iterates at steps 2,700, 4,200 and 6,000, where single-vector Lanczos at ``tol=1e-4``
certified the second eigenvalue of the top cluster when this file was written
(relative errors 1.1e-3, 3.3e-3 and 9.8e-3; eigenvalue gaps 0.12 %, 0.34 %, 0.43 %),
each with the iterate 300 steps before it (its top eigenvector is the warm start, as
``gradient_descent`` uses it). From the run at 2/η = 12 (η = 1/6), the iterates at
steps 4,800 and 5,400 (each with the one 300 steps before), where block Lanczos
(block 3) stopped on the second eigenvalue after 6 products (errors 7.8e-3, 6.7e-3)
until its stop waited for the next Ritz value to converge. The file is an input, not a
result: the test computes its reference eigenvalues itself (ARPACK, ``tol=1e-10``).

Usage::

    python benchmarks/eos_iterates.py        # writes tests/data/eos_iterates.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import lossmap as lm
from lossmap.trajectory import gradient_descent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edge_of_stability import HalfSquaredError, problem

KEPT = {9.0: (2700, 4200, 6000), 12.0: (4800, 5400)}  # λ_max was missed here (docstring)
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "eos_iterates.npz"


def main() -> int:
    torch.set_num_threads(1)
    model, x, y = problem(1000)
    land = lm.Landscape(model, HalfSquaredError(), data=(x, y))
    arrays: dict[str, np.ndarray] = {}
    steps, runs, names = [], [], []
    for thr, kept in KEPT.items():
        h = gradient_descent(
            land, lr=2 / thr, steps=6000, sharpness_every=0, checkpoint_every=300, tol=1e-4
        )
        keep = [
            i for i, s in enumerate(h.checkpoint_steps.tolist()) if s + 300 in kept or s in kept
        ]
        names = list(h.checkpoints[0])
        for i in keep:
            j = len(steps)
            arrays |= {
                f"{j}/{k}": h.checkpoints[i][k].detach().float().cpu().numpy() for k in names
            }
            steps.append(int(h.checkpoint_steps[i]))
            runs.append(thr)
    np.savez_compressed(
        OUT, steps=np.array(steps), thresholds=np.array(runs), names=np.array(names), **arrays
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB, steps {steps}, 2/η {runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
