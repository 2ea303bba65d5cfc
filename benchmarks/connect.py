"""Mode connectivity on digits: the straight path between two MLPs vs fitted curves.

Usage::

    python benchmarks/connect.py            # benchmarks/results/connect.md and connect.png
    python benchmarks/connect.py --quick    # small models, few epochs; prints (no files)
    python benchmarks/connect.py --quick --out /tmp/connect-quick.md

Two MLPs 64-128-128-10 (ReLU) trained on the 1,437 digits training images from
different seeds (``lossmap.examples.digits_mlp(seed=0)`` and ``(seed=1)``: 30 epochs
of Adam) are the endpoints ``a`` and ``b``. One :class:`lossmap.Landscape` holds the
model of ``a`` with the train and test sets. We measure

- the straight path ``(1 - t) a + t b`` (:func:`lossmap.connect.linear`, 41 points),
- a quadratic Bézier curve and a polychain fitted by SGD on ``E_t L(φ(t))``
  (:func:`lossmap.connect.curve`, Garipov et al. 2018), evaluated at 41 points,

and report the barriers (train loss, test loss, test error; above the chord and
Frankle et al.'s ``max - mean of endpoints``) and the time spent, with the time to
train one endpoint model as the baseline measured in the same run. The figure shows
the train loss on the plane through ``a``, ``b`` and the Bézier bend
(:func:`lossmap.connect.plane3`) with the straight path and the curve drawn, and the
loss and error along the three paths.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from _machine import code_state, cpu_model
from torch import nn

import lossmap as lm
from lossmap import connect as C
from lossmap import plot as lmplot
from lossmap.examples import digits_data, digits_mlp

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("train/loss", "test/loss", "test/error")


def log(msg: str) -> None:
    print(msg, flush=True)


def run(quick: bool) -> dict[str, Any]:
    hidden = (32,) if quick else (128, 128)
    epochs_end = 10 if quick else 30
    settings = {
        "hidden": hidden,
        "endpoint_epochs": epochs_end,
        "curve_epochs": 3 if quick else 20,
        "lr": 0.1,
        "momentum": 0.9,
        "batch_size": 128,
        "steps": 21 if quick else 41,
        "plane_steps": 15 if quick else 41,
    }
    land_a = digits_mlp(hidden, seed=0, epochs=epochs_end)
    # The baseline: training the second endpoint (the first pays one-time imports).
    t0 = time.perf_counter()
    land_b = digits_mlp(hidden, seed=1, epochs=epochs_end)
    t_train = time.perf_counter() - t0
    land = lm.Landscape(land_a.model, nn.CrossEntropyLoss(), data=digits_data())
    a = land.point()
    b = {k: v.detach().clone() for k, v in land_b.model.named_parameters()}
    log(f"endpoints trained ({t_train:.1f} s for one); {land}")

    t0 = time.perf_counter()
    line = C.linear(land, a, b, span=(0, 1), steps=settings["steps"])
    t_line = time.perf_counter() - t0
    log(
        f"line: {t_line:.2f} s, train-loss barrier {line.meta['barrier']['train/loss']['height']:.4f}"
    )

    fits: dict[str, C.CurveFit] = {}
    for kind in ("bezier", "polychain"):
        fit = C.curve(
            land,
            a,
            b,
            kind=kind,
            epochs=settings["curve_epochs"],
            lr=settings["lr"],
            momentum=settings["momentum"],
            batch_size=settings["batch_size"],
            steps=settings["steps"],
            seed=0,
        )
        fits[kind] = fit
        log(
            f"{kind}: {fit.meta['seconds_train']:.1f} s train + {fit.meta['seconds_eval']:.2f} s eval, "
            f"train-loss barrier {fit.barrier_curve.height:.4f} (line {fit.barrier_line.height:.4f})"
        )
    t0 = time.perf_counter()
    surf = C.plane3(land, a, b, fits["bezier"].bend, steps=settings["plane_steps"], margin=0.15)
    t_plane = time.perf_counter() - t0
    log(f"plane3: {t_plane:.1f} s for {surf.alpha.size * surf.beta.size} points")
    return {
        "settings": settings,
        "land": land,
        "t_train": t_train,
        "line": line,
        "t_line": t_line,
        "fits": fits,
        "surf": surf,
        "t_plane": t_plane,
    }


def figure(res: dict[str, Any], path: Path) -> None:
    surf, fits, line = res["surf"], res["fits"], res["line"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    lmplot.contour(surf, "loss", ax=axes[0], mark_origin=False, filled=True, levels=16)
    pts = surf.meta["points"]
    p = np.array([pts["a"], pts["c"], pts["b"]])
    tt = np.linspace(0, 1, 201)
    path2d = C.coefficients("bezier", tt) @ p
    ax = axes[0]
    ax.plot(
        [p[0, 0], p[2, 0]], [p[0, 1], p[2, 1]], "--", color="white", lw=1.6, label="straight path"
    )
    ax.plot(path2d[:, 0], path2d[:, 1], "-", color="#d62728", lw=2.0, label="Bézier curve")
    for (x, y), name in zip(p, ("a (seed 0)", "bend θ", "b (seed 1)"), strict=True):
        ax.plot([x], [y], "o", color="white", mec="black", ms=8, zorder=6)
        right = x > 0.5 * (p[0, 0] + p[2, 0])
        ax.annotate(
            name,
            (x, y),
            xytext=(-8 if right else 8, 8),
            textcoords="offset points",
            ha="right" if right else "left",
            color="white",
            fontsize=9,
        )
    ax.set_xlabel("u: toward b (parameter distance)")
    ax.set_ylabel("v: toward θ, ⊥ u (parameter distance)")
    ax.set_title("train loss on the plane through a, b and the Bézier bend", fontsize=10)
    ax.legend(loc="upper center", fontsize=8, framealpha=0.8)

    paths = {
        "straight": (line.alpha, line.values),
        "Bézier": (fits["bezier"].t, fits["bezier"].values),
        "polychain": (fits["polychain"].t, fits["polychain"].values),
    }
    colors = {"straight": "0.3", "Bézier": "#d62728", "polychain": "#1f77b4"}
    for name, (t, v) in paths.items():
        axes[1].plot(t, v["train/loss"], "-", color=colors[name], label=f"{name}, train")
        axes[1].plot(t, v["test/loss"], "--", color=colors[name], label=f"{name}, test")
        axes[2].plot(t, 1 - v["test/accuracy"], "-", color=colors[name], label=name)
    axes[1].set_yscale("log")
    axes[1].set_title("loss along the paths (log scale)", fontsize=10)
    axes[1].set_ylabel("cross-entropy")
    axes[2].set_title("test error along the paths", fontsize=10)
    axes[2].set_ylabel("test error (1 − accuracy)")
    for ax in axes[1:]:
        ax.set_xlabel("t (0 = a, 1 = b)")
        ax.set_xlim(0, 1)
        ax.grid(True, color="0.92")
        ax.legend(fontsize=8)
    fig.tight_layout()
    lmplot.save(fig, path, formats=("png",))
    plt.close(fig)


def fmt(x: float) -> str:
    return f"{x:.4f}"


def report(
    res: dict[str, Any],
    load: tuple[float, float],
    code: str,
    quick: bool,
    threads_set: bool = False,
) -> list[str]:
    s, land, fits, line = res["settings"], res["land"], res["fits"], res["line"]
    rows = [("straight line", line.meta["barrier"], None)]
    rows += [(k, f.meta["barrier"]["curve"], f) for k, f in fits.items()]
    out = [
        "# lossmap mode-connectivity benchmark: straight path vs fitted curves (digits)",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores), torch threads: {torch.get_num_threads()}",
        f"- torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}, "
        f"lossmap {lm.__version__} ({code})",
        "- command: `python benchmarks/connect.py"
        + (f" --threads {torch.get_num_threads()}" if threads_set else "")
        + "` (or `make bench`)",
        f"- 1-minute load average at start / end: {load[0]:.2f} / {load[1]:.2f} (shared machine; "
        "with 2 torch threads under a load of ~5 the same evaluations ran 10-50× slower from "
        "thread contention, hence `--threads 1` for the recorded run)",
        f"- endpoints: `digits_mlp(hidden={s['hidden']}, seed=0 | 1, epochs={s['endpoint_epochs']})` "
        f"(Adam, batch 64, lr 1e-3), {land.num_parameters:,} parameters, "
        f"train {land.datasets['train'].size} / test {land.datasets['test'].size} images"
        + (" — QUICK run" if quick else ""),
        f"- curves: `connect.curve(kind=..., epochs={s['curve_epochs']}, lr={s['lr']}, "
        f"momentum={s['momentum']}, batch_size={s['batch_size']}, seed=0)`, bend initialised at "
        "(a + b)/2, one t ~ U(0, 1) per minibatch; every path evaluated at "
        f"{s['steps']} points of t ∈ [0, 1] on the full train and test sets",
        "- barrier = max_t [L(t) − ((1 − t) L(0) + t L(1))] (above the chord; Entezari et al. 2022); "
        "Frankle = max_t L(t) − (L(0) + L(1))/2 (Frankle et al. 2020); error = 1 − accuracy",
        "",
        "## Barriers",
        "",
        "| path | train loss barrier | (Frankle) | test loss barrier | (Frankle) | test error barrier | (Frankle) | ÷ straight (train loss) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ref = line.meta["barrier"]["train/loss"]["height"]
    for name, bars, _ in rows:
        cells = []
        for k in KEYS:
            cells += [fmt(bars[k]["height"]), fmt(bars[k]["height_frankle"])]
        out.append(
            f"| {name} | " + " | ".join(cells) + f" | {bars['train/loss']['height'] / ref:.3f} |"
        )
    e = line.meta["barrier"]
    out += [
        "",
        f"Endpoints: train loss a {fmt(e['train/loss']['start'])}, b {fmt(e['train/loss']['end'])}; "
        f"test loss a {fmt(e['test/loss']['start'])}, b {fmt(e['test/loss']['end'])}; "
        f"test error a {fmt(e['test/error']['start'])}, b {fmt(e['test/error']['end'])}. "
        f"The straight path peaks at t = {e['train/loss']['t_max']:.3f} "
        f"(train loss {fmt(e['train/loss']['peak'])}, test error {fmt(e['test/error']['peak'])}).",
        "",
        "## Time",
        "",
        "| step | seconds | ÷ training one endpoint |",
        "|---|---:|---:|",
        f"| train one endpoint (baseline: `digits_mlp(seed=1)`, data included) | {res['t_train']:.2f} | 1.00 |",
        f"| straight path ({s['steps']} points, train + test) | {res['t_line']:.2f} | {res['t_line'] / res['t_train']:.2f} |",
    ]
    for name, f in fits.items():
        out.append(
            f"| fit {name} ({s['curve_epochs']} epochs) + evaluate curve and line "
            f"({2 * s['steps']} points) | {f.meta['seconds_train']:.2f} + {f.meta['seconds_eval']:.2f} | "
            f"{(f.meta['seconds_train'] + f.meta['seconds_eval']) / res['t_train']:.2f} |"
        )
    n_plane = res["surf"].alpha.size * res["surf"].beta.size
    out += [
        f"| plane3 through a, b, Bézier bend ({n_plane} points, train + test) | "
        f"{res['t_plane']:.2f} | {res['t_plane'] / res['t_train']:.2f} |",
        "",
        "Curve training loss per epoch (mean over minibatches at the sampled t):",
        "",
    ]
    for name, f in fits.items():
        out.append(f"- {name}: " + ", ".join(f"{x:.4f}" for x in f.history))
    out += [
        "",
        "![plane and paths](connect.png)",
        "",
        "Left: train loss on the plane through a, b and the Bézier bend θ (orthonormal axes, "
        "parameter-space distance); the straight path crosses the ridge, the curve bends round "
        "it. Middle: train (solid) and test (dashed) loss along the three paths. Right: test error.",
        "",
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small models, few epochs; no files")
    parser.add_argument("--out", type=Path, default=None, help="markdown output path")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    code = code_state()
    load0 = os.getloadavg()[0]
    res = run(args.quick)
    load = (load0, os.getloadavg()[0])
    lines = report(res, load, code, args.quick, args.threads is not None)
    out = args.out if args.out is not None else (None if args.quick else RESULTS / "connect.md")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure(res, out.with_suffix(".png"))
        out.write_text("\n".join(lines))
        log(f"wrote {out} and {out.with_suffix('.png')}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
