"""``lossmap sharpness``: worst-case, adaptive and average sharpness."""

from __future__ import annotations

import math
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
    progress_bar,
    seed_option,
    write_rows,
)
from lossmap.cli._load import checked_landscape
from lossmap.cli._run import RunFolder

SeedOpt = Annotated[
    int,
    seed_option(
        "the start of each worst-case search, the average-case samples and the figure's "
        "random direction"
    ),
]


class _Prefixed:
    """A journal seen under a key prefix, so that several estimators can share one."""

    def __init__(self, journal: Any, prefix: str) -> None:
        self.journal, self.prefix = journal, prefix

    def get(self, key: str) -> Any:
        return self.journal.get(self.prefix + key)

    def put(self, key: str, value: Any) -> None:
        self.journal.put(self.prefix + key, value)


def sharpness_table(
    land: Any,
    *,
    eps: float,
    rho: float,
    sigma: float,
    adaptive_sigma: float,
    samples: int,
    seed: int,
    journal: Any = None,
    deltas: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """λ_max, ε-sharpness, adaptive and average-case sharpness (plain and adaptive).

    ``deltas``, if given, receives the worst-case perturbations found."""
    from lossmap import sharpness as S
    from lossmap.hessian import eigenvalues

    rows: list[dict[str, Any]] = []

    def add(metric: str, setting: str, r: Any, paper: str) -> None:
        row = {"metric": metric, "setting": setting, "value": float(r.value), "paper": paper}
        row["stderr"] = float(getattr(r, "stderr", float("nan")))
        row["increase"] = float(getattr(r, "increase", getattr(r, "value", float("nan"))))
        row["seconds"] = float(getattr(r, "seconds", float("nan")))
        rows.append(row)

    with progress_bar("sharpness") as progress:
        progress(0, 5)
        top = eigenvalues(land, 1, tol=1e-6, seed=seed)
        rows.append(
            {
                "metric": "lambda_max",
                "setting": "Lanczos, tol 1e-6",
                "value": float(top.values[0]),
                "paper": "Hessian top eigenvalue",
                "stderr": float("nan"),
                "increase": float("nan"),
                "seconds": float("nan"),
            }
        )
        progress(1, 5)
        worst_eps = S.epsilon(land, eps, seed=seed)
        add(
            "epsilon",
            f"box ε={eps:g}, L-BFGS-B",
            worst_eps,
            "Keskar et al. 2017: 100 (max L - L) / (1 + L)",
        )
        progress(2, 5)
        worst_ad = S.adaptive(land, rho, seed=seed)
        add(
            "adaptive",
            f"ρ={rho:g}, p=2, η=0",
            worst_ad,
            "Kwon et al. 2021 / Andriushchenko et al. 2023: max L - L",
        )
        if deltas is not None:
            deltas[f"ε-sharpness worst case (box ε={eps:g})"] = worst_eps.delta
            deltas[f"adaptive worst case (ρ={rho:g})"] = worst_ad.delta
        progress(3, 5)
        jp = _Prefixed(journal, "plain/") if journal is not None else None
        add(
            "average",
            f"σ={sigma:g}, {samples} samples",
            S.average(land, sigma, samples=samples, seed=seed, journal=jp),
            "E L(θ+σz) - L",
        )
        progress(4, 5)
        ja = _Prefixed(journal, "adaptive/") if journal is not None else None
        add(
            "average_adaptive",
            f"σ={adaptive_sigma:g}·|θ|, {samples} samples",
            S.average(land, adaptive_sigma, samples=samples, adaptive=True, seed=seed, journal=ja),
            "E L(θ+σ|θ|⊙z) - L",
        )
        progress(5, 5)
    return rows


def sharpness_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = ["  sharpness (train loss):"]
    for r in rows:
        err = f" ± {r['stderr']:.2g}" if r["stderr"] == r["stderr"] else ""
        out.append(f"    {r['metric']:<17} {r['value']:.4g}{err}  ({r['setting']})")
    return out


@app.command("sharpness")
def sharpness_cmd(
    model: ModelOpt = None,
    example: ExampleOpt = None,
    checkpoint: CheckpointOpt = None,
    eps: Annotated[float, typer.Option("--eps", help="ε of Keskar's box.")] = 1e-3,
    rho: Annotated[float, typer.Option("--rho", help="Adaptive radius ρ.")] = 0.05,
    sigma: Annotated[float, typer.Option("--sigma", help="Average-case noise σ.")] = 0.01,
    adaptive_sigma: Annotated[
        float, typer.Option("--adaptive-sigma", help="Adaptive average-case σ (× |θ|).")
    ] = 0.1,
    samples: Annotated[int, typer.Option("--samples", help="Average-case samples.")] = 100,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    out: OutOpt = Path("runs/sharpness"),
    restart: RestartOpt = False,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """How sharp is the minimum: λ_max, ε-sharpness, adaptive and average sharpness."""
    args = dict(locals())  # the parameters alone: first, before any local name
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    for name, v in (("--eps", eps), ("--rho", rho), ("--sigma", sigma)):
        if not v > 0 or not math.isfinite(v):
            raise CliError(f"{name} must be a positive number, got {v}; e.g. {name} 0.001")
    if not adaptive_sigma > 0:
        raise CliError(f"--adaptive-sigma must be positive, got {adaptive_sigma}; e.g. 0.1")
    if samples < 2:
        raise CliError(f"--samples must be at least 2 (got {samples}) for a standard error")
    with RunFolder("sharpness", args, t0=t0) as run:
        land, notes = checked_landscape(
            model, example, device, checkpoint, key=checkpoint_key, trust=trust_checkpoint
        )
        run.warn(notes)
        fp = {
            "command": "sharpness",
            "model": model,
            "example": example,
            "sigma": sigma,
            "adaptive_sigma": adaptive_sigma,
            "seed": seed,
            "theta0": hash_tensors(land.theta0),
            "data": data_hash(land),
        }
        deltas: dict[str, Any] = {}
        with run.journal(fp) as journal:
            rows = sharpness_table(
                land,
                eps=eps,
                rho=rho,
                sigma=sigma,
                adaptive_sigma=adaptive_sigma,
                samples=samples,
                seed=seed,
                journal=journal,
                deltas=deltas,
            )
        run.add([write_rows(rows, run.out / "sharpness.csv")])
        run.add(_worst_case_figure(land, deltas, run.out, seed))
        run.note(sharpness=rows)
        run.provenance(land, fp, after_files=True)
        # This count, unlike the other commands', includes run.json.
        run.summary = [*sharpness_lines(rows), f"wrote {run.out}/ ({len(run.files) + 1} files)"]


def _worst_case_figure(land: Any, deltas: dict[str, Any], out: Path, seed: int) -> list[Path]:
    """The loss along each worst-case perturbation found (α = 1 reaches it) and along a
    random filter-normalised direction of the same length as the first: how much
    sharper the worst direction is than a typical one."""
    import lossmap as lm
    from lossmap import plot as lplot
    from lossmap import vectors as V
    from lossmap.directions import Direction

    curves: dict[str, Any] = {}
    first_norm = None
    for label, delta in deltas.items():
        n = float(V.norm(delta))
        if n == 0.0:
            continue
        first_norm = first_norm or n
        d = Direction(delta, kind="worst-case")
        curves[f"{label}, ‖δ‖={n:.3g}"] = lm.line(land, d, span=(-2.0, 2.0), steps=41)
    if first_norm is None:
        return []
    r = lm.directions.random(land, 1, seed=seed)[0]
    r = Direction(V.scale(r, first_norm / float(V.norm(r))), kind="random")
    curves[f"random filter-normalised, ‖δ‖={first_norm:.3g}"] = lm.line(
        land, r, span=(-2.0, 2.0), steps=41
    )
    fig = lplot.compare(
        curves, "loss", xlabel="α (θ + α δ; α = 1: the worst point found)", title="train loss"
    )
    paths = lplot.save(fig, out / "sharpness_directions")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths
