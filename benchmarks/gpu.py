"""lossmap on a GPU: values against float64 on the CPU, speed of planes, Hessian products.

Usage::

    PYTHONPATH=src python3 benchmarks/gpu.py --out $OUT/gpu.md       # on a CUDA machine, ~3 min
    python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu-cpu.md  # smoke test, < 1 min

lossmap is written device-agnostic but had not run on CUDA; this is the one prepared
check for a GPU lent for a few minutes. It never stops at a failure: every part runs
under a guard, an exception is a finding (written to the report with its traceback's
last lines, and the exit status is 1), and the report is rewritten after every part so
a run killed by its time limit still leaves what it measured. ``--budget`` seconds
(default 200, ``--quick`` 50) bound the whole run: sections 1, 2 and 3 must end by 30 %,
70 % and 100 % of it, and a part that would not fit is skipped and says so.

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
2. Speed of planes. 21 × 21 planes, ``lossmap.plane`` (auto and every eligible strategy)
   against the naive loop (a copy of the model, ``p.copy_(θ0 + α d1 + β d2)`` under
   ``torch.no_grad``, one full-batch forward and ``.item()`` per point) on (a) the digits
   MLP, (b) a residual CNN on 4,096 images 3×32×32 (32 channels), (c) an MLP
   1024-2048-2048-2048-10 (10.5 M parameters) on 8,192 synthetic samples; one warm-up
   of each method, then the median of 3 repeats timed round-robin, with
   ``torch.cuda.synchronize()`` before and after each. The naive loop is a copy of the
   one in ``benchmarks/surface.py`` rather than an import: that script imports the
   engine's point sets (under refactoring) and takes its own ``Problem``; a failed
   import would cost the one run on the device.
3. Hessian-vector products. ``lossmap.hessian.HessianOperator`` on (c) and (b): the
   first product (it builds the gradient graph) and the mean of the next 10 (the graph
   is reused), peak device memory (``torch.cuda.max_memory_allocated``),
   ``eigenvalues(land, k=1, tol=1e-3)`` and ``trace(land, method="hutch++",
   matvecs=30)``; and one product along a unit Gaussian vector ``v`` against a central
   difference of ``land.gradient``, ``(g(θ0 + t v) - g(θ0 - t v)) / 2t`` for
   ``t = h ||θ0||`` at four ``h`` (ReLU kinks need small steps, float32 rounding
   limits them: the sweep shows both), in float32 on (c), (b) and the small CNN and in
   float64 on the small CNN; each float32 product is also compared with lossmap's
   float64 product on a float64 copy of the model (the FD-free check).

Only lossmap's public API is used (``lossmap``, ``lossmap.hessian``,
``lossmap.directions``, ``lossmap.evaluate.STRATEGIES``, ``lossmap.examples``).
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
from lossmap.evaluate import STRATEGIES
from lossmap.examples import digits_data, make_mlp, train
from lossmap.hessian import HessianOperator, eigenvalues, trace

Vec = dict[str, Tensor]
CUBLAS_DETERMINISTIC = ":4096:8"
# h: central-difference steps t = h ||θ0||. ReLU networks need small steps: the
# gradient jumps where a unit's pre-activation changes sign, and a step that flips
# units measures those jumps, not H (on a 42k-parameter MLP in float64: relative error
# 3.0 at h = 1e-2, 38 at 1e-4, 6e-11 at 1e-5). float32 rounding limits the small end.
FD_STEPS = (1e-3, 1e-4, 1e-5, 1e-6)
FD_STEPS_F64 = (1e-4, 1e-5, 1e-6, 1e-7)


@dataclass(frozen=True)
class Sizes:
    """Every size the run uses: the full run on a GPU, or ``--quick`` (tiny, on CPU)."""

    steps_check: int  # points per axis, correctness planes
    steps_speed: int  # points per axis, timed planes
    repeats: int  # timed repeats after the warm-up
    digits_epochs: int
    cnn_small: tuple[int, int, int]  # images, side, channels
    cnn_large: tuple[int, int, int]
    big_mlp: tuple[int, ...]
    big_samples: int
    hvp_next: int  # products timed after the first
    budget_s: float


FULL = Sizes(
    steps_check=11,
    steps_speed=21,
    repeats=3,
    digits_epochs=5,
    cnn_small=(512, 16, 16),
    cnn_large=(4096, 32, 32),
    big_mlp=(1024, 2048, 2048, 2048, 10),
    big_samples=8192,
    hvp_next=10,
    budget_s=200.0,
)
QUICK = Sizes(
    steps_check=5,
    steps_speed=5,
    repeats=1,
    digits_epochs=1,
    cnn_small=(64, 8, 8),
    cnn_large=(128, 16, 8),
    big_mlp=(64, 128, 128, 128, 10),
    big_samples=256,
    hvp_next=3,
    budget_s=50.0,
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


# ------------------------------------------------------------------ problems
@dataclass
class Problem:
    """A trained model (on the CPU or the device, float32) and its full-batch data."""

    key: str
    name: str
    model: nn.Module
    x: Tensor
    y: Tensor

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def landscape(self, device: torch.device, dtype: torch.dtype = torch.float32) -> lm.Landscape:
        """A Landscape on ``device`` in ``dtype`` over a copy of the model and data."""
        model = copy.deepcopy(self.model).to(device=device, dtype=dtype).eval()
        x = self.x.to(device=device, dtype=dtype)
        return lm.Landscape(
            model, nn.CrossEntropyLoss(), data=(x, self.y.to(device)), device=device
        )


def teacher_labels(x: Tensor, classes: int, gen: torch.Generator) -> Tensor:
    feats = x.flatten(2).mean(dim=2) if x.ndim == 4 else x
    return (feats @ torch.randn(feats.shape[1], classes, generator=gen)).argmax(dim=1)


def digits_mlp(sizes: Sizes) -> Problem:
    x, y = digits_data()["train"]
    model = make_mlp([64, 128, 128, 10], seed=0)
    train(model, nn.CrossEntropyLoss(), x, y, epochs=sizes.digits_epochs, batch_size=64, seed=0)
    return Problem("mlp", "MLP 64-128-128-10 (digits, 1,437)", model, x, y)


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
    return Problem(key, name, model, xd, yd)


def big_mlp(sizes: Sizes, device: torch.device) -> Problem:
    widths = sizes.big_mlp
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.big_samples, widths[0], generator=gen)
    y = teacher_labels(x, widths[-1], gen)
    model = make_mlp(list(widths), seed=0).to(device)
    xd, yd = x.to(device), y.to(device)
    train(model, nn.CrossEntropyLoss(), xd, yd, steps=20, lr=1e-3, seed=0)
    name = f"MLP {'-'.join(map(str, widths))} ({sizes.big_samples:,} synthetic)"
    return Problem("c", name, model, xd, yd)


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
    left = min(budget.left(0.4), 90.0)  # may take from section 2's time, not from 3's
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
    model: nn.Module, x: Tensor, y: Tensor, theta: Vec, d1: Vec, d2: Vec, axis: np.ndarray
) -> np.ndarray:
    """The baseline (as in ``benchmarks/surface.py``): write each point into a copy of
    the model, one full-batch forward and ``.item()`` per point."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    criterion = nn.CrossEntropyLoss()
    out = np.empty((len(axis), len(axis)))
    with torch.no_grad():
        for i, a in enumerate(axis):
            for j, b in enumerate(axis):
                for k, t in params.items():
                    t.copy_(theta[k] + float(a) * d1[k] + float(b) * d2[k])
                out[i, j] = criterion(model(x), y).item()
    return out


