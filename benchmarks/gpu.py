"""lossmap on a GPU: values against float64 on the CPU, speed of planes, Hessian products
and eigenvalues, ranks.

Usage::

    PYTHONPATH=src python3 benchmarks/gpu.py --out $OUT/gpu.md           # on a CUDA machine, < 5 min
    python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu-cpu.md  # smoke test, ~20 s

The one prepared check for a GPU lent for a few minutes (issue #11). It never stops at
a failure: every part runs under a guard, an exception is a finding (written to the
report with its traceback's last lines, and the exit status is 1), and the report is
rewritten after every part so a run killed by its time limit still leaves what it
measured. ``--budget`` seconds (default 270, ``--quick`` 150) bound the whole run:
section 1 must end by 15 % of it, section 2 by 62 %, section 3 by 100 % (82 % where
section 4 runs) and section 4 by 100 %. Inside sections 2 and 3 each model gets a share
of the section's time left when it starts (``SPEED_SHARES``, ``HVP_SHARES``); a part
whose estimate would not fit is skipped and says so, a repeat is timed only where the
previous one still fits, and Lanczos is capped (``max_iter``) to what fits.

1. Correctness on the device. The digits MLP (64-128-128-10, ``lossmap.examples``) and
   a residual CNN with BatchNorm (``_models.ResidualCNN``, 512 images 3×16×16), both
   trained on the CPU: an 11 × 11 plane (``span=1``, filter-normalised directions with
   seed 0) with every name in ``lossmap.evaluate.STRATEGIES`` (a strategy that refuses
   the model raises ``ValueError``: "not eligible"), on the device in float32, against
   the same plane on the CPU in float64 (a float64 copy of the model and data, the
   device's directions cast to float64, ``strategy="loop"``): the max relative
   difference, the strategy ``auto`` picked and why (``meta["engine"]``), and whether
   the same plane computed twice is bit-identical. If some plane is not, the check is
   repeated in a fresh process with ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` set before CUDA
   starts and ``torch.use_deterministic_algorithms(True)``. On CUDA, convolutions use
   TF32 by default (``torch.backends.cudnn``): the CNN's loop and auto are repeated with
   cuDNN's float32 precision set to IEEE, to tell TF32 rounding from an error.
2. Speed of planes: 21 × 21 planes (``span=1``), the naive loop against ``auto`` and
   every strategy eligible for the model (``meta["engine"]["eligible"]``), on
   (b') ResNet-20 (``lossmap.zoo.resnet20_model()``, 269,722 parameters, BatchNorm in
   eval mode) on 4,096 generated CIFAR-shaped images (``zoo.cifar_like_data``), trained
   20 full-batch Adam steps on the device; (d) a GPT-style language model
   (``zoo.transformer_lm_model(vocab=2048, d_model=256, layers=4, heads=4,
   seq_len=128)``, 3,716,608 parameters, head tied to the embedding) on 256 padded
   sequences of ``zoo.lm_data`` in 4 batches of 64, ``loss=zoo.lm_loss`` (the exact
   per-token mean), trained 30 Adam steps; then, where the budget allows, (a) the
   digits MLP and (c) an MLP 1024-2048-2048-2048-10 (10.5 M parameters) on 8,192
   synthetic samples (both measured in earlier results; (b) there was a smaller
   residual CNN, replaced by (b')). The naive loop: a copy of the model,
   ``p.copy_(θ0 + α d1 + β d2)`` under ``torch.no_grad``, the loss on every batch (one
   full-batch forward and the criterion for ``(x, y)`` data; ``lm_loss`` per batch, the
   sums over the counts, for the language model) and one ``.item()`` per point. It is a
   copy of the one in ``benchmarks/surface.py`` rather than an import: that script
   imports the engine's point sets and takes its own ``Problem``; a failed import would
   cost the one run on the device. Each method is warmed up on a 5 × 5 plane, then the
   21 × 21 planes are timed round-robin up to 3 rounds (a round only where the previous
   one still fits the model's share), with ``torch.cuda.synchronize()`` before and after
   each: median and min, ms per point, ratio to one forward pass over the data, the max
   relative difference to the naive loop, and peak device memory.
3. Hessian-vector products and top eigenvalues, on (b') and (d):
   ``lossmap.hessian.HessianOperator``'s first product (it builds the gradient graph,
   kept for every product where ``hessian.graph_fits``) and the mean of the next 10,
   peak device memory (``torch.cuda.max_memory_allocated``); then
   ``eigenvalues(op, k=5, tol=1e-3)`` on a fresh operator: the five values, Lanczos
   steps, seconds, of which in products (``op.seconds``) and the rest (the graph, and
   Lanczos's full reorthogonalisation in float64 numpy on the host, one BLAS thread),
   residuals, peak memory. Then one product along a unit Gaussian vector ``v`` against a
   central difference of ``land.gradient``, ``(g(θ0 + t v) - g(θ0 - t v)) / 2t`` for
   ``t = h ||θ0||`` at four ``h`` (ReLU kinks need small steps, float32 rounding limits
   them: the sweep shows both), in float32 on (d), (b') and the small CNN and in float64
   on the small CNN; each float32 product is also compared with lossmap's float64
   product on a float64 copy of the model (the FD-free check; on (d) it also covers
   LayerNorm's second derivatives on the device).
4. Ranks. With several GPUs (``torch.cuda.device_count() > 1``): one launch of
   ``python -m torch.distributed.run --nproc-per-node G benchmarks/gpu.py --job ...``
   on (b')'s trained model, data and directions (saved to a temporary file) computes the
   21 × 21 plane in points mode and then in data mode (``lm.distributed.init`` with
   ``device="cuda"``: rank r on ``cuda:LOCAL_RANK``, NCCL), each after a warm-up, timed
   from a barrier to the slowest rank; against the same plane in this process on one
   GPU. Both get the strategy ``auto`` picks here and the chunk size a G-rank run deals
   (``distributed.dealt_chunk``), so points mode must give the single process's bits and
   data mode differs by rounding only. One GPU: "one GPU: ranks not measured". On the
   CPU the section launches 2 gloo ranks on the sizes given: a smoke test of the launcher
   and the job, not a measurement.

Time on an H200, estimated from the earlier run (``results/gpu.md``) and FLOP counts
(``torch.utils.flop_counter``): ResNet-20 is 81 MFLOP an image, 2.05× the residual CNN
of 32 channels whose forward over 4,096 images took 5.9 ms there and whose HVP took
231 ms; (d) is 1.0 GFLOP a sequence, 0.26 TFLOP a pass over its 256 sequences in IEEE
float32 (matmul precision ``highest``). CUDA start and section 1 ≈ 25 s. Section 2 ≈
120 s: (b') ~12 ms a forward, 4 methods × 441 points ≈ 25 s a round, one round in its
share; (d) ~12 ms a pass, ≈ 22 s a round, two rounds; (a) ≈ 3 s; (c) ≈ 12 s a round,
up to three. Section 3 ≈ 65 s: (b') ~0.45 s a product, a top-5 Lanczos of 30-50 steps
≈ 15-25 s; (d) ~0.05 s a product, but its Lanczos is host-bound: step j reads about
4 j vectors of 3.7 M float64 numbers, at ~2 ns a number (the earlier run's top-1
Lanczos on the 10.5 M MLP spent 4.9 of its 5.2 s outside the products), ≈ 25 s for 40
steps; the FD table ≈ 10 s. One GPU: no section 4. About 210 s in all, plus ~5 s of
imports before the clock starts; the 270 s budget skips or caps what would pass it.

Only lossmap's public API is used (``lossmap``, ``lossmap.hessian``,
``lossmap.directions``, ``lossmap.distributed``, ``lossmap.zoo``,
``lossmap.evaluate.STRATEGIES``, ``lossmap.examples``).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import gc
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import code_state, cpu_model
from _models import ResidualCNN
from torch import Tensor, nn

import lossmap as lm
from lossmap import zoo
from lossmap.evaluate import STRATEGIES
from lossmap.examples import digits_data, make_mlp, train
from lossmap.hessian import HessianOperator, eigenvalues

Vec = dict[str, Tensor]
Batch = Any  # (x, y) or a dict of tensors
LossFn = Callable[[Any, Any], tuple[Tensor, Tensor]]
SRC = Path(__file__).resolve().parents[1] / "src"
CUBLAS_DETERMINISTIC = ":4096:8"
# h: central-difference steps t = h ||θ0||. ReLU networks need small steps: the
# gradient jumps where a unit's pre-activation changes sign, and a step that flips
# units measures those jumps, not H (on a 42k-parameter MLP in float64: relative error
# 3.0 at h = 1e-2, 38 at 1e-4, 6e-11 at 1e-5). float32 rounding limits the small end.
FD_STEPS = (1e-3, 1e-4, 1e-5, 1e-6)
FD_STEPS_F64 = (1e-4, 1e-5, 1e-6, 1e-7)
FD_PRODUCTS = 12  # an FD row's cost in products: 8 gradients, the product, the float64 one
# Where each section must end, as fractions of the budget.
S1_END, S2_END, S3_END_WITH_RANKS = 0.15, 0.62, 0.82
# Shares of a section's time left: the models of section 2, in the order they run (the
# new ones first), and the parts of section 3.
SPEED_SHARES = {"b'": 3.0, "d": 3.0, "a": 1.0, "c": 2.0}
HVP_SHARES = {"b'": 2.0, "d": 2.0, "fd": 1.0}
SPEED_SLACK = 1.5  # a plane's estimate: points × one forward × this (vmap ran 1.65×)
EIG_K, EIG_TOL = 5, 1e-3
# Lanczos's host cost per step j (full reorthogonalisation, twice, float64, one BLAS
# thread): about 4 j n numbers read, at this many seconds per number; used only to cap
# max_iter to the time left. From the earlier H200 run: 9 steps on 10.5 M parameters
# spent 4.9 s outside the products, ~2.4e9 numbers read (the basis and temporaries).
HOST_S_PER_NUMBER = 2e-9
RANKS_LAUNCH_S = 30.0  # torchrun, G interpreters importing torch, process-group start


@dataclass(frozen=True)
class Sizes:
    """Every size the run uses: the full run on a GPU, or ``--quick`` (tiny, on CPU)."""

    steps_check: int  # points per axis, correctness planes
    steps_speed: int  # points per axis, timed planes
    steps_warm: int  # points per axis, each method's warm-up plane
    repeats: int  # timed rounds at most
    digits_epochs: int
    cnn_small: tuple[int, int, int]  # images, side, channels
    resnet: tuple[int, int, int]  # images, width, blocks
    resnet_steps: int  # full-batch Adam steps
    big_mlp: tuple[int, ...]
    big_samples: int
    lm: tuple[int, int, int, int, int]  # vocab, d_model, layers, heads, seq_len
    lm_data: tuple[int, int]  # sequences, batch size
    lm_steps: int  # Adam steps, one batch each
    hvp_next: int  # products timed after the first
    cpu_ranks: int  # gloo ranks of section 4's smoke test on the CPU
    budget_s: float


FULL = Sizes(
    steps_check=11,
    steps_speed=21,
    steps_warm=5,
    repeats=3,
    digits_epochs=5,
    cnn_small=(512, 16, 16),
    resnet=(4096, 16, 3),
    resnet_steps=20,
    big_mlp=(1024, 2048, 2048, 2048, 10),
    big_samples=8192,
    lm=(2048, 256, 4, 4, 128),
    lm_data=(256, 64),
    lm_steps=30,
    hvp_next=10,
    cpu_ranks=2,
    budget_s=270.0,
)
QUICK = Sizes(
    steps_check=5,
    steps_speed=5,
    steps_warm=3,
    repeats=1,
    digits_epochs=1,
    cnn_small=(64, 8, 8),
    resnet=(64, 4, 1),
    resnet_steps=2,
    big_mlp=(64, 128, 128, 128, 10),
    big_samples=256,
    lm=(64, 32, 1, 2, 16),
    lm_data=(32, 16),
    lm_steps=3,
    hvp_next=3,
    cpu_ranks=2,
    budget_s=150.0,
)


# ------------------------------------------------------------------ plumbing
def log(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", flush=True)


class Budget:
    """Seconds since the start, against the whole run's budget."""

    def __init__(self, seconds: float) -> None:
        self.t0 = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self, until: float = 1.0) -> float:
        """Seconds left before ``until`` (a fraction of the budget)."""
        return until * self.seconds - self.elapsed()

    def share(self, until: float, weight: float, rest: float) -> float:
        """The deadline (seconds since the start) of a part that gets ``weight`` out of
        ``rest`` (its own and the later parts' weights) of the time left before ``until``."""
        return self.elapsed() + max(0.0, self.left(until)) * weight / rest

    def before(self, deadline: float) -> float:
        """Seconds left before ``deadline`` (seconds since the start)."""
        return deadline - self.elapsed()


