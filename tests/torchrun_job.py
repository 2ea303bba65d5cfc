"""A job for ``torchrun`` that the distributed tests launch (not a test module).

Usage: ``torchrun --nproc-per-node N tests/torchrun_job.py MODE OUT.npz [--journal J]
[--die-after K] [--streamed]``. Every rank builds the same seeded landscape (an MLP
on 203 samples: shares of uneven size), then computes a 9 × 7 plane (in chunks of 4
points), the top 5 Hessian eigenvalues, a Hutch++ trace and a gradient; rank 0 saves
them to ``OUT.npz``. ``--die-after K``: rank 1 kills itself (SIGKILL) once K chunks are
done, to test a dead rank; ``--hang-after K``: rank 1 stops answering instead (sleeps),
to test the timeout (``--timeout`` seconds). ``MODE`` ``none`` runs without a process group.
"""

from __future__ import annotations

import argparse
import os
import signal
import time

import numpy as np
import torch
from torch import nn

import lossmap as lm
from lossmap import distributed
from lossmap.store import Journal


def build(streamed: bool) -> lm.Landscape:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(203, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (203,), generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    train: object = (x, y)
    if streamed:
        ds = torch.utils.data.TensorDataset(x, y)
        train = torch.utils.data.DataLoader(ds, batch_size=40)
    data = {"train": train, "test": (x[:50], y[:50])}
    return lm.Landscape(net, nn.CrossEntropyLoss(), data=data, cache_bytes=0 if streamed else None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("out")
    p.add_argument("--journal")
    p.add_argument("--die-after", type=int)
    p.add_argument("--hang-after", type=int)
    p.add_argument("--timeout", type=float, default=20)
    p.add_argument("--streamed", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    ranks = None if a.mode == "none" else distributed.init(a.mode, timeout=a.timeout)
    land = build(a.streamed)
    land = land.distribute(ranks)
    d1, d2 = lm.directions.random(land, 2, seed=1)
    chunks = [0]

    def progress(done: int, total: int) -> None:
        chunks[0] += 1
        if (
            ranks is None
            or ranks.rank != 1
            or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
        ):
            return  # only rank 1 of a first attempt fails (a torchrun restart goes through)
        if a.die_after is not None and chunks[0] > a.die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        if a.hang_after is not None and chunks[0] > a.hang_after:
            time.sleep(3600)

    journal = (
        Journal(a.journal, {"job": 1}) if a.journal and (ranks is None or ranks.main) else None
    )
    surf = lm.plane(
        land,
        d1,
        d2,
        steps=(9, 7),
        chunk_size=4,
        strategy="vmap",
        journal=journal,
        progress=progress,
    )
    eig = lm.hessian.eigenvalues(land, k=5, tol=1e-10, seed=3)
    tr = lm.hessian.trace(land, method="hutch++", matvecs=30, seed=4)
    value, grad = land.value_and_grad()
    x, y = land.dataset("train").batches[0] if not a.streamed else next(iter(land.dataset("train")))
    _, mb = land.value_and_grad(batches=[(x[:37], y[:37])])  # a minibatch, shared too
    if ranks is None or ranks.main:
        np.savez(
            a.out,
            loss=surf["loss"],
            test_loss=surf.values["test/loss"],
            acc=surf.values["train/accuracy"],
            eig=np.asarray(eig.values),
            trace=np.asarray([tr.value, tr.stderr]),
            value=np.asarray([value]),
            grad=torch.cat([t.reshape(-1) for t in grad.values()]).numpy(),
            mb_grad=torch.cat([t.reshape(-1) for t in mb.values()]).numpy(),
            strategy=np.asarray(surf.meta["engine"]["strategy"]),
        )
    # every rank also writes its own eigenvalues: lockstep means all ranks agree
    r = 0 if ranks is None else ranks.rank
    np.save(f"{a.out}.eig{r}.npy", np.asarray(eig.values))


if __name__ == "__main__":
    main()
