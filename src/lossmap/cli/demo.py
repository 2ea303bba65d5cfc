"""``lossmap demo``: the main job on a built-in example."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lossmap.cli._common import (
    DeviceOpt,
    Example,
    OutOpt,
    RestartOpt,
    app,
    barrier_line,
    data_hash,
    progress_bar,
    seed_option,
    summary_lines,
    write_rows,
)
from lossmap.cli._load import build_landscape
from lossmap.cli._run import RunFolder
from lossmap.cli.hessian import curvature_lines, curvature_report, write_curvature
from lossmap.cli.sharpness import sharpness_lines, sharpness_table

SeedOpt = Annotated[
    int, seed_option("the random directions, the Hessian's probes and the sharpness searches")
]


@app.command()
def demo(
    example: Annotated[
        Example, typer.Option("--example", help="Which built-in problem.")
    ] = Example.digits,
    out: OutOpt = Path("runs/demo"),
    steps: Annotated[
        int, typer.Option("--steps", min=2, max=1001, help="Grid points per axis of the plane.")
    ] = 41,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    restart: RestartOpt = False,
) -> None:
    """The main job on a built-in problem: train, a line and a plane, files, figures, summary."""
    args = dict(locals())  # the parameters alone: first, before any local name
    import lossmap as lm
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    with RunFolder("demo", args, t0=t0) as run:
        typer.echo(f"lossmap demo: {example.value} example")
        t = time.perf_counter()
        land = build_landscape(None, example, device)
        t_train = time.perf_counter() - t
        typer.echo(f"  {land!r} ready in {t_train:.1f} s")
        d_line, d1, d2, line_span, plane_span, plane_steps = _views(land, example, steps, seed)
        fp = {
            "command": "demo",
            "example": example.value,
            "steps": steps,
            "seed": seed,
            "theta0": hash_tensors(land.theta0),
            "data": data_hash(land),
            "device": str(land.device),
        }
        with run.journal(fp) as journal:
            with progress_bar("line") as progress:
                c = lm.line(
                    land, d_line, span=line_span, steps=51, progress=progress, journal=journal
                )
            with progress_bar("plane") as progress:
                s = lm.plane(
                    land,
                    d1,
                    d2,
                    span=plane_span,
                    steps=plane_steps,
                    progress=progress,
                    journal=journal,
                )
        run.save(c, "line", figures=False)  # figures last, on the run's one scale
        run.save(s, "surface", figures=False)
        sd, rows = curvature_report(
            land,
            k=5,
            bottom_k=1,
            trace_method="xtrace",
            trace_matvecs=90,
            steps=100,
            probes=1,
            seed=seed,
        )
        run.add(write_curvature(sd, rows, run.out))
        sharp = sharpness_table(
            land, eps=1e-3, rho=0.05, sigma=0.01, adaptive_sigma=0.1, samples=100, seed=seed
        )
        run.add([write_rows(sharp, run.out / "sharpness.csv")])
        path, path_lines = (
            _path_to_another_seed(run, land, seed) if example is Example.digits else (None, [])
        )
        _figures(run, {"line": c, "surface": s, "path": path})
        run.note(curvature={"summary": sd.meta, "eigenvalues": rows}, sharpness=sharp)
        run.provenance(land, fp)
        eng = s.meta["engine"]
        files = run.files
        written = ", ".join(sorted({f.name for f in files if f.suffix in (".h5", ".csv")}))
        run.summary = [
            *summary_lines(c, "line"),
            *summary_lines(s, "plane"),
            *curvature_lines(sd),
            *sharpness_lines(sharp),
            *path_lines,
            f"  engine: {eng['strategy']} ({eng['ms_per_point']:.3g} ms/point; {eng.get('reason', '')})",
            f"  wrote {run.out}/: {written}, {sum(f.suffix == '.png' for f in files)} figures "
            "(png+pdf), run.json",
            f"  total {time.perf_counter() - t0:.1f} s",
        ]


def _views(land: Any, example: Example, steps: int, seed: int) -> tuple[Any, ...]:
    """The line's direction, the plane's two, their spans and the plane's steps: the
    parameters themselves for the two-parameter linear model, random directions else."""
    import lossmap as lm

    if example is Example.linear:
        return (
            "bias",
            "weight",
            "bias",
            (1.0, 3.0),
            [(0.0, 6.0), (-1.0, 5.0)],
            101 if steps == 41 else steps,
        )
    if example is Example.logistic:
        d1, d2 = lm.directions.random(land, 2, normalization="unit", ignore=(), seed=seed)
        return d1, d1, d2, (-1.5, 1.5), 1.5, steps
    d1, d2 = lm.directions.random(land, 2, normalization="filter", seed=seed)
    return d1, d1, d2, (-1.0, 1.0), 1.0, steps


def _figures(run: RunFolder, results: dict[str, Any]) -> None:
    """Every figure of the run, each quantity on one scale (log or linear) decided once
    from all of its values in the run (:func:`lossmap.plot.log_scales`)."""
    from lossmap import plot as lplot

    drawn = {name: r for name, r in results.items() if r is not None}
    scales = lplot.log_scales(*drawn.values())
    for name, r in drawn.items():
        run.add(lplot.figures(r, run.out, prefix=f"{name}_", log=scales))


def _path_to_another_seed(run: RunFolder, land: Any, seed: int) -> tuple[Any, list[str]]:
    """Two minima, this seed's and the next one's: the straight path between them."""
    import lossmap as lm

    other = lm.examples.digits_mlp(seed=seed + 1)
    b = land.at(dict(other.model.state_dict())).point()
    with progress_bar("path to another seed") as progress:
        path = lm.connect.linear(land, land.point(), b, steps=41, progress=progress)
    run.save(path, "path", figures=False)
    return path, [barrier_line(f"straight path to seed {seed + 1}", path.meta["barrier"])]