class Report:
    """The markdown report, rewritten to ``path`` after every part."""

    def __init__(self, path: Path, head: list[str]) -> None:
        self.path = path
        self.head = head
        self.sections: dict[str, list[str]] = {}
        self.errors: list[str] = []

    def add(self, section: str, lines: list[str]) -> None:
        self.sections.setdefault(section, []).extend(lines)
        self.write()

    def write(self) -> None:
        lines = list(self.head)
        for title, body in self.sections.items():
            lines += [f"## {title}", "", *body, ""]
        lines += ["## Errors", ""]
        lines += self.errors or ["None: every part that ran finished without an exception."]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(lines) + "\n")


def record_error(report: Report, what: str, e: BaseException) -> str:
    """Add an exception and its traceback's last lines to the report; its first line."""
    tb = traceback.format_exc().strip().splitlines()
    log(f"ERROR in {what}: {first_line(e)}")
    report.errors += [
        f"- **{what}**: `{first_line(e)}`",
        "",
        "  ```",
        *[f"  {line}" for line in tb[-12:]],
        "  ```",
        "",
    ]
    report.write()
    return first_line(e)


@contextmanager
def guard(report: Report, what: str) -> Iterator[None]:
    """Run a part; an exception is recorded in the report (it is a finding), not raised."""
    try:
        yield
    except Exception as e:
        record_error(report, what, e)
        release()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}"


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"


def peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def mib(b: int | None) -> str:
    return "– (CPU)" if b is None else f"{b / 2**20:,.0f} MiB"


def peak_mib(device: torch.device) -> str:
    return mib(peak_bytes(device))


def allocated_mib(device: torch.device) -> str:
    return mib(torch.cuda.memory_allocated(device) if device.type == "cuda" else None)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


