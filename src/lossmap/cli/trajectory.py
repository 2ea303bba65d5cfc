"""``lossmap trajectory``: a training path drawn over its PCA plane."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lossmap.cli._common import (
    CkptKeyOpt,
    CliError,
    DeviceOpt,
    Example,
    ExampleOpt,
    IgnoreOpt,
    LogOpt,
    MaxHoursOpt,
    ModelOpt,
    OutOpt,
    RestartOpt,
    TrustOpt,
    app,
    check_budget,
    data_hash,
    parse_ignore,
    progress_bar,
    seed_option,
    summary_lines,
)
from lossmap.cli._load import build_landscape, check_theta0, with_checkpoint
from lossmap.cli._run import RunFolder

SeedOpt = Annotated[
    int, seed_option("the built-in digits training (--example digits without checkpoints)")
]


def _digits_trajectory(land: Any, epochs: int, seed: int) -> tuple[list[Any], list[float]]:
    """Checkpoints of the built-in digits MLP, trained from scratch by plain SGD (no
    optimizer state, so one epoch at a time is the same run), one per epoch."""
    from torch import nn

    from lossmap import examples, trajectory

    model = examples.make_mlp([64, 128, 128, 10], seed=seed)
    x, y = land.datasets[land.default_dataset].batches[0]
    cps = [trajectory.snapshot(model)]
    for epoch in range(epochs):
        examples.train(
            model,
            nn.CrossEntropyLoss(),
            x,
            y,
            epochs=1,
            batch_size=64,
            lr=0.1,
            optimizer="sgd",
            seed=seed * 1000 + epoch,
        )
        cps.append(trajectory.snapshot(model))
    return cps, [float(e) for e in range(epochs + 1)]


@app.command("trajectory")
def trajectory_cmd(
    checkpoints: Annotated[
        list[Path] | None, typer.Argument(help="Checkpoints in training order (>= 2).")
    ] = None,
    model: ModelOpt = None,
    example: ExampleOpt = None,
    steps: Annotated[int, typer.Option("--steps", min=2, help="Grid points per axis.")] = 41,
    ignore: IgnoreOpt = "",
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="Built-in digits: epochs to record.")
    ] = 20,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    out: OutOpt = Path("runs/trajectory"),
    log: LogOpt = None,
    restart: RestartOpt = False,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    max_hours: MaxHoursOpt = 24.0,
) -> None:
    """A training path on the plane of its top two principal directions (Li et al. 2018)."""
    args = dict(locals())  # the parameters alone: first, before any local name
    from lossmap import plot as lplot
    from lossmap import trajectory

    t0 = time.perf_counter()
    with RunFolder("trajectory", args, t0=t0) as run:
        land = build_landscape(model, example, device)
        cps, labels, final = _checkpoints(land, args)
        from lossmap.directions import ignored_names

        ignored_names(final, parse_ignore(ignore))  # a typo is refused before the journal is opened
        check_budget(steps, 2, check_theta0(final), max_hours)
        from lossmap.store import hash_tensors

        fp = {
            "command": "trajectory",
            "model": model,
            "example": example,
            "steps": steps,
            "ignore": ignore,
            "checkpoints": hash_tensors([t for c in cps for t in c.values()]),
            "data": data_hash(land),
            "device": str(land.device),
        }
        with run.journal(fp) as journal, progress_bar("trajectory plane") as progress:
            surf, coords = trajectory.pca_plane(
                final,
                cps,
                steps=steps,
                ignore=parse_ignore(ignore),
                labels=labels,
                progress=progress,
                journal=journal,
            )
        scales = lplot.log_scales(surf) if log is None else log  # one scale for all
        run.save(surf, "surface", log=scales)
        fig = lplot.trajectory(surf, log=scales if isinstance(scales, bool) else scales.get("loss"))
        run.add(lplot.save(fig, run.out / "trajectory"))
        run.provenance(final)
        ev = surf.meta["trajectory"]["explained_variance_ratio"]
        run.summary = [
            f"  {len(cps)} checkpoints; PC1 {100 * ev[0]:.1f} %, PC2 {100 * ev[1]:.1f} % of the "
            "path's variance",
            f"  start at ({coords[0, 0]:.3g}, {coords[0, 1]:.3g}), final at (0, 0)",
            *summary_lines(surf, "plane"),
            f"wrote {run.out}/ ({len(run.files)} files, trajectory.png)",
        ]


def _checkpoints(land: Any, args: dict[str, Any]) -> tuple[list[Any], list[float], Any]:
    """The path's checkpoints, their labels, and the final point as a landscape: the
    checkpoints given, or (built-in digits) a training run recorded epoch by epoch."""
    checkpoints = args["checkpoints"]
    if checkpoints:
        if len(checkpoints) < 2:
            raise CliError(
                f"a trajectory needs at least 2 checkpoints (got {len(checkpoints)}); pass the "
                "checkpoints saved during training, in order"
            )
        lands = [
            with_checkpoint(land, path, key=args["checkpoint_key"], trust=args["trust_checkpoint"])
            for path in checkpoints
        ]
        # Each checkpoint as saved, parameters and buffers (BatchNorm statistics): the
        # loss at each is taken with its own statistics, and the last is the final
        # point (land.at refuses parameters alone on such models).
        return (
            [{**la.theta0, **la.fixed} for la in lands],
            [float(i) for i in range(len(lands))],
            lands[-1],
        )
    if args["example"] is Example.digits:
        cps, labels = _digits_trajectory(land, args["epochs"], args["seed"])
        return cps, labels, land.at(dict(cps[-1]))
    raise CliError("pass checkpoints (CKPT...) in training order, or use --example digits")