def forward_s(land: lm.Landscape, x: Tensor, y: Tensor, n: int = 5) -> float:
    """Median seconds of one full-batch forward + criterion in inference mode."""
    times = []
    with torch.inference_mode():
        for _ in range(n + 1):
            t, _ = timed(land.device, lambda: nn.CrossEntropyLoss()(land.model(x), y))
            times.append(t)
    return statistics.median(times[1:])


def plane_call(
    land: lm.Landscape, d1: Vec, d2: Vec, steps: int, strategy: str
) -> Callable[[], lm.Surface]:
    return lambda: lm.plane(land, d1, d2, span=1, steps=steps, strategy=strategy)


def speed(p: Problem, device: torch.device, sizes: Sizes, budget: Budget, report: Report) -> None:
    """Section 2 for one model: every method's plane, warm-up then the repeats."""
    steps = sizes.steps_speed
    n = steps * steps
    land = p.landscape(device)
    x, y = (t.to(device) for t in (p.x, p.y))
    d1, d2 = directions(land)
    theta = land.point()
    fwd = forward_s(land, x, y)
    auto = lm.plane(land, d1, d2, span=1, steps=steps, strategy="auto")
    eligible = [s for s in STRATEGIES if s != "auto" and s in auto.meta["engine"]["eligible"]]
    methods: dict[str, Callable[[], Any]] = {
        "naive": lambda: naive_plane(land.model, x, y, theta, d1, d2, auto.alpha),
        **{s: plane_call(land, d1, d2, steps, s) for s in ("auto", *eligible)},
    }
    estimate = len(methods) * n * fwd  # the warm-up; the repeats are fitted after it
    title = f"### ({p.key}) {p.name}: {p.n_params:,} parameters, {steps} × {steps} plane"
    if estimate > budget.left(0.7):
        report.add(
            "2. Speed of planes",
            [
                title,
                "",
                f"Skipped: about {estimate:.0f} s needed, {budget.left(0.7):.0f} s left.",
                "",
            ],
        )
        return
    log(f"[2] {p.key}: warm-up of {', '.join(methods)} (forward {1000 * fwd:.3g} ms)")
    times: dict[str, list[float]] = {k: [] for k in methods}
    values: dict[str, np.ndarray] = {}
    picks: list[str] = []
    warm: dict[str, float] = {}
    failed: dict[str, str] = {}
    for k, fn in list(methods.items()):
        try:
            warm[k], res = timed(device, fn)
        except Exception as e:  # one method failing on this device must not hide the rest
            failed[k] = record_error(report, f"2. ({p.key}) {k}", e)
            del methods[k]
            release()
            continue
        values[k] = res if isinstance(res, np.ndarray) else res["loss"]
    if "naive" not in methods:
        report.add(
            "2. Speed of planes", [title, "", "The naive loop failed: nothing to compare.", ""]
        )
        return
    per_repeat = sum(warm.values())
    repeats = max(0, min(sizes.repeats, int(budget.left(0.7) // max(per_repeat, 1e-9))))
    log(f"[2] {p.key}: {repeats} timed repeat(s) (~{per_repeat:.2g} s each)")
    order = list(methods)
    for r in range(repeats):
        for k in order[r % len(order) :] + order[: r % len(order)]:
            t, res = timed(device, methods[k])
            times[k].append(t)
            if k == "auto":
                picks.append(res.meta["engine"]["strategy"])
    note = "" if repeats == sizes.repeats else f" (only {repeats} repeat(s) fit the budget)"
    if repeats == 0:
        note = " (no repeat fit the budget: the warm-up's times, first calls included)"
        times = {k: [t] for k, t in warm.items()}
    rows = [
        title,
        "",
        f"One full-batch forward + criterion: {1000 * fwd:.3g} ms. auto → "
        f"{', '.join(sorted(set(picks))) or auto.meta['engine']['strategy']} "
        f"({auto.meta['engine'].get('reason', '')}). Median of {repeats} repeat(s){note}.",
        "",
        "| method | s per plane (min) | ms/pt | naive ÷ method | ÷ forward | max rel Δ vs naive |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    med = {k: statistics.median(v) for k, v in times.items() if v}
    for k in [*methods, *failed]:
        if k in failed:
            rows.append(f"| lossmap {k} | raised `{failed[k]}` | – | – | – | – |")
            continue
        if k not in med:
            rows.append(f"| {k} | not timed | – | – | – | – |")
            continue
        label = "naive loop" if k == "naive" else f"lossmap {k}"
        rel = "–" if k == "naive" else f"{rel_diff(values[k], values['naive']):.1e}"
        rows.append(
            f"| {label} | {fmt(med[k])} ({fmt(min(times[k]))}) | {fmt(1000 * med[k] / n)} "
            f"| {med['naive'] / med[k]:.2f}× | {med[k] / n / fwd:.2f} | {rel} |"
        )
    report.add("2. Speed of planes", [*rows, ""])


# --------------------------------------------------- 3. Hessian-vector products
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


def peak_mib(device: torch.device) -> str:
    if device.type != "cuda":
        return "– (CPU)"
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB"


def allocated_mib(device: torch.device) -> str:
    if device.type != "cuda":
        return "– (CPU)"
    return f"{torch.cuda.memory_allocated(device) / 2**20:,.0f} MiB"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def hvp_costs(
    p: Problem, device: torch.device, sizes: Sizes, budget: Budget, report: Report
) -> None:
    """Section 3 for one model: product times and memory, λ_max, the trace, FD."""
    sec = "3. Hessian-vector products"
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
    del op
    release()
    lines = [
        f"### ({p.key}) {p.name}: {p.n_params:,} parameters",
        "",
        f"- HVP: first {1000 * first:.3g} ms (builds the gradient graph), then "
        f"{1000 * mean:.3g} ms mean over {len(nxt)} (min {1000 * min(nxt):.3g}, "
        f"max {1000 * max(nxt):.3g}); "
        + (
            f"peak device memory {peak_hvp} (allocated before the operator: {base})"
            if device.type == "cuda"
            else "device memory not measured on the CPU"
        ),
    ]
    report.add(sec, lines)
    est = 80 * mean + 10
    if est > budget.left():
        report.add(
            sec,
            [f"- eigenvalues / trace skipped: ~{est:.0f} s needed, {budget.left():.0f} s left", ""],
        )
        return
    log(f"[3] {p.key}: eigenvalues(k=1, tol=1e-3)")
    reset_peak(device)
    t, e = timed(device, lambda: eigenvalues(land, k=1, tol=1e-3))
    lines = [
        f"- `eigenvalues(land, k=1, tol=1e-3)`: λ_max = {e.values[0]:.6g}, {e.matvecs} matvecs, "
        f"{t:.3g} s (≈ {e.matvecs * mean:.2g} s of it in products at the mean HVP time; the "
        f"rest is the graph, transfers and the Lanczos bookkeeping in numpy on the host), "
        f"converged: {e.converged}, residual {e.residuals[0]:.1e}; peak memory {peak_mib(device)}"
    ]
    report.add(sec, lines)
    release()
    log(f"[3] {p.key}: trace(hutch++, 30)")
    reset_peak(device)
    t, tr = timed(device, lambda: trace(land, method="hutch++", matvecs=30))
    lines = [
        f"- `trace(land, method='hutch++', matvecs=30)`: {tr.value:.6g} ± {tr.stderr:.2g}, "
        f"{tr.matvecs} matvecs, {t:.3g} s (≈ {tr.matvecs * mean:.2g} s in products); "
        f"peak memory {peak_mib(device)}",
        "",
    ]
    report.add(sec, lines)
    release()


def fd_table(
    problems: list[tuple[Problem, torch.dtype]],
    device: torch.device,
    report: Report,
    budget: Budget,
) -> None:
    sec = "3. Hessian-vector products"
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
        if budget.left() < 5:
            report.add(sec, [f"| {label} | skipped: time budget | – | – |"])
            continue
        with guard(report, f"3. FD check {label}"):
            log(f"[3] FD check {label}")
            hs = FD_STEPS_F64 if dtype == torch.float64 else FD_STEPS
            report.add(sec, [fd_row(label, fd_check(p, device, dtype, hs))])
            release()


# ------------------------------------------------------------------ the report
def machine(device: torch.device, sizes: Sizes, budget_s: float) -> list[str]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = (
            f"{torch.cuda.get_device_name(device)}, {props.total_memory / 2**30:.0f} GiB, "
            f"compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs"
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
        f"# lossmap on {device.type.upper()}: correctness, speed of planes, Hessian products",
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
        if budget.left(0.3) < 0:
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
    """Section 2 on (a), (b), (c); returns the models built, for section 3."""
    problems: dict[str, Problem] = {}
    builders: dict[str, Callable[[], Problem]] = {
        "b": lambda: residual_cnn(sizes.cnn_large, device, key="b"),
        "c": lambda: big_mlp(sizes, device),
    }
    if mlp is not None:
        builders = {"a": lambda: Problem("a", mlp.name, mlp.model, mlp.x, mlp.y), **builders}
    for key, build in builders.items():
        with guard(report, f"2. speed ({key})"):
            log(f"[2] building ({key})")
            problems[key] = build()
            speed(problems[key], device, sizes, budget, report)
        release()
    return problems


def section_hvp(
    problems: dict[str, Problem],
    small_cnn: Problem | None,
    device: torch.device,
    sizes: Sizes,
    budget: Budget,
    report: Report,
) -> None:
    """Section 3: costs on (c) and (b), then the finite-difference table."""
    sec = "3. Hessian-vector products"
    for key in ("c", "b"):
        if key not in problems or budget.left() < 5:
            report.add(sec, [f"({key}) skipped: not built or time budget.", ""])
            continue
        with guard(report, f"3. HVP ({key})"):
            log(f"[3] HVP costs ({key})")
            hvp_costs(problems[key], device, sizes, budget, report)
        release()
    fd = [(problems[k], torch.float32) for k in ("c", "b") if k in problems]
    if small_cnn is not None:
        fd += [(small_cnn, torch.float32), (small_cnn, torch.float64)]
    fd_table(fd, device, report, budget)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    ap.add_argument("--device", default=default, help=f"where to run (default {default})")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke test)")
    ap.add_argument(
        "--out", type=Path, default=None, help="markdown report (default: results/gpu.md)"
    )
    ap.add_argument(
        "--budget", type=float, default=None, help="seconds for the whole run (200; --quick 50)"
    )
    ap.add_argument(
        "--deterministic-rerun",
        choices=("auto", "always", "never"),
        default="auto",
        help="repeat section 1's repeat check with deterministic algorithms (auto: if a repeat differed)",
    )
    ap.add_argument("--determinism-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
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
    section_hvp(big, small.get("cnn"), device, sizes, budget, report)
    report.head.insert(-1, f"- finished in {budget.elapsed():.0f} s")
    report.write()
    print(out.read_text(), flush=True)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