# ------------------------------------------------------------------ problems
@dataclass
class Problem:
    """A trained model (on the CPU or the device, float32) and its data: ``(x, y)``
    tensors under cross-entropy (``loss`` None), or a list of batches under a
    ``loss(model, batch) -> (sum, count)`` callable."""

    key: str
    name: str
    model: nn.Module
    data: tuple[Tensor, Tensor] | list[dict[str, Tensor]]
    loss: LossFn | None = None

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())  # a tied tensor once

    def batches(self, device: torch.device, dtype: torch.dtype = torch.float32) -> list[Batch]:
        """The data as batches on ``device``, floating-point tensors in ``dtype``."""

        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

        if isinstance(self.data, tuple):
            return [tuple(move(t) for t in self.data)]
        return [{k: move(t) for k, t in b.items()} for b in self.data]

    def landscape(self, device: torch.device, dtype: torch.dtype = torch.float32) -> lm.Landscape:
        """A Landscape on ``device`` in ``dtype`` over a copy of the model and data."""
        model = copy.deepcopy(self.model).to(device=device, dtype=dtype).eval()
        batches = self.batches(device, dtype)
        if self.loss is None:
            return lm.Landscape(model, nn.CrossEntropyLoss(), data=batches[0], device=device)
        return lm.Landscape(model, loss=self.loss, data=batches, device=device)

    def mean_loss(self, model: nn.Module, batches: list[Batch]) -> Tensor:
        """The data-set mean loss of ``model`` as a device tensor (no host sync)."""
        if self.loss is None:
            ((x, y),) = batches
            return nn.functional.cross_entropy(model(x), y)
        total: Tensor | float = 0.0
        count: Tensor | float = 0.0
        for b in batches:
            s, c = self.loss(model, b)
            total, count = total + s, count + c
        return torch.as_tensor(total) / count


def teacher_labels(x: Tensor, classes: int, gen: torch.Generator) -> Tensor:
    feats = x.flatten(2).mean(dim=2) if x.ndim == 4 else x
    return (feats @ torch.randn(feats.shape[1], classes, generator=gen)).argmax(dim=1)


def digits_mlp(sizes: Sizes, key: str = "mlp") -> Problem:
    x, y = digits_data()["train"]
    model = make_mlp([64, 128, 128, 10], seed=0)
    train(model, nn.CrossEntropyLoss(), x, y, epochs=sizes.digits_epochs, batch_size=64, seed=0)
    return Problem(key, "MLP 64-128-128-10 (digits, 1,437)", model, (x, y))


def residual_cnn(
    shape: tuple[int, int, int], device: torch.device, *, key: str, steps: int = 20
) -> Problem:
    """A residual CNN with BatchNorm on ``n`` random images ``3 × side × side``, labelled
    by a random linear teacher, trained ``steps`` full-batch Adam steps on ``device``."""
    n, side, c = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, side, side, generator=gen)
    y = teacher_labels(x, 10, gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ResidualCNN(c=c)
    model, xd, yd = model.to(device), x.to(device), y.to(device)
    train(model, nn.CrossEntropyLoss(), xd, yd, steps=steps, lr=1e-2, seed=0)
    name = f"residual CNN + BatchNorm, {c} channels ({n:,} × 3×{side}×{side})"
    return Problem(key, name, model, (xd, yd))


def resnet20(sizes: Sizes, device: torch.device) -> Problem:
    """ResNet-20 (``zoo.resnet20_model``) on generated CIFAR-shaped images, trained
    ``resnet_steps`` full-batch Adam steps on ``device`` (BatchNorm in training mode);
    mapped in eval mode (the running statistics)."""
    n, width, blocks = sizes.resnet
    x, y = zoo.cifar_like_data(n, test_size=0.0)["train"]
    model = zoo.resnet20_model(width=width, blocks=blocks).to(device)
    xd, yd = x.to(device), y.to(device)
    train(model, nn.CrossEntropyLoss(), xd, yd, steps=sizes.resnet_steps, lr=5e-3, seed=0)
    arch = "ResNet-20" if (width, blocks) == (16, 3) else f"ResNet-{6 * blocks + 2}, width {width}"
    name = f"{arch} + BatchNorm, eval mode ({n:,} CIFAR-shaped images)"
    return Problem("b'", name, model, (xd, yd))


def transformer(sizes: Sizes, device: torch.device) -> Problem:
    """A GPT-style LM (``zoo.transformer_lm_model``) on ``zoo.lm_data`` batches, trained
    ``lm_steps`` Adam steps (one batch each, in turn) on ``device``."""
    vocab, d, layers, heads, seq = sizes.lm
    n, bs = sizes.lm_data
    model = zoo.transformer_lm_model(
        vocab=vocab, d_model=d, layers=layers, heads=heads, seq_len=seq
    ).to(device)
    raw = zoo.lm_data(n, seq_len=seq, vocab=vocab, seed=0, batch_size=bs)
    batches = [{k: t.to(device) for k, t in b.items()} for b in raw]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for i in range(sizes.lm_steps):
        opt.zero_grad(set_to_none=True)
        total, count = zoo.lm_loss(model, batches[i % len(batches)])
        (total / count.clamp(min=1)).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    name = (
        f"GPT-style LM, d_model {d}, {layers} layers, {heads} heads, vocab {vocab} "
        f"({n:,} sequences ≤ {seq} tokens, {len(batches)} batches)"
    )
    return Problem("d", name, model, batches, loss=zoo.lm_loss)


def big_mlp(sizes: Sizes, device: torch.device) -> Problem:
    widths = sizes.big_mlp
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.big_samples, widths[0], generator=gen)
    y = teacher_labels(x, widths[-1], gen)
    model = make_mlp(list(widths), seed=0).to(device)
    xd, yd = x.to(device), y.to(device)
    train(model, nn.CrossEntropyLoss(), xd, yd, steps=20, lr=1e-3, seed=0)
    name = f"MLP {'-'.join(map(str, widths))} ({sizes.big_samples:,} synthetic)"
    return Problem("c", name, model, (xd, yd))


def directions(land: lm.Landscape) -> tuple[Vec, Vec]:
    d1, d2 = lm.directions.random(land, 2, normalization="filter", ignore=("bias", "norm"), seed=0)
    return dict(d1), dict(d2)


def cast(v: Vec, device: torch.device | str, dtype: torch.dtype) -> Vec:
    return {k: t.detach().to(device=device, dtype=dtype) for k, t in v.items()}


def rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    return float((np.abs(a - ref) / np.maximum(np.abs(ref), 1e-300)).max())


@contextmanager
def cudnn_ieee() -> Iterator[str]:
    """cuDNN convolutions in IEEE float32 (no TF32) inside the block; yields how."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        old = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield "torch.backends.cudnn.conv.fp32_precision = 'ieee'"
        finally:
            conv.fp32_precision = old
    else:
        old_flag = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield "torch.backends.cudnn.allow_tf32 = False"
        finally:
            torch.backends.cudnn.allow_tf32 = old_flag


# --------------------------------------------------- 1. correctness on the device
def plane_twice(land: lm.Landscape, d1: Vec, d2: Vec, steps: int, strategy: str) -> dict[str, Any]:
    """One strategy's plane, twice: values, the pick, and whether the repeat is the same bits."""
    try:
        t, a = timed(
            land.device, lambda: lm.plane(land, d1, d2, span=1, steps=steps, strategy=strategy)
        )
    except ValueError as e:
        return {"eligible": False, "note": first_line(e)}
    b = lm.plane(land, d1, d2, span=1, steps=steps, strategy=strategy)
    eng = a.meta["engine"]
    la, lb = a["loss"], b["loss"]
    return {
        "eligible": True,
        "loss": la,
        "picked": eng["strategy"],
        "reason": eng.get("reason", ""),
        "seconds": t,
        "same": bool(np.array_equal(la, lb, equal_nan=True)),
        "repeat_abs": float(np.nanmax(np.abs(la - lb))),
    }


