"""``lossmap hessian``: top eigenvalues, trace and spectral density of the Hessian, the
GGN or the Fisher; ``--per-layer``: each layer's diagonal block."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lossmap.cli._common import (
    CheckpointOpt,
    CkptKeyOpt,
    CliError,
    DeviceOpt,
    ExampleOpt,
    ModelOpt,
    OutOpt,
    RestartOpt,
    TrustOpt,
    app,
    data_hash,
    file_sha256,
    library_versions,
    progress_bar,
    seed_option,
    write_rows,
)
from lossmap.cli._load import checked_landscape
from lossmap.cli._run import RunFolder

SeedOpt = Annotated[
    int,
    seed_option("the Lanczos start vectors, the trace and density probes and the Fisher's labels"),
]


class Matrix(str, enum.Enum):
    hessian = "hessian"
    ggn = "ggn"
    fisher = "fisher"
    empirical_fisher = "empirical-fisher"


def curvature_operator(
    land: Any,
    matrix: str = "hessian",
    *,
    params: list[str] | None = None,
    mc_samples: int = 1,
    seed: int = 0,
) -> Any:
    """The curvature matrix ``matrix`` of ``land`` at θ0 (the block of ``params``)."""
    from lossmap import ggn
    from lossmap import hessian as H

    kind = Matrix(matrix)
    if kind is Matrix.hessian:
        return H.HessianOperator(land, params=params)
    if kind is Matrix.ggn:
        return ggn.GGNOperator(land, params=params)
    if kind is Matrix.fisher:
        return ggn.FisherOperator(land, params=params, mc_samples=mc_samples, seed=seed)
    return ggn.EmpiricalFisherOperator(land, params=params)


def curvature_report(
    land: Any,
    *,
    k: int,
    trace_method: str,
    trace_matvecs: int,
    steps: int,
    probes: int,
    seed: int,
    bottom_k: int | None = None,
    journal: Any = None,
    matrix: str = "hessian",
    mc_samples: int = 1,
) -> tuple[Any, list[dict[str, Any]]]:
    """Top-k and bottom eigenvalues, trace and density; the Spectrum carries them in meta.

    The bottom of a trained network's spectrum is a cluster near 0: resolving ``k``
    values there takes many more HVPs than the top (``bottom_k`` limits it)."""
    from lossmap import hessian as H

    t0 = time.perf_counter()
    op = curvature_operator(land, matrix, mc_samples=mc_samples, seed=seed)
    k = min(k, land.num_parameters)
    with progress_bar("curvature") as progress:
        progress(0, 4)
        top = H.eigenvalues(op, k, which="LA", seed=seed)
        progress(1, 4)
        bottom = H.eigenvalues(op, min(k, bottom_k or k), which="SA", seed=seed)
        progress(2, 4)
        tr = H.trace(op, method=trace_method, matvecs=trace_matvecs, seed=seed)
        progress(3, 4)
        sd = H.spectral_density(op, probes=probes, steps=steps, seed=seed, journal=journal)
        progress(4, 4)
    rows = [
        {
            "which": w,
            "rank": i + 1,
            "eigenvalue": float(v),
            "residual": float(r),
            "converged": e.converged,
        }
        for w, e in (("largest", top), ("smallest", bottom))
        for i, (v, r) in enumerate(zip(e.values, e.residuals, strict=True))
    ]
    sd.meta.update(
        {
            "top": top.values.tolist(),
            "bottom": bottom.values.tolist(),
            "eigen_matvecs": {"top": top.matvecs, "bottom": bottom.matvecs},
            "trace": tr.value,
            "trace_stderr": tr.stderr,
            "trace_method": tr.method,
            "trace_matvecs": tr.matvecs,
            "density_matvecs": sd.matvecs,
            "matrix": Matrix(matrix).value,
            "hvps": op.matvecs,
            "ms_per_hvp": 1000 * op.seconds / max(1, op.matvecs),
            "seconds": time.perf_counter() - t0,
            "n_parameters": land.num_parameters,
            "dataset": land.default_dataset,
            "dataset_size": land.datasets[land.default_dataset].size,  # the figure's title
            "model": type(land.model).__name__,
            "versions": library_versions(),
        }
    )
    return sd, rows


def write_curvature(sd: Any, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    from lossmap import plot as lplot

    files = [sd.save(out / "spectrum.h5"), write_rows(rows, out / "eigenvalues.csv")]
    files += lplot.figures(sd, out)
    return files


def curvature_lines(sd: Any) -> list[str]:
    m = sd.meta
    matrix = "" if m.get("matrix", "hessian") == "hessian" else f"{m['matrix']}, "
    unit = "HVPs" if not matrix else "products"
    fmt = ", ".join(f"{v:.4g}" for v in m["top"])
    return [
        f"  curvature ({matrix}{m['dataset']}, {m['hvps']} {unit}, {m['ms_per_hvp']:.3g} ms each):",
        f"    top eigenvalues: {fmt}",
        f"    most negative: {min(m['bottom']):.4g}",
        f"    trace: {m['trace']:.4g} ± {m['trace_stderr']:.2g} ({m['trace_method']}, {m['trace_matvecs']} {unit})",
    ]


def per_layer_report(
    land: Any,
    *,
    matrix: str,
    trace_method: str,
    trace_matvecs: int,
    seed: int,
    mc_samples: int = 1,
) -> list[dict[str, Any]]:
    """One row per layer (parameters grouped by their module, ``layer_groups``): the top
    eigenvalue and the trace of its diagonal block. Blocks of at most ``trace_matvecs``
    parameters are made dense (one product per parameter): both exact; larger ones get
    Lanczos (certified to 1e-6) and the stochastic trace with its standard error."""
    import glob

    import numpy as np

    from lossmap import hessian as H

    groups = H.layer_groups(land.theta0)
    rows = []
    with progress_bar("per layer") as progress:
        for i, (layer, names) in enumerate(groups.items()):
            progress(i, len(groups))
            op = curvature_operator(
                land,
                matrix,
                params=[glob.escape(n) for n in names],
                mc_samples=mc_samples,
                seed=seed,
            )
            n = int(op.shape[0])
            if n <= trace_matvecs:
                block = H.dense(op).numpy()
                top, resid = float(np.linalg.eigvalsh(block)[-1]), 0.0
                tr, se, method = float(np.trace(block)), 0.0, "exact"
            else:
                e = H.eigenvalues(op, 1, which="LA", seed=seed)
                top, resid = float(e.values[0]), float(e.residuals[0])
                t = H.trace(op, method=trace_method, matvecs=trace_matvecs, seed=seed)
                tr, se, method = float(t.value), float(t.stderr), t.method
            rows.append(
                {
                    "layer": layer,
                    "parameters": n,
                    "top_eigenvalue": top,
                    "residual": resid,
                    "trace": tr,
                    "trace_stderr": se,
                    "trace_method": method,
                    "products": op.matvecs,
                }
            )
        progress(len(groups), len(groups))
    return rows


def per_layer_figure(rows: list[dict[str, Any]], matrix: str, path: Path) -> Path:
    """Two bar charts, the top eigenvalue and the trace of each layer's block (the trace
    with ±2 stderr), on a linear scale (bars on a log scale would start anywhere)."""
    from matplotlib.figure import Figure

    from lossmap.results import atomic_path

    names = [f"{r['layer']} ({r['parameters']:,})" for r in rows]
    fig = Figure(figsize=(9, 1.2 + 0.35 * len(rows)))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, err in ((axes[0], "top_eigenvalue", None), (axes[1], "trace", "trace_stderr")):
        vals = [r[key] for r in rows]
        errs = [2 * r[err] for r in rows] if err else None
        ax.barh(range(len(rows)), vals, xerr=errs, color="tab:blue")
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel(key.replace("_", " "))
    axes[0].set_yticks(range(len(rows)), names)
    axes[0].invert_yaxis()
    axes[0].set_ylabel("layer (parameters)")
    fig.suptitle(f"{matrix}: diagonal block of each layer")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    return path


def per_layer_lines(rows: list[dict[str, Any]]) -> list[str]:
    width = max(5, *(len(r["layer"]) for r in rows))
    head = f"    {'layer':<{width}}  {'params':>9}  {'top eigenvalue':>14}  {'trace':>22}"
    lines = [head]
    for r in rows:
        tr = f"{r['trace']:.5g}" + (
            f" ± {r['trace_stderr']:.2g}" if r["trace_stderr"] else " (exact)"
        )
        lines.append(
            f"    {r['layer']:<{width}}  {r['parameters']:>9,}  {r['top_eigenvalue']:>14.6g}  {tr:>22}"
        )
    return lines


def _per_layer_run(
    run: RunFolder, land: Any, fp: dict[str, Any], trace_method: str, trace_matvecs: int
) -> None:
    """``--per-layer``: per_layer.csv, per_layer.png, run.json and the table."""
    matrix = fp["matrix"]
    rows = per_layer_report(
        land,
        matrix=matrix,
        trace_method=trace_method,
        trace_matvecs=trace_matvecs,
        seed=fp["seed"],
        mc_samples=fp["mc_samples"],
    )
    run.add([write_rows(rows, run.out / "per_layer.csv")])
    run.add([per_layer_figure(rows, matrix, run.out / "per_layer.png")])
    run.note(per_layer=rows)
    run.provenance(land, fp, after_files=True)
    run.summary = [
        f"  {matrix}, diagonal block of each layer ({land.default_dataset}):",
        *per_layer_lines(rows),
        f"wrote {run.out}/ ({len(run.files)} files)",
    ]


@app.command()
def hessian(
    model: ModelOpt = None,
    example: ExampleOpt = None,
    checkpoint: CheckpointOpt = None,
    k: Annotated[int, typer.Option("--k", min=1, help="How many eigenvalues at each end.")] = 5,
    trace_method: Annotated[
        str, typer.Option("--trace-method", help="xtrace, hutch++ or hutchinson.")
    ] = "xtrace",
    trace_matvecs: Annotated[int, typer.Option("--trace-matvecs", min=6)] = 90,
    density_steps: Annotated[int, typer.Option("--density-steps", min=2)] = 100,
    probes: Annotated[int, typer.Option("--probes", min=1)] = 1,
    seed: SeedOpt = 0,
    matrix: Annotated[
        Matrix,
        typer.Option(
            "--matrix",
            help="The curvature matrix: the Hessian, the generalised Gauss-Newton, the "
            "Fisher (labels sampled from the model) or the empirical Fisher (the data's labels).",
        ),
    ] = Matrix.hessian,
    mc_samples: Annotated[
        int, typer.Option("--mc-samples", min=1, help="--matrix fisher: labels drawn per input.")
    ] = 1,
    per_layer: Annotated[
        bool,
        typer.Option(
            "--per-layer",
            help="Instead of the whole matrix: the top eigenvalue and trace of each layer's "
            "diagonal block (per_layer.csv, per_layer.png).",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    out: OutOpt = Path("runs/hessian"),
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    restart: RestartOpt = False,
) -> None:
    """Curvature at θ0: extreme eigenvalues, trace and eigenvalue density of the Hessian
    (or --matrix ggn / fisher / empirical-fisher); --per-layer: each layer's block."""
    args = dict(locals())  # the parameters alone: first, before any local name
    t0 = time.perf_counter()
    if trace_method not in ("xtrace", "hutch++", "hutchinson"):
        raise CliError(
            f"--trace-method {trace_method!r} is unknown; choose xtrace, hutch++ or hutchinson"
        )
    with RunFolder("hessian", args, t0=t0) as run:
        land, notes = checked_landscape(
            model, example, device, checkpoint, key=checkpoint_key, trust=trust_checkpoint
        )
        run.warn(notes)
        if k > land.num_parameters:
            raise CliError(f"--k {k} is more than the model's {land.num_parameters:,} parameters")
        from lossmap.store import hash_tensors

        fp = {
            "command": "hessian",
            "model": model,
            "example": example,
            "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
            "theta0": hash_tensors(land.theta0),
            "data": data_hash(land),
            "density_steps": density_steps,
            "seed": seed,
            "device": str(land.device),
            "matrix": matrix.value,
            "mc_samples": mc_samples,
        }
        if per_layer:
            _per_layer_run(run, land, fp, trace_method, trace_matvecs)
            return
        with run.journal(fp) as journal:
            sd, rows = curvature_report(
                land,
                k=k,
                trace_method=trace_method,
                trace_matvecs=trace_matvecs,
                steps=density_steps,
                probes=probes,
                seed=seed,
                journal=journal,
                matrix=matrix.value,
                mc_samples=mc_samples,
            )
        run.add(write_curvature(sd, rows, run.out))
        run.note(curvature=sd.meta, eigenvalues=rows)
        run.provenance(land, fp, after_files=True)
        run.summary = [*curvature_lines(sd), f"wrote {run.out}/ ({len(run.files)} files)"]
