"""``lossmap demo``: the main job on a built-in example."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lossmap.cli._common import (
    Device,
    DeviceOpt,
    Example,
    OutOpt,
    RestartOpt,
    SeedOpt,
    _open_journal,
    _provenance,
    _record,
    _save_result,
    app,
    barrier_line,
    data_hash,
    echo,
    prepare_out,
    progress_bar,
    summary_lines,
    write_rows,
)
from lossmap.cli._load import build_landscape
from lossmap.cli.hessian import curvature_lines, curvature_report, write_curvature
from lossmap.cli.sharpness import sharpness_lines, sharpness_table


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
    device: DeviceOpt = Device.auto,
    restart: RestartOpt = False,
) -> None:
    """The main job on a built-in problem: train, a line and a plane, files, figures, summary."""
    import lossmap as lm
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    args = dict(locals())
    out = prepare_out(out)
    typer.echo(f"lossmap demo: {example.value} example")
    t = time.perf_counter()
    land = build_landscape(None, example, device)
    t_train = time.perf_counter() - t
    typer.echo(f"  {land!r} ready in {t_train:.1f} s")
    d1: Any
    d2: Any
    plane_span: Any
    if example is Example.linear:
        d_line: Any = "bias"
        d1, d2 = "weight", "bias"
        line_span, plane_span, plane_steps = (
            (1.0, 3.0),
            [(0.0, 6.0), (-1.0, 5.0)],
            101 if steps == 41 else steps,
        )
    elif example is Example.logistic:
        d1, d2 = lm.directions.random(land, 2, normalization="unit", ignore=(), seed=seed)
        d_line, line_span, plane_span, plane_steps = d1, (-1.5, 1.5), 1.5, steps
    else:
        d1, d2 = lm.directions.random(land, 2, normalization="filter", seed=seed)
        d_line, line_span, plane_span, plane_steps = d1, (-1.0, 1.0), 1.0, steps
    fp = {
        "command": "demo",
        "example": example.value,
        "steps": steps,
        "seed": seed,
        "theta0": hash_tensors(land._params0),
        "data": data_hash(land),
        "device": str(land.device),
    }
    journal = _open_journal(out, fp, restart)
    try:
        with progress_bar("line") as progress:
            c = lm.line(land, d_line, span=line_span, steps=51, progress=progress, journal=journal)
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
    finally:
        journal.close()
    files = _save_result(c, out, "line") + _save_result(s, out, "surface")
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
    files += write_curvature(sd, rows, out)
    sharp = sharpness_table(
        land, eps=1e-3, rho=0.05, sigma=0.01, adaptive_sigma=0.1, samples=100, seed=seed
    )
    files.append(write_rows(sharp, out / "sharpness.csv"))
    results: dict[str, Any] = {"line": c, "surface": s}
    path_lines: list[str] = []
    if example is Example.digits:
        # Two minima: this seed's and the next one's; the straight path between them.
        other = lm.examples.digits_mlp(seed=seed + 1)
        b = land.at(dict(other.model.state_dict())).point()
        with progress_bar("path to another seed") as progress:
            path = lm.connect.linear(land, land.point(), b, steps=41, progress=progress)
        files += _save_result(path, out, "path")
        results["path"] = path
        path_lines = [barrier_line(f"straight path to seed {seed + 1}", path.meta["barrier"])]
    _record(
        out,
        "demo",
        args,
        results,
        files,
        t0,
        curvature={"summary": sd.meta, "eigenvalues": rows},
        sharpness=sharp,
        **_provenance(land, fp),
    )
    eng = s.meta["engine"]
    written = ", ".join(sorted({f.name for f in files if f.suffix in (".h5", ".csv")}))
    echo(
        [
            *summary_lines(c, "line"),
            *summary_lines(s, "plane"),
            *curvature_lines(sd),
            *sharpness_lines(sharp),
            *path_lines,
            f"  engine: {eng['strategy']} ({eng['ms_per_point']:.3g} ms/point; {eng.get('reason', '')})",
            f"  wrote {out}/: {written}, {sum(f.suffix == '.png' for f in files)} figures "
            "(png+pdf), run.json",
            f"  total {time.perf_counter() - t0:.1f} s",
        ]
    )