def check_planes(p: Problem, device: torch.device, steps: int) -> dict[str, dict[str, Any]]:
    land = p.landscape(device)
    d1, d2 = directions(land)
    return {s: plane_twice(land, d1, d2, steps, s) for s in STRATEGIES}


def correctness(p: Problem, device: torch.device, sizes: Sizes, report: Report) -> bool:
    """Section 1 for one model; returns whether every plane repeated bit for bit."""
    steps = sizes.steps_check
    log(f"[1] {p.name}: float64 reference on the CPU ({steps} × {steps}, loop)")
    land = p.landscape(device)
    d1, d2 = directions(land)
    ref_land = p.landscape(torch.device("cpu"), torch.float64)
    r1, r2 = cast(d1, "cpu", torch.float64), cast(d2, "cpu", torch.float64)
    ref = lm.plane(ref_land, r1, r2, span=1, steps=steps, strategy="loop")["loss"]
    rows = [
        f"### {p.name}: {p.n_params:,} parameters, {steps} × {steps} plane",
        "",
        "| strategy | ran as | max rel Δ vs CPU float64 | same bits twice (max abs Δ) | s (first run) |",
        "|---|---|---:|---|---:|",
    ]
    all_same = True
    reasons = []
    for s in STRATEGIES:
        log(f"[1] {p.key}: strategy {s}")
        try:
            r = plane_twice(land, d1, d2, steps, s)
        except Exception as e:  # not a refusal: a failure on this device, a finding
            all_same = False
            rows.append(
                f"| {s} | raised `{record_error(report, f'1. {p.key} {s}', e)}` | – | – | – |"
            )
            continue
        if not r["eligible"]:
            rows.append(f"| {s} | not eligible (`{r['note']}`) | – | – | – |")
            continue
        all_same &= r["same"]
        rows.append(plane_row(s, r, ref))
        if s == "auto":
            reasons.append(f"auto picked **{r['picked']}**: {r['reason']}")
    report.add("1. Correctness on the device", [*rows])
    has_conv = any(isinstance(m, nn.Conv2d) for m in p.model.modules())
    if device.type == "cuda" and has_conv:
        with guard(report, f"1. {p.key} with TF32 off"), cudnn_ieee() as how:
            for s in ("loop", "auto"):
                r = plane_twice(land, d1, d2, steps, s)
                report.add("1. Correctness on the device", [plane_row(f"{s}, TF32 off", r, ref)])
            reasons.append(f"TF32 off: `{how}` around those rows.")
    report.add("1. Correctness on the device", ["", *reasons, ""])
    return all_same


def plane_row(label: str, r: dict[str, Any], ref: np.ndarray) -> str:
    same = "yes" if r["same"] else f"**no** ({r['repeat_abs']:.1e})"
    return (
        f"| {label} | {r['picked']} | {rel_diff(r['loss'], ref):.1e} | {same} "
        f"| {fmt(r['seconds'])} |"
    )


def deterministic_rerun(args: argparse.Namespace, budget: Budget, report: Report) -> None:
    """The repeat check again in a fresh process, deterministic algorithms on."""
    left = min(budget.left(S1_END + 0.1), 90.0)  # may take from section 2's time
    if left < 10:
        report.add(
            "1. Correctness on the device", [f"Deterministic re-run skipped: {left:.0f} s left."]
        )
        return
    log(f"[1] re-running the repeat check with deterministic algorithms (limit {left:.0f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "det.json"
        cmd = [
            sys.executable,
            __file__,
            "--device",
            str(args.device),
            "--determinism-child",
            str(path),
        ]
        cmd += ["--quick"] if args.quick else []
        env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=CUBLAS_DETERMINISTIC)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            report.add(
                "1. Correctness on the device",
                [f"Deterministic re-run: timed out after {left:.0f} s."],
            )
            return
        secs = time.perf_counter() - t0
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
            raise RuntimeError(
                f"the deterministic child failed (rc {proc.returncode}): {' | '.join(tail)}"
            )
        res = json.loads(path.read_text())
    lines = [
        f"### Repeats with `CUBLAS_WORKSPACE_CONFIG={CUBLAS_DETERMINISTIC}` and "
        f"`torch.use_deterministic_algorithms(True)` (a fresh process, {secs:.0f} s)",
        "",
        "| model | strategy | ran as | same bits twice (max abs Δ) |",
        "|---|---|---|---|",
    ]
    for key, per in res.items():
        for s, r in per.items():
            if "error" in r:
                lines.append(f"| {key} | {s} | raised: `{r['error']}` | – |")
            elif r["eligible"]:
                same = "yes" if r["same"] else f"**no** ({r['repeat_abs']:.1e})"
                lines.append(f"| {key} | {s} | {r['picked']} | {same} |")
    report.add("1. Correctness on the device", [*lines, ""])


def determinism_child(device: torch.device, sizes: Sizes, out: Path) -> int:
    """The child of :func:`deterministic_rerun`: the two correctness models' planes, twice."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    torch.use_deterministic_algorithms(True)
    res: dict[str, dict[str, Any]] = {}
    for p in (digits_mlp(sizes), residual_cnn(sizes.cnn_small, torch.device("cpu"), key="cnn")):
        land = p.landscape(device)
        d1, d2 = directions(land)
        res[p.key] = {}
        for s in STRATEGIES:
            try:
                r = plane_twice(land, d1, d2, sizes.steps_check, s)
            except Exception as e:  # a kernel without a deterministic version is a finding
                r = {"eligible": True, "error": first_line(e)}
            r.pop("loss", None)
            res[p.key][s] = r
    out.write_text(json.dumps(res))
    return 0


# ------------------------------------------------------------ 2. speed of planes
def naive_plane(
    p: Problem,
    model: nn.Module,
    batches: list[Batch],
    theta: Vec,
    d1: Vec,
    d2: Vec,
    axis: np.ndarray,
) -> np.ndarray:
    """The baseline (as in ``benchmarks/surface.py``): write each point into a copy of
    the model, the loss on every batch, and ``.item()`` per point."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())  # a tied tensor once, as in θ0
    out = np.empty((len(axis), len(axis)))
    with torch.no_grad():
        for i, a in enumerate(axis):
            for j, b in enumerate(axis):
                for k, t in params.items():
                    t.copy_(theta[k] + float(a) * d1[k] + float(b) * d2[k])
                out[i, j] = p.mean_loss(model, batches).item()
    return out


def forward_s(p: Problem, model: nn.Module, batches: list[Batch], n: int = 5) -> float:
    """Median seconds of one pass of the loss over the data, in inference mode."""
    device = next(model.parameters()).device
    times = []
    with torch.inference_mode():
        for _ in range(n + 1):
            t, _ = timed(device, lambda: p.mean_loss(model, batches))
            times.append(t)
    return statistics.median(times[1:])


def plane_call(
    land: lm.Landscape, d1: Vec, d2: Vec, steps: int, strategy: str
) -> Callable[[], lm.Surface]:
    return lambda: lm.plane(land, d1, d2, span=1, steps=steps, strategy=strategy)


