"""``lossmap hessian``: top eigenvalues, trace and spectral density."""

from __future__ import annotations

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

SeedOpt = Annotated[int, seed_option("the Lanczos start vectors and the trace and density probes")]


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
) -> tuple[Any, list[dict[str, Any]]]:
    """Top-k and bottom eigenvalues, trace and density; the Spectrum carries them in meta.

    The bottom of a trained network's spectrum is a cluster near 0: resolving ``k``
    values there takes many more HVPs than the top (``bottom_k`` limits it)."""
    from lossmap import hessian as H

    t0 = time.perf_counter()
    op = H.HessianOperator(land)
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
    fmt = ", ".join(f"{v:.4g}" for v in m["top"])
    return [
        f"  curvature ({m['dataset']}, {m['hvps']} HVPs, {m['ms_per_hvp']:.3g} ms each):",
        f"    top eigenvalues: {fmt}",
        f"    most negative: {min(m['bottom']):.4g}",
        f"    trace: {m['trace']:.4g} ± {m['trace_stderr']:.2g} ({m['trace_method']}, {m['trace_matvecs']} HVPs)",
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
    device: DeviceOpt = "auto",
    out: OutOpt = Path("runs/hessian"),
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    restart: RestartOpt = False,
) -> None:
    """Curvature at θ0: extreme Hessian eigenvalues, trace and eigenvalue density."""
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
        }
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
            )
        run.add(write_curvature(sd, rows, run.out))
        run.note(curvature=sd.meta, eigenvalues=rows)
        run.provenance(land, fp, after_files=True)
        run.summary = [*curvature_lines(sd), f"wrote {run.out}/ ({len(run.files)} files)"]
