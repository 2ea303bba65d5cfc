"""``lossmap line``, ``lossmap plane`` and ``lossmap interpolate``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lossmap.cli._common import (
    CheckpointOpt,
    ChunkOpt,
    CkptKeyOpt,
    CliError,
    DatasetOpt,
    DeviceOpt,
    ExampleOpt,
    IgnoreOpt,
    LogOpt,
    MaxHoursOpt,
    ModelOpt,
    Norm,
    NormOpt,
    OutOpt,
    Precision,
    PrecisionOpt,
    RestartOpt,
    SeedOpt,
    SpanBetaOpt,
    SpanOpt,
    StepsBetaOpt,
    Strategy,
    StrategyOpt,
    TrainModeOpt,
    TrustOpt,
    app,
    check_budget,
    data_hash,
    file_sha256,
    parse_span_text,
    progress_bar,
    random_directions,
    summary_lines,
)
from lossmap.cli._load import (
    build_landscape,
    check_theta0,
    in_train_mode,
    note_no_checkpoint,
    theta0_values,
    with_checkpoint,
)
from lossmap.cli._run import RunFolder

DirectionsOpt = Annotated[
    str,
    typer.Option(
        "--directions",
        help="random (drawn with --normalization/--ignore/--seed), hessian (the top "
        "Hessian eigenvectors at θ0, unit norm), or a line/plane result file (.h5) whose "
        "saved directions are reused.",
    ),
]


def _saved_directions(spec: str, n: int) -> Any:
    """The result file named by ``--directions FILE`` (read and checked to hold at least
    ``n`` directions before the model is built); ``None`` for random/hessian."""
    if spec in ("random", "hessian"):
        return None
    import lossmap as lm

    path = Path(spec)
    if not path.is_file():
        raise CliError(
            f"--directions {spec!r}: no such file; give random, hessian, or a surface.h5 / "
            "line.h5 of an earlier run"
        )
    result = lm.load(path)
    held = getattr(result, "directions", None)
    if held is None or len(held) < n:
        raise CliError(
            f"--directions {spec}: the file holds {0 if held is None else len(held)} saved "
            f"direction(s), a {'line' if n == 1 else 'plane'} needs {n}; give a "
            f"{'line.h5 or ' if n == 1 else ''}surface.h5 written by lossmap line/plane"
        )
    return result


def _directions(land: Any, args: dict[str, Any], n: int, saved: Any) -> Any:
    """The slice's directions: from the saved result (checked against the model's
    parameters), the top-``n`` Hessian eigenvectors, or random."""
    import lossmap as lm

    if saved is not None:
        try:
            return lm.directions.load(saved, land)[:n]
        except ValueError as e:
            raise CliError(f"--directions {args['directions']}: {e}") from None
    if args["directions"] == "hessian":
        return lm.directions.hessian(land, n, seed=args["seed"])
    return random_directions(land, n, args["normalization"], args["ignore"], args["seed"])


def _grid_spec(view: str, args: dict[str, Any]) -> tuple[list[tuple[float, float]], list[int]]:
    """The span and steps of each axis, from --span/--steps (and, on a plane,
    --span-beta/--steps-beta), checked before anything is loaded."""
    alpha = parse_span_text(args["span"])
    if view == "line":
        return [alpha], [args["steps"]]
    beta = alpha if args["span_beta"] is None else parse_span_text(args["span_beta"], "--span-beta")
    return [alpha, beta], [args["steps"], args["steps_beta"] or args["steps"]]


def _theta0_off_grid(spans: list[tuple[float, float]], steps: list[int]) -> list[str]:
    """One warning line when a grid leaves θ0 out (an even --steps over a symmetric span)."""
    import numpy as np

    from lossmap.slices import grid

    names = ["--steps", "--steps-beta"]
    off = [
        (name, n, lo, hi)
        for name, n, (lo, hi) in zip(names, steps, spans, strict=False)
        if lo <= 0 <= hi and np.abs(grid(lo, hi, n)).min() > 1e-9 * (hi - lo)
    ]
    return [
        f"warning: {name} {n} over {lo:g}..{hi:g} puts no grid point at θ0 (the grid steps "
        f"over 0); an odd {name} over a symmetric span holds it. θ0's own values are in the "
        "summary."
        for name, n, lo, hi in off
    ][:1]


def _random_slice(view: str, args: dict[str, Any]) -> None:
    """``lossmap line`` / ``lossmap plane``: validate, build, evaluate (resumably), write."""
    import lossmap as lm
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    n = 1 if view == "line" else 2
    spans, steps = _grid_spec(view, args)
    saved = _saved_directions(args["directions"], n)
    with RunFolder(view, args, t0=t0) as run:
        land = with_checkpoint(
            build_landscape(args["model"], args["example"], args["device"]),
            args["checkpoint"],
            key=args["checkpoint_key"],
            trust=args["trust_checkpoint"],
        )
        if args["train_mode"]:
            land = in_train_mode(land)
        dirs = _directions(land, args, n, saved)
        secs, at_theta0 = theta0_values(land)
        check_budget(steps, n, secs, args["max_hours"])
        run.warn(note_no_checkpoint(args["model"], args["checkpoint"]))
        run.warn(_theta0_off_grid(spans, steps))
        fp = {
            "command": view,
            **{
                k: args[k]
                for k in ("model", "example", "normalization", "ignore", "seed", "dataset")
            },
            "span": spans,
            "steps": steps,
            "directions_from": args["directions"],
            "train_mode": args["train_mode"],
            "strategy": args["strategy"].value,
            "precision": args["precision"].value,
            "checkpoint_sha256": file_sha256(args["checkpoint"]) if args["checkpoint"] else None,
            "theta0": hash_tensors(land.theta0),
            "directions": hash_tensors([t for d in dirs for t in d.values()]),
            "data": data_hash(land),
            "device": str(land.device),
        }
        with run.journal(fp) as journal, progress_bar(view) as progress:
            kw = {
                "span": spans,
                "steps": steps[0] if n == 1 else tuple(steps),
                "datasets": args["dataset"] or None,
                "strategy": args["strategy"].value,
                "chunk_size": args["chunk_size"],
                "precision": args["precision"].value,
                "journal": journal,
                "progress": progress,
            }
            r = lm.line(land, dirs[0], **kw) if n == 1 else lm.plane(land, *dirs, **kw)
        name = "line" if n == 1 else "surface"
        run.save(r, name, log=args["log"])
        run.provenance(land, fp)
        resumed = r.meta["engine"].get("resumed_points", 0)
        note = [f"  resumed: {resumed} of {r['loss'].size} points were done"] if resumed else []
        run.summary = [
            *summary_lines(r, view, at_theta0),
            *note,
            f"wrote {run.out}/ ({len(run.files)} files)",
        ]


# ---------------------------------------------------------------- commands
@app.command()
def line(
    model: ModelOpt = None,
    example: ExampleOpt = None,
    checkpoint: CheckpointOpt = None,
    span: SpanOpt = "1",
    steps: Annotated[
        int, typer.Option("--steps", min=2, help="Points (odd: θ0 is one of them).")
    ] = 51,
    dataset: DatasetOpt = None,
    train_mode: TrainModeOpt = False,
    directions: DirectionsOpt = "random",
    normalization: NormOpt = Norm.filter,
    ignore: IgnoreOpt = "bias,norm",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    strategy: StrategyOpt = Strategy.auto,
    precision: PrecisionOpt = Precision.float32,
    out: OutOpt = Path("runs/line"),
    log: LogOpt = None,
    restart: RestartOpt = False,
    chunk_size: ChunkOpt = None,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    max_hours: MaxHoursOpt = 24.0,
) -> None:
    """The loss along one random (normalised) direction through θ0 (or a saved or
    Hessian direction: --directions)."""
    _random_slice("line", dict(locals()))


@app.command()
def plane(
    model: ModelOpt = None,
    example: ExampleOpt = None,
    checkpoint: CheckpointOpt = None,
    span: SpanOpt = "1",
    steps: Annotated[
        int, typer.Option("--steps", min=2, help="Points per axis (odd: θ0 is one of them).")
    ] = 41,
    span_beta: SpanBetaOpt = None,
    steps_beta: StepsBetaOpt = None,
    dataset: DatasetOpt = None,
    train_mode: TrainModeOpt = False,
    directions: DirectionsOpt = "random",
    normalization: NormOpt = Norm.filter,
    ignore: IgnoreOpt = "bias,norm",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    strategy: StrategyOpt = Strategy.auto,
    precision: PrecisionOpt = Precision.float32,
    out: OutOpt = Path("runs/plane"),
    log: LogOpt = None,
    restart: RestartOpt = False,
    chunk_size: ChunkOpt = None,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    max_hours: MaxHoursOpt = 24.0,
) -> None:
    """The loss on a plane spanned by two random (normalised, orthogonal) directions (or
    saved ones, or the top two Hessian eigenvectors: --directions)."""
    _random_slice("plane", dict(locals()))


@app.command()
def interpolate(
    checkpoint_a: Annotated[Path, typer.Argument(help="State dict at t = 0.")],
    checkpoint_b: Annotated[Path, typer.Argument(help="State dict at t = 1.")],
    model: ModelOpt = None,
    example: ExampleOpt = None,
    span: SpanOpt = "-0.5,1.5",
    steps: Annotated[int, typer.Option("--steps", min=2)] = 41,
    device: DeviceOpt = "auto",
    strategy: StrategyOpt = Strategy.auto,
    precision: PrecisionOpt = Precision.float32,
    out: OutOpt = Path("runs/interpolate"),
    log: LogOpt = None,
    restart: RestartOpt = False,
    chunk_size: ChunkOpt = None,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    max_hours: MaxHoursOpt = 24.0,
) -> None:
    """The loss on the straight line between two checkpoints (t from span[0] to span[1])."""
    args = dict(locals())  # the parameters alone: first, before any local name
    import lossmap as lm
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    t_span = parse_span_text(span)
    with RunFolder("interpolate", args, t0=t0) as run:
        land = build_landscape(model, example, device)
        la = with_checkpoint(land, checkpoint_a, key=checkpoint_key, trust=trust_checkpoint)
        lb = with_checkpoint(land, checkpoint_b, key=checkpoint_key, trust=trust_checkpoint)
        check_budget(steps, 1, max(check_theta0(la), check_theta0(lb)), max_hours)
        fp = {
            "command": "interpolate",
            "model": model,
            "example": example,
            "span": t_span,
            "steps": steps,
            "strategy": strategy.value,
            "precision": precision.value,
            "checkpoint_sha256": [file_sha256(checkpoint_a), file_sha256(checkpoint_b)],
            "theta": [hash_tensors(la.theta0), hash_tensors(lb.theta0)],
            "data": data_hash(land),
            "device": str(land.device),
        }
        with run.journal(fp) as journal, progress_bar("interpolate") as progress:
            c = lm.interpolate(
                la,
                la.point(),
                lb.point(),
                span=t_span,
                steps=steps,
                strategy=strategy.value,
                progress=progress,
                chunk_size=chunk_size,
                precision=precision.value,
                journal=journal,
            )
        if any(t.ndim == 0 and k.endswith("num_batches_tracked") for k, t in la.fixed.items()):
            run.warn(
                [
                    "warning: the model has BatchNorm: every t is evaluated with checkpoint "
                    "a's running statistics (b's own differ); lossmap connect recomputes them"
                ]
            )
        run.save(c, "path", log=log)
        run.provenance(la, fp)
        run.summary = [*summary_lines(c, "path"), f"wrote {run.out}/ ({len(run.files)} files)"]