@dataclass
class Timings:
    """What the timed rounds of section 2 gathered, per method."""

    times: dict[str, list[float]]
    values: dict[str, np.ndarray]
    peaks: dict[str, int]
    picks: list[str]
    failed: dict[str, str]


def warm_up(
    methods: dict[str, Callable[[], Any]], device: torch.device, report: Report, key: str
) -> tuple[dict[str, float], dict[str, str]]:
    """Each method once on the small plane; a method that raises is dropped (a finding)."""
    warm: dict[str, float] = {}
    failed: dict[str, str] = {}
    for k, fn in list(methods.items()):
        try:
            warm[k], _ = timed(device, fn)
        except Exception as e:  # one method failing on this device must not hide the rest
            failed[k] = record_error(report, f"2. ({key}) {k} (warm-up)", e)
            del methods[k]
            release()
    return warm, failed


def timed_rounds(
    methods: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    deadline: float,
    budget: Budget,
    report: Report,
    key: str,
) -> Timings:
    """Up to ``repeats`` round-robin rounds (rotated), a round only where the previous
    one's time still fits before ``deadline``; the first round always runs."""
    out = Timings({k: [] for k in methods}, {}, {}, [], {})
    order = list(methods)
    last = 0.0
    for r in range(repeats):
        if r and last > budget.before(deadline):
            break
        t_round = time.perf_counter()
        for k in order[r % len(order) :] + order[: r % len(order)]:
            if k in out.failed:
                continue
            reset_peak(device)
            try:
                t, res = timed(device, methods[k])
            except Exception as e:  # e.g. out of memory at the full plane's chunk size
                out.failed[k] = record_error(report, f"2. ({key}) {k} (timed plane)", e)
                release()
                continue
            out.times[k].append(t)
            out.peaks[k] = max(out.peaks.get(k, 0), peak_bytes(device) or 0)
            if k not in out.values:
                out.values[k] = res if isinstance(res, np.ndarray) else res["loss"]
            if k == "auto":
                out.picks.append(res.meta["engine"]["strategy"])
        last = time.perf_counter() - t_round
    return out


def speed(
    p: Problem, device: torch.device, sizes: Sizes, deadline: float, budget: Budget, report: Report
) -> None:
    """Section 2 for one model: every method warmed up on a small plane, then timed."""
    sec = "2. Speed of planes"
    steps, warm_steps = sizes.steps_speed, sizes.steps_warm
    n = steps * steps
    land = p.landscape(device)
    batches = p.batches(device)
    d1, d2 = directions(land)
    theta = land.point()
    fwd = forward_s(p, land.model, batches)
    probe = lm.plane(land, d1, d2, span=1, steps=warm_steps, strategy="auto")
    eligible = [s for s in STRATEGIES if s != "auto" and s in probe.meta["engine"]["eligible"]]
    axis = np.linspace(-1.0, 1.0, steps)  # lossmap's grid (span=1)
    warm_axis = np.linspace(-1.0, 1.0, warm_steps)
    names = ("auto", *eligible)
    methods: dict[str, Callable[[], Any]] = {
        "naive": lambda: naive_plane(p, land.model, batches, theta, d1, d2, axis),
        **{s: plane_call(land, d1, d2, steps, s) for s in names},
    }
    warm_fns: dict[str, Callable[[], Any]] = {
        "naive": lambda: naive_plane(p, land.model, batches, theta, d1, d2, warm_axis),
        **{s: plane_call(land, d1, d2, warm_steps, s) for s in names},
    }
    estimate = SPEED_SLACK * len(methods) * (n + warm_steps**2) * fwd
    title = f"### ({p.key}) {p.name}: {p.n_params:,} parameters, {steps} × {steps} plane"
    left = budget.before(deadline)
    if estimate > left:
        lines = [
            title,
            "",
            f"Skipped: about {fmt(estimate, 2)} s needed, {fmt(max(left, 0.0), 2)} s left.",
            "",
        ]
        report.add(sec, lines)
        return
    log(f"[2] {p.key}: warm-up of {', '.join(methods)} (forward {1000 * fwd:.3g} ms)")
    _, failed = warm_up(warm_fns, device, report, p.key)
    methods = {k: fn for k, fn in methods.items() if k in warm_fns}
    if "naive" not in methods:
        report.add(sec, [title, "", "The naive loop failed: nothing to compare.", ""])
        return
    log(f"[2] {p.key}: up to {sizes.repeats} timed round(s), {budget.before(deadline):.0f} s left")
    res = timed_rounds(methods, device, sizes.repeats, deadline, budget, report, p.key)
    failed |= res.failed
    report.add(sec, speed_rows(p, title, fwd, probe, res, failed, sizes, n))


