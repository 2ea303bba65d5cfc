"""How lossmap's planes scale: time and peak memory against the grid, the data, the model
and the number of ranks (torchrun, points mode and data mode).

Usage::

    python benchmarks/scaling.py --out benchmarks/results/scaling.md   # ~10 min, 2 cores
    python benchmarks/scaling.py --quick --out /tmp/scaling.md         # smoke test, ~2 min

Every measurement is a fresh process with one thread (``torch.set_num_threads(1)``,
``OMP_NUM_THREADS=1``), so that its peak resident memory (``ru_maxrss``) is that run's
and two ranks on this 2-core machine each have a core; ranks are launched with
``torchrun`` (gloo). A job builds its landscape, evaluates a 3 × 3 plane as a warm-up,
then times ``lossmap.plane`` (the engine's ``auto`` choice, reported) with
``time.perf_counter`` around the call (under torchrun, the slowest rank's time). Memory
is the process's peak RSS (the largest over ranks) and the RSS before the timed plane:
their difference is what the plane itself held. Sections:

1. **ranks**: ResNet-20 (``lossmap.zoo.resnet20_model``, 269,722 parameters,
   BatchNorm in eval mode) on ``N`` generated CIFAR-shaped images
   (``lossmap.zoo.cifar_like_data``), a 7 × 7 plane: one process against two ranks in
   points mode and in data mode, measured alternately ``--repeats`` times (median).
   Speed-up = one process's time / two ranks' time; parallel efficiency = speed-up / 2.
2. **grid**: a small ResNet (width 8, one block per stage) on 256 images, planes of
   11², 21², 31², 41², 51² points.
3. **data**: the same model, an 11 × 11 plane, on 256 … 4,096 images.
4. **model**: MLPs of 0.1 M … 10.5 M parameters on 1,024 samples of 1,024 features,
   a 5 × 5 plane.

Writes a markdown table per section and ``scaling.png`` (time and memory against each
axis) next to ``--out``, and ``scaling.json`` (every record): ``--sections ranks,data``
measures those again and keeps the others from the JSON. The machine is shared: each
section reports the load average and when (and by which command) it was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


# ----------------------------------------------------------------- one job
def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _landscape(problem: str, n: int, width: int) -> Any:
    import torch
    from torch import nn

    import lossmap as lm
    from lossmap import zoo

    if problem == "resnet":
        model = zoo.resnet20_model(width=width, blocks=3 if width == 16 else 1)
        x, y = zoo.cifar_like_data(n, test_size=0.0)["train"]
        return lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    if problem == "mlp":
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 1024, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            layers: list[nn.Module] = [nn.Linear(1024, width), nn.ReLU()]
            layers += [nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)]
            model = nn.Sequential(*layers)
        return lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    raise ValueError(f"unknown problem {problem!r}")


def job(args: argparse.Namespace) -> None:
    """One measurement (under torchrun or alone): writes a JSON line to ``--json``."""
    import torch

    import lossmap as lm

    torch.set_num_threads(1)
    ranks = lm.distributed.init(args.mode, timeout=600) if args.mode != "none" else None
    land = _landscape(args.problem, args.samples, args.width).distribute(ranks)
    d1, d2 = lm.directions.random(land, 2, seed=0)
    lm.plane(land, d1, d2, steps=3)  # warm-up
    base = _rss_now()
    t0 = time.perf_counter()
    surf = lm.plane(land, d1, d2, steps=args.steps)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mine = {"seconds": secs, "peak": peak, "base": base}
    every = ranks.all_gather(mine) if ranks is not None else [mine]
    if ranks is None or ranks.main:
        record = {
            "problem": args.problem,
            "mode": args.mode,
            "ranks": len(every),
            "n": args.samples,
            "width": args.width,
            "points": args.steps**2,
            "parameters": land.num_parameters,
            "seconds": max(e["seconds"] for e in every),
            "peak_bytes": max(e["peak"] for e in every),
            "base_bytes": max(e["base"] for e in every),
            "strategy": surf.meta["engine"]["strategy"],
            "chunk_size": surf.meta["engine"]["chunk_size"],
            "loss_sum": float(np.nansum(surf["loss"])),
        }
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(
    problem: str, *, n: int, width: int, steps: int, mode: str = "none", ranks: int = 1
) -> dict[str, Any]:
    out = Path(f"/tmp/lossmap-scaling-{os.getpid()}.jsonl")
    out.unlink(missing_ok=True)
    job_args = [str(Path(__file__).resolve()), "job", "--problem", problem, "--samples", str(n)]
    job_args += ["--width", str(width), "--steps", str(steps), "--mode", mode, "--json", str(out)]
    if mode == "none":
        cmd = [sys.executable, *job_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}"]
        cmd += job_args
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    rec: dict[str, Any] = json.loads(out.read_text().splitlines()[-1])
    out.unlink()
    return rec


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def section_ranks(n: int, repeats: int) -> tuple[list[str], dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {"1 process": [], "2 ranks, points": []}
    runs["2 ranks, data"] = []
    how = {
        "1 process": {"mode": "none", "ranks": 1},
        "2 ranks, points": {"mode": "points", "ranks": 2},
        "2 ranks, data": {"mode": "data", "ranks": 2},
    }
    load = _load()
    for _ in range(repeats):  # alternately, so that a change of load hits all three
        for name, kw in how.items():
            runs[name].append(measure("resnet", n=n, width=16, steps=7, **kw))  # type: ignore[arg-type]
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    lines = [
        f"ResNet-20 ({runs['1 process'][0]['parameters']:,} parameters) on {n:,} images, "
        f"7 × 7 plane, one thread per process, median of {repeats} (load before: {load}; "
        f"after: {_load()}).",
        "",
        "| run | seconds (each repeat) | median | speed-up | efficiency | strategy | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in runs.items():
        sp = med["1 process"] / med[k]
        each = ", ".join(f"{r['seconds']:.2f}" for r in v)
        lines.append(
            f"| {k} | {each} | {med[k]:.2f} | {sp:.2f}× | {sp / how[k]['ranks']:.0%} | "
            f"{v[0]['strategy']} | {_mib(v[0]['peak_bytes'])} |"
        )
    same = {round(r["loss_sum"], 6) for v in runs.values() for r in v}
    lines += ["", f"Sum of the plane's losses, every run: {sorted(same)}."]
    return lines, {"runs": runs, "median": med}


def section_axis(
    title: str, axis: str, records: list[dict[str, Any]], what: str
) -> tuple[list[str], list[dict[str, Any]]]:
    lines = [
        f"{title} (load after: {_load()}).",
        "",
        f"| {axis} | parameters | points | seconds | ms per point | strategy | chunk | "
        "peak MiB | plane MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r[what]:,} | {r['parameters']:,} | {r['points']:,} | {r['seconds']:.2f} | "
            f"{1000 * r['seconds'] / r['points']:.2f} | {r['strategy']} | {r['chunk_size']} | "
            f"{_mib(r['peak_bytes'])} | {_mib(r['peak_bytes'] - r['base_bytes'])} |"
        )
    return lines, records


def figure(sections: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), layout="constrained")
    for ax, (key, xkey, xlabel) in zip(
        axes[:3],
        [
            ("grid", "points", "grid points"),
            ("data", "n", "samples"),
            ("model", "parameters", "parameters"),
        ],
        strict=True,
    ):
        recs = sections[key]
        x = np.array([r[xkey] for r in recs], dtype=float)
        t = np.array([r["seconds"] for r in recs])
        m = np.array([(r["peak_bytes"] - r["base_bytes"]) / 2**20 for r in recs])
        ax.loglog(x, t, "o-", color="C0", label="seconds")
        ax.loglog(x, t[0] * x / x[0], ":", color="C0", alpha=0.6, label="linear in the work")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds", color="C0")
        twin = ax.twinx()
        twin.plot(x, m, "s--", color="C3", label="plane's memory")
        twin.set_ylabel("MiB held by the plane", color="C3")
        twin.set_ylim(bottom=0)
        ax.set_title(f"time and memory vs {xlabel}")
        ax.legend(loc="upper left", fontsize=8)
    med = sections["ranks"]["median"]
    names = list(med)
    axes[3].bar(range(len(names)), [med["1 process"] / med[k] for k in names], color="C2")
    axes[3].axhline(2, ls=":", color="k", label="ideal, 2 ranks")
    axes[3].axhline(1.7, ls="--", color="C3", label="85 % efficiency")
    axes[3].set_xticks(range(len(names)), names, fontsize=8)
    axes[3].set_ylabel("speed-up over 1 process")
    axes[3].set_title("ResNet-20 plane: ranks")
    axes[3].legend(fontsize=8)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    j = sub.add_parser("job")
    j.add_argument("--problem", required=True)
    j.add_argument("--samples", type=int, required=True)
    j.add_argument("--width", type=int, required=True)
    j.add_argument("--steps", type=int, required=True)
    j.add_argument("--mode", default="none")
    j.add_argument("--json", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=HERE / "results" / "scaling.md")
    p.add_argument("--sections", default="ranks,grid,data,model")
    a = p.parse_args()
    if a.cmd == "job":
        job(a)
        return
    quick = a.quick
    store = a.out.with_suffix(".json")
    wanted = a.sections.split(",")
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    # Sections not measured now are kept from the last run (scaling.json beside --out).
    saved: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {}
    stamp = f"measured {time.strftime('%Y-%m-%d %H:%M')} by `{' '.join(sys.argv)}`"
    for name in wanted:
        part, data = SECTIONS[name](quick, a.repeats)
        saved[name] = {"lines": [*part, "", f"_{stamp}._"], "data": data}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(saved, indent=1) + "\n")
    lines = ["# Scaling: time and memory of a plane", ""]
    for name in SECTIONS:
        if name in saved:
            lines += [*saved[name]["lines"], ""]
    if all(name in saved for name in SECTIONS):
        figure({k: v["data"] for k, v in saved.items()}, a.out.with_suffix(".png"))
        lines += [f"![scaling]({a.out.with_suffix('.png').name})", ""]
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _ranks(quick: bool, repeats: int) -> tuple[list[str], Any]:
    part, data = section_ranks(128 if quick else 512, 1 if quick else repeats)
    return ["## 1. Ranks (torchrun, gloo)", "", *part], data


def _grid(quick: bool, repeats: int) -> tuple[list[str], Any]:
    grid = [11, 21] if quick else [11, 21, 31, 41, 51]
    recs = [measure("resnet", n=256, width=8, steps=s) for s in grid]
    title = "## 2. Grid\n\nSmall ResNet (width 8, 1 block per stage) on 256 images"
    return section_axis(title, "points", recs, "points")


def _data(quick: bool, repeats: int) -> tuple[list[str], Any]:
    sizes = [256, 1024] if quick else [256, 512, 1024, 2048, 4096]
    recs = [measure("resnet", n=n, width=8, steps=11) for n in sizes]
    return section_axis("## 3. Data\n\nThe same model, an 11 × 11 plane", "samples", recs, "n")


def _model(quick: bool, repeats: int) -> tuple[list[str], Any]:
    widths = [64, 256] if quick else [64, 256, 1024, 2048]
    recs = [measure("mlp", n=1024, width=w, steps=5) for w in widths]
    title = "## 4. Model\n\nMLP 1024-w-w-10 on 1,024 samples, a 5 × 5 plane"
    return section_axis(title, "parameters", recs, "parameters")


SECTIONS = {"ranks": _ranks, "grid": _grid, "data": _data, "model": _model}

if __name__ == "__main__":
    main()