def speed_rows(
    p: Problem,
    title: str,
    fwd: float,
    probe: lm.Surface,
    res: Timings,
    failed: dict[str, str],
    sizes: Sizes,
    n: int,
) -> list[str]:
    """Section 2's table for one model."""
    rounds = max((len(v) for v in res.times.values()), default=0)
    note = "" if rounds == sizes.repeats else f" ({rounds} of {sizes.repeats}: the budget)"
    picks = ", ".join(sorted(set(res.picks))) or probe.meta["engine"]["strategy"]
    rows = [
        title,
        "",
        f"One pass of the loss over the data: {1000 * fwd:.3g} ms. auto → {picks} "
        f"({probe.meta['engine'].get('reason', '')}). Median of {rounds} round(s){note}; "
        "warm-up on a smaller plane not counted. Peak memory: all the device held during "
        "the plane, model and data included.",
        "",
        "| method | s per plane (min) | ms/pt | naive ÷ method | ÷ forward | max rel Δ vs naive "
        "| peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    med = {k: statistics.median(v) for k, v in res.times.items() if v}
    for k in [*res.times, *(k for k in failed if k not in res.times)]:
        label = "naive loop" if k == "naive" else f"lossmap {k}"
        if k in failed:
            rows.append(f"| {label} | raised `{failed[k]}` | – | – | – | – | – |")
            continue
        if k not in med:
            rows.append(f"| {label} | not timed | – | – | – | – | – |")
            continue
        ratio = f"{med['naive'] / med[k]:.2f}×" if "naive" in med else "–"
        rel = "–" if k == "naive" or "naive" not in res.values else ""
        rel = rel or f"{rel_diff(res.values[k], res.values['naive']):.1e}"
        peak = mib(res.peaks[k]) if res.peaks.get(k) else "– (CPU)"
        rows.append(
            f"| {label} | {fmt(med[k])} ({fmt(min(res.times[k]))}) | {fmt(1000 * med[k] / n)} "
            f"| {ratio} | {med[k] / n / fwd:.2f} | {rel} | {peak} |"
        )
    return [*rows, ""]


# ------------------------------------- 3. Hessian-vector products and eigenvalues
def unit_vector(land: lm.Landscape, seed: int) -> Vec:
    """A Gaussian direction of unit norm over all parameters (drawn on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    theta = land.point()
    v = {k: torch.randn(t.shape, generator=gen, dtype=torch.float64) for k, t in theta.items()}
    norm = vnorm(v)
    return {k: (t / norm).to(device=theta[k].device, dtype=theta[k].dtype) for k, t in v.items()}


def vnorm(v: Vec) -> float:
    return float(torch.stack([(t.double() ** 2).sum() for t in v.values()]).sum().sqrt())


def fd_check(
    p: Problem, device: torch.device, dtype: torch.dtype, hs: tuple[float, ...]
) -> tuple[list[tuple[float, float]], float | None]:
    """``||Hv - FD|| / ||Hv||`` for each step ``h``, FD the central difference of
    ``land.gradient`` at ``θ0 ± t v``, ``t = h ||θ0||``, ``v`` a unit Gaussian vector;
    and, below float64, ``||Hv - Hv_64|| / ||Hv_64||`` against the float64 product on
    a float64 copy (same device, same ``v``)."""
    land = p.landscape(device, dtype)
    theta = land.point()
    v = unit_vector(land, seed=1)
    hv = HessianOperator(land).hvp_dict(v)
    scale = vnorm(theta)
    out = []
    for h in hs:
        t = h * scale
        gp = land.gradient({k: theta[k] + t * v[k] for k in theta})
        gm = land.gradient({k: theta[k] - t * v[k] for k in theta})
        fd = {k: (gp[k].double() - gm[k].double()) / (2 * t) for k in theta}
        err = vnorm({k: hv[k].double() - fd[k] for k in theta})
        out.append((h, err / vnorm(hv)))
    vs64 = None
    if dtype != torch.float64:
        del land, gp, gm, fd
        release()
        land64 = p.landscape(device, torch.float64)
        hv64 = HessianOperator(land64).hvp_dict(unit_vector(land64, seed=1))
        vs64 = vnorm({k: hv[k].double() - hv64[k] for k in hv}) / vnorm(hv64)
    return out, vs64


def fd_row(label: str, res: tuple[list[tuple[float, float]], float | None]) -> str:
    steps, vs64 = res
    cells = ", ".join(f"h={h:g}: {r:.1e}" for h, r in steps)
    f64 = "–" if vs64 is None else f"{vs64:.1e}"
    return f"| {label} | {cells} | {min(r for _, r in steps):.1e} | {f64} |"


def lanczos_cap(n_params: int, hvp_s: float, seconds: float) -> int:
    """The most Lanczos steps whose products (``hvp_s`` each) and host work (step ``j``
    reads about ``4 j n`` float64 numbers: two reorthogonalisation passes, two reads
    each) fit in ``seconds``."""
    m, spent = 0, 0.0
    while m < 300:
        step = hvp_s + HOST_S_PER_NUMBER * 4 * (m + 1) * n_params
        if spent + step > seconds:
            break
        spent += step
        m += 1
    return m


def hvp_costs(
    p: Problem, device: torch.device, sizes: Sizes, deadline: float, budget: Budget, report: Report
) -> float:
    """Section 3 for one model: product times and memory, then the top eigenvalues;
    returns the mean product's seconds."""
    sec = "3. Hessian-vector products and top eigenvalues"
    land = p.landscape(device)
    base = allocated_mib(device)
    reset_peak(device)
    op = HessianOperator(land)
    v = torch.randn(land.num_parameters, generator=torch.Generator().manual_seed(2))
    v = v.to(device=device, dtype=torch.float32)
    first, _ = timed(device, functools.partial(op.hvp, v))
    nxt = [timed(device, functools.partial(op.hvp, v))[0] for _ in range(sizes.hvp_next)]
    mean = statistics.fmean(nxt)
    peak_hvp = peak_mib(device)
    graph = "kept for every product" if op.reuse_graph else "rebuilt batch by batch per product"
    del op
    release()
    memory = (
        f"peak device memory {peak_hvp} (allocated before the operator: {base})"
        if device.type == "cuda"
        else "device memory not measured on the CPU"
    )
    lines = [
        f"### ({p.key}) {p.name}: {p.n_params:,} parameters",
        "",
        f"- HVP: first {1000 * first:.3g} ms (builds the gradient graph; graph {graph}), then "
        f"{1000 * mean:.3g} ms mean over {len(nxt)} (min {1000 * min(nxt):.3g}, "
        f"max {1000 * max(nxt):.3g}); {memory}",
    ]
    report.add(sec, lines)
    cap = lanczos_cap(land.num_parameters, mean, budget.before(deadline) - first - 2)
    if cap < 2 * EIG_K:
        left = budget.before(deadline)
        report.add(sec, [f"- top-{EIG_K} eigenvalues skipped: {left:.0f} s left", ""])
        return mean
    log(f"[3] {p.key}: eigenvalues(k={EIG_K}, tol={EIG_TOL:g}, max_iter={cap})")
    reset_peak(device)
    op = HessianOperator(land)
    max_iter = None if cap >= 300 else cap
    t, e = timed(
        device, functools.partial(eigenvalues, op, k=EIG_K, tol=EIG_TOL, max_iter=max_iter)
    )
    vals = ", ".join(f"{x:.5g}" for x in e.values)
    capped = "" if max_iter is None else f" (max_iter {cap}: what fit the time left)"
    lines = [
        f"- `eigenvalues(op, k={EIG_K}, tol={EIG_TOL:g})`{capped}: λ = {vals}; {e.matvecs} "
        f"Lanczos steps, {t:.3g} s: {op.seconds:.3g} s in products ({1000 * op.seconds / max(e.matvecs, 1):.3g} "
        f"ms each, the first builds the graph), {t - op.seconds:.3g} s the rest (Lanczos's "
        f"reorthogonalisation in float64 numpy on the host, transfers); converged: "
        f"{e.converged}, largest residual ‖Hv − λv‖ {max(e.residuals):.1e}; "
        f"peak memory {peak_mib(device)}",
        "",
    ]
    report.add(sec, lines)
    del op, e
    release()
    return mean


def fd_table(
    problems: list[tuple[Problem, torch.dtype]],
    device: torch.device,
    report: Report,
    budget: Budget,
    until: float,
    hvp_s: dict[str, float],
) -> None:
    """The FD rows, each where its estimate fits: 5 s, plus 12 products at the mean
    time section 3 measured (8 gradients, the product, the float64 product)."""
    sec = "3. Hessian-vector products and top eigenvalues"
    rows = [
        "### One HVP against a central difference of `land.gradient`",
        "",
        "`||Hv - FD|| / ||Hv||`, `FD = (g(θ0 + t v) - g(θ0 - t v)) / 2t`, `v` a unit Gaussian "
        "vector, `t = h ||θ0||`: too large a step measures the gradient's jumps at ReLU "
        "kinks (and the third derivative), too small a step the rounding of the gradient. "
        "Last column: the same product against lossmap's float64 product on a float64 copy.",
        "",
        "| model, dtype | rel Δ vs FD, per step | best | rel Δ vs float64 HVP |",
        "|---|---|---:|---:|",
    ]
    report.add(sec, rows)
    for p, dtype in problems:
        label = f"({p.key}) {p.name}, {str(dtype).removeprefix('torch.')}"
        need = 5 + FD_PRODUCTS * hvp_s.get(p.key, 0.0)
        if budget.left(until) < need:
            left = budget.left(until)
            report.add(
                sec, [f"| {label} | skipped: ~{need:.0f} s needed, {left:.0f} s left | – | – |"]
            )
            continue
        with guard(report, f"3. FD check {label}"):
            log(f"[3] FD check {label}")
            hs = FD_STEPS_F64 if dtype == torch.float64 else FD_STEPS
            report.add(sec, [fd_row(label, fd_check(p, device, dtype, hs))])
            release()


# ------------------------------------------------------------------ 4. ranks
def rank_count(device: torch.device, sizes: Sizes) -> int:
    """Ranks section 4 launches: the GPUs where there are several, else 0 (one GPU);
    on the CPU, ``sizes.cpu_ranks`` gloo processes (a smoke test)."""
    if device.type == "cuda":
        g = torch.cuda.device_count()
        return g if g > 1 else 0
    return sizes.cpu_ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_job(payload: Path, out: Path, device_arg: str) -> int:
    """``--job``: one rank of section 4 (under torchrun). Rebuilds (b') from the
    payload, computes its plane in points mode and then in data mode, each after a 3 × 3
    warm-up and timed from a barrier; rank 0 saves the values and the slowest rank's
    times to ``out`` (``.npz``)."""
    job = torch.load(payload, weights_only=True)
    if device_arg.startswith("cpu"):
        torch.set_num_threads(1)
    ranks = lm.distributed.init("points", device=device_arg, timeout=300)
    if ranks is None:
        raise SystemExit("--job runs under torchrun with several ranks (WORLD_SIZE > 1)")
    dev = torch.device(device_arg)
    if dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())  # init: cuda:LOCAL_RANK
    model = zoo.resnet20_model(width=int(job["width"]), blocks=int(job["blocks"]))
    model.load_state_dict(job["state"])
    model = model.to(dev).eval()
    data = (job["x"].to(dev), job["y"].to(dev))
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=data, device=dev)
    d1, d2 = cast(job["d1"], dev, torch.float32), cast(job["d2"], dev, torch.float32)
    steps, strategy, chunk = int(job["steps"]), str(job["strategy"]), int(job["chunk"])
    saved: dict[str, Any] = {"world": ranks.world}
    for mode in lm.distributed.MODES:
        shared = land.distribute(mode)
        lm.plane(shared, d1, d2, span=1, steps=3, strategy=strategy)  # warm-up
        reset_peak(dev)
        ranks.all_gather(0)  # a barrier: every rank starts the clock together
        call = functools.partial(
            lm.plane, shared, d1, d2, span=1, steps=steps, strategy=strategy, chunk_size=chunk
        )
        t, surf = timed(dev, call)
        every = ranks.all_gather({"seconds": t, "peak": peak_bytes(dev) or 0})
        saved[f"{mode}_loss"] = surf["loss"]
        saved[f"{mode}_seconds"] = max(e["seconds"] for e in every)
        saved[f"{mode}_peak"] = max(e["peak"] for e in every)
        saved[f"{mode}_strategy"] = surf.meta["engine"]["strategy"]
        saved[f"{mode}_chunk"] = surf.meta["engine"]["chunk_size"]
    if ranks.main:
        np.savez(out, **saved)
    return 0


def launch_ranks(world: int, payload: Path, out: Path, device: torch.device, limit: float) -> float:
    """Run :func:`rank_job` on ``world`` ranks; the launch's wall time."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world)]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    cmd += [str(Path(__file__).resolve()), "--device", device.type, "--job", str(payload)]
    cmd += ["--job-out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    # A session of its own: on a timeout the launcher and every rank it started end
    # together (killing torchrun alone would leave its workers holding the GPUs).
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"torchrun did not finish within {limit:.0f} s (killed)") from None
    if proc.returncode != 0 or not out.exists():
        lines = (stderr or stdout).strip().splitlines()
        # torchrun ends with its own summary; the ranks' exceptions come before it
        errors = [x.strip() for x in lines if "Error" in x or "Exception" in x]
        tail = list(dict.fromkeys(errors))[-3:] or lines[-8:]
        raise RuntimeError(f"torchrun failed (rc {proc.returncode}): {' | '.join(tail)}")
    return time.perf_counter() - t0


def ranks_section(
    p: Problem, world: int, device: torch.device, sizes: Sizes, budget: Budget, report: Report
) -> None:
    """Section 4: (b')'s plane on one device here, then on ``world`` ranks (torchrun)."""
    sec = "4. Ranks"
    steps = sizes.steps_speed
    n = steps * steps
    if budget.left() < RANKS_LAUNCH_S:
        report.add(
            sec,
            [
                f"Skipped: {budget.left():.0f} s left, the launch alone takes ~{RANKS_LAUNCH_S:.0f} s.",
                "",
            ],
        )
        return
    land = p.landscape(device)
    d1, d2 = directions(land)
    auto = lm.plane(land, d1, d2, span=1, steps=steps, strategy="auto")
    strategy = auto.meta["engine"]["strategy"]
    chunk = lm.distributed.dealt_chunk(auto.meta["engine"]["chunk_size"], n, world)
    reset_peak(device)
    one, ref = timed(
        device,
        lambda: lm.plane(land, d1, d2, span=1, steps=steps, strategy=strategy, chunk_size=chunk),
    )
    peak_one = peak_bytes(device)
    need = RANKS_LAUNCH_S + 2 * (one + one / world)
    if need > budget.left():
        report.add(sec, [f"Skipped: about {need:.0f} s needed, {budget.left():.0f} s left.", ""])
        return
    what = "GPUs" if device.type == "cuda" else "gloo ranks on the CPU (a smoke test, not a speed)"
    log(f"[4] torchrun on {world} {what}")
    with tempfile.TemporaryDirectory() as tmp:
        payload, out = Path(tmp) / "job.pt", Path(tmp) / "job.npz"
        _, width, blocks = sizes.resnet
        state = {k: t.detach().cpu() for k, t in p.model.state_dict().items()}
        x, y = (t.cpu() for t in p.data)  # type: ignore[union-attr]
        job = {"state": state, "x": x, "y": y, "width": width, "blocks": blocks}
        job |= {"d1": cast(d1, "cpu", torch.float32), "d2": cast(d2, "cpu", torch.float32)}
        job |= {"steps": steps, "strategy": strategy, "chunk": chunk}
        torch.save(job, payload)
        del job, state, x, y
        release()  # the ranks' GPUs include this process's
        wall = launch_ranks(world, payload, out, device, max(budget.left(), 10.0))
        got = dict(np.load(out))
    ref_loss = ref["loss"]
    lines = [
        f"### ({p.key}) {p.name}: {steps} × {steps} plane on {world} {what}",
        "",
        f"Strategy {strategy} (auto's pick here), chunk size {chunk} "
        f"(`dealt_chunk({auto.meta['engine']['chunk_size']}, {n}, {world})`) in every run. "
        f"Times from a barrier to the slowest rank, after a 3 × 3 warm-up; the torchrun "
        f"launch took {wall:.1f} s in all (interpreters, imports, process group, both planes).",
        "",
        "| run | s per plane | speed-up | max rel Δ vs 1 device | same bits | peak memory (max rank) |",
        "|---|---:|---:|---:|---|---:|",
        f"| 1 device (this process) | {fmt(one)} | 1.00× | – | – | {mib(peak_one)} |",
    ]
    for mode in lm.distributed.MODES:
        loss, secs = got[f"{mode}_loss"], float(got[f"{mode}_seconds"])
        same = bool(np.array_equal(loss, ref_loss, equal_nan=True))
        peak = int(got[f"{mode}_peak"]) or None
        lines.append(
            f"| {world} ranks, {mode} mode ({got[f'{mode}_strategy']}, chunk "
            f"{int(got[f'{mode}_chunk'])}) | {fmt(secs)} | {one / secs:.2f}× "
            f"| {rel_diff(loss, ref_loss):.1e} | {'yes' if same else 'no'} "
            f"| {mib(peak)} |"
        )
    lines += [
        "",
        "Points mode must give the single process's bits; data mode sums per-rank "
        "shares, equal up to rounding.",
        "",
    ]
    report.add(sec, lines)


# ------------------------------------------------------------------ the report
def machine(device: torch.device, sizes: Sizes, budget_s: float) -> list[str]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = (
            f"{torch.cuda.get_device_name(device)}, {props.total_memory / 2**30:.0f} GiB, "
            f"compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs; "
            f"{torch.cuda.device_count()} GPU(s) visible"
        )
        cuda = f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        try:
            tf32 = (
                f"float32 matmul precision `{torch.get_float32_matmul_precision()}`, "
                f"cuDNN TF32 allowed: {torch.backends.cudnn.allow_tf32}"
            )
        except RuntimeError as e:
            tf32 = f"TF32 flags unreadable: {first_line(e)}"
    else:
        gpu, cuda, tf32 = "none (CPU run)", f"CUDA {torch.version.cuda}", "–"
    return [
        f"# lossmap on {device.type.upper()}: correctness, speed of planes, Hessian products, ranks",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- device: `{device}`; GPU: {gpu}",
        f"- torch {torch.__version__}, {cuda}; {tf32}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores), torch threads {torch.get_num_threads()}",
        f"- numpy {np.__version__}, python {platform.python_version()}, lossmap {lm.__version__} ({code_state()})",
        f"- command: `{' '.join(sys.argv)}`; sizes: {'quick' if sizes is QUICK else 'full'}; "
        f"time budget {budget_s:.0f} s",
        "",
    ]


def section_correctness(
    args: argparse.Namespace,
    problems: list[Problem],
    device: torch.device,
    sizes: Sizes,
    budget: Budget,
    report: Report,
) -> None:
    """Section 1 on each model, then the deterministic re-run if asked for or needed."""
    all_same = True
    for p in problems:
        if budget.left(S1_END) < 0:
            report.add("1. Correctness on the device", [f"{p.name}: skipped (time budget).", ""])
            continue
        with guard(report, f"1. correctness ({p.key})"):
            all_same &= correctness(p, device, sizes, report)
    rerun = args.deterministic_rerun
    if rerun == "always" or (rerun == "auto" and not all_same):
        with guard(report, "1. deterministic re-run"):
            deterministic_rerun(args, budget, report)


def section_speed(
    mlp: Problem | None, device: torch.device, sizes: Sizes, budget: Budget, report: Report
) -> dict[str, Problem]:
    """Section 2 on (b'), (d), (a), (c), each in its share of the section's time left;
    returns the models built, for sections 3 and 4."""
    problems: dict[str, Problem] = {}
    builders: dict[str, Callable[[], Problem]] = {
        "b'": lambda: resnet20(sizes, device),
        "d": lambda: transformer(sizes, device),
        "c": lambda: big_mlp(sizes, device),
    }
    if mlp is not None:
        builders["a"] = lambda: Problem("a", mlp.name, mlp.model, mlp.data)
    order = [k for k in SPEED_SHARES if k in builders]
    for i, key in enumerate(order):
        rest = sum(SPEED_SHARES[k] for k in order[i:])
        deadline = budget.share(S2_END, SPEED_SHARES[key], rest)
        with guard(report, f"2. speed ({key})"):
            log(f"[2] building ({key}); {budget.before(deadline):.0f} s for it")
            problems[key] = build = builders[key]()
            speed(build, device, sizes, deadline, budget, report)
        release()
    return problems


def section_hvp(
    problems: dict[str, Problem],
    small_cnn: Problem | None,
    device: torch.device,
    sizes: Sizes,
    budget: Budget,
    until: float,
    report: Report,
) -> None:
    """Section 3: costs and eigenvalues on (b') and (d), then the finite-difference table."""
    sec = "3. Hessian-vector products and top eigenvalues"
    order = list(HVP_SHARES)
    hvp_s: dict[str, float] = {}
    for i, key in enumerate(order[:-1]):
        rest = sum(HVP_SHARES[k] for k in order[i:])
        deadline = budget.share(until, HVP_SHARES[key], rest)
        if key not in problems or budget.before(deadline) < 3:
            report.add(sec, [f"({key}) skipped: not built, or the time budget.", ""])
            continue
        with guard(report, f"3. HVP ({key})"):
            log(f"[3] HVP costs ({key}); {budget.before(deadline):.0f} s for it")
            hvp_s[key] = hvp_costs(problems[key], device, sizes, deadline, budget, report)
        release()
    fd = [(problems[k], torch.float32) for k in ("d", "b'") if k in problems]
    if small_cnn is not None:
        fd += [(small_cnn, torch.float32), (small_cnn, torch.float64)]
    fd_table(fd, device, report, budget, until, hvp_s)


def section_ranks(
    problems: dict[str, Problem],
    world: int,
    device: torch.device,
    sizes: Sizes,
    budget: Budget,
    report: Report,
) -> None:
    sec = "4. Ranks"
    if device.type == "cuda" and world == 0:
        report.add(
            sec,
            [
                f"One GPU (`torch.cuda.device_count()` = {torch.cuda.device_count()}): "
                "ranks not measured.",
                "",
            ],
        )
        return
    if "b'" not in problems:
        report.add(sec, ["Skipped: (b') was not built (see section 2 and the errors).", ""])
        return
    with guard(report, "4. ranks"):
        ranks_section(problems["b'"], world, device, sizes, budget, report)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    ap.add_argument("--device", default=default, help=f"where to run (default {default})")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke test)")
    ap.add_argument(
        "--out", type=Path, default=None, help="markdown report (default: results/gpu.md)"
    )
    ap.add_argument(
        "--budget", type=float, default=None, help="seconds for the whole run (270; --quick 150)"
    )
    ap.add_argument(
        "--deterministic-rerun",
        choices=("auto", "always", "never"),
        default="auto",
        help="repeat section 1's repeat check with deterministic algorithms (auto: if a repeat differed)",
    )
    ap.add_argument("--determinism-child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--job", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--job-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.job is not None:
        return rank_job(args.job, args.job_out, args.device)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False; use --device cpu")
    sizes = QUICK if args.quick else FULL
    if args.quick and device.type == "cpu":
        # On a shared 2-core machine two torch threads spin against the other processes
        # (measured: a digits forward 2.2 ms on one thread, 18 ms on two under load 8).
        torch.set_num_threads(1)
    if args.determinism_child is not None:
        return determinism_child(device, sizes, args.determinism_child)
    budget = Budget(args.budget or sizes.budget_s)
    out = args.out or Path(__file__).resolve().parent / "results" / (
        "gpu-quick.md" if args.quick else "gpu.md"
    )
    report = Report(out, machine(device, sizes, budget.seconds))
    report.write()
    log(f"report: {out}; budget {budget.seconds:.0f} s")

    cpu = torch.device("cpu")
    small: dict[str, Problem] = {}  # section 1's models, trained on the CPU
    with guard(report, "building the digits MLP and the small CNN"):
        small["mlp"] = digits_mlp(sizes)
        small["cnn"] = residual_cnn(sizes.cnn_small, cpu, key="cnn")
    section_correctness(args, list(small.values()), device, sizes, budget, report)
    big = section_speed(small.get("mlp"), device, sizes, budget, report)
    world = rank_count(device, sizes)
    until = S3_END_WITH_RANKS if world else 1.0
    section_hvp(big, small.get("cnn"), device, sizes, budget, until, report)
    section_ranks(big, world, device, sizes, budget, report)
    report.head.insert(-1, f"- finished in {budget.elapsed():.0f} s")
    report.write()
    print(out.read_text(), flush=True)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
