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
    Device,
    DeviceOpt,
    ExampleOpt,
    IgnoreOpt,
    LogOpt,
    MaxHoursOpt,
    ModelOpt,
    Norm,
    NormOpt,
    OutOpt,
    RestartOpt,
    SeedOpt,
    SpanOpt,
    Strategy,
    StrategyOpt,
    TrustOpt,
    app,
    check_budget,
    data_hash,
    file_sha256,
    progress_bar,
    random_directions,
    summary_lines,
)
from lossmap.cli._load import build_landscape, check_theta0, with_checkpoint
from lossmap.cli._run import RunFolder


def _random_slice(view: str, args: dict[str, Any]) -> None:
    """``lossmap line`` / ``lossmap plane``: validate, build, evaluate (resumably), write."""
    import lossmap as lm
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    n = 1 if view == "line" else 2
    lm.slices.parse_span(args["span"], n)
    with RunFolder(view, args, t0=t0) as run:
        land = with_checkpoint(
            build_landscape(args["model"], args["example"], args["device"]),
            args["checkpoint"],
            key=args["checkpoint_key"],
            trust=args["trust_checkpoint"],
        )
        dirs = random_directions(land, n, args["normalization"], args["ignore"], args["seed"])
        check_budget(args["steps"], n, check_theta0(land), args["max_hours"])
        fp = {
            "command": view,
            **{
                k: args[k]
                for k in ("model", "example", "span", "steps", "normalization", "ignore", "seed")
            },
            "strategy": args["strategy"].value,
            "checkpoint_sha256": file_sha256(args["checkpoint"]) if args["checkpoint"] else None,
            "theta0": hash_tensors(land.theta0),
            "directions": hash_tensors([t for d in dirs for t in d.values()]),
            "data": data_hash(land),
            "device": str(land.device),
        }
        with run.journal(fp) as journal, progress_bar(view) as progress:
            kw = {
                "span": args["span"],
                "steps": args["steps"],
                "strategy": args["strategy"].value,
                "chunk_size": args["chunk_size"],
                "journal": journal,
                "progress": progress,
            }
            r = lm.line(land, dirs[0], **kw) if n == 1 else lm.plane(land, *dirs, **kw)
        name = "line" if n == 1 else "surface"
        run.save(r, name, log=args["log"])
        run.provenance(land, fp)
        resumed = r.meta["engine"].get("resumed_points", 0)
        note = [f"  resumed: {resumed} of {r['loss'].size} points were done"] if resumed else []
        run.summary = [*summary_lines(r, view), *note, f"wrote {run.out}/ ({len(run.files)} files)"]


# ---------------------------------------------------------------- commands
@app.command()
def line(
    model: ModelOpt = None,
    example: ExampleOpt = None,
    checkpoint: CheckpointOpt = None,
    span: SpanOpt = (-1.0, 1.0),
    steps: Annotated[int, typer.Option("--steps", min=2)] = 51,
    normalization: NormOpt = Norm.filter,
    ignore: IgnoreOpt = "bias,norm",
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    strategy: StrategyOpt = Strategy.auto,
    out: OutOpt = Path("runs/line"),
    log: LogOpt = None,
    restart: RestartOpt = False,
    chunk_size: ChunkOpt = None,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    max_hours: MaxHoursOpt = 24.0,
) -> None:
    """The loss along one random (normalised) direction through θ0."""
    _random_slice("line", dict(locals()))


@app.command()
def plane(
    model: ModelOpt = None,
    example: ExampleOpt = None,
    checkpoint: CheckpointOpt = None,
    span: SpanOpt = (-1.0, 1.0),
    steps: Annotated[int, typer.Option("--steps", min=2)] = 41,
    normalization: NormOpt = Norm.filter,
    ignore: IgnoreOpt = "bias,norm",
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    strategy: StrategyOpt = Strategy.auto,
    out: OutOpt = Path("runs/plane"),
    log: LogOpt = None,
    restart: RestartOpt = False,
    chunk_size: ChunkOpt = None,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
    max_hours: MaxHoursOpt = 24.0,
) -> None:
    """The loss on a plane spanned by two random (normalised, orthogonal) directions."""
    _random_slice("plane", dict(locals()))


@app.command()
def interpolate(
    checkpoint_a: Annotated[Path, typer.Argument(help="State dict at t = 0.")],
    checkpoint_b: Annotated[Path, typer.Argument(help="State dict at t = 1.")],
    model: ModelOpt = None,
    example: ExampleOpt = None,
    span: SpanOpt = (-0.5, 1.5),
    steps: Annotated[int, typer.Option("--steps", min=2)] = 41,
    device: DeviceOpt = Device.auto,
    strategy: StrategyOpt = Strategy.auto,
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
    lm.slices.parse_span(span, 1)
    with RunFolder("interpolate", args, t0=t0) as run:
        land = build_landscape(model, example, device)
        la = with_checkpoint(land, checkpoint_a, key=checkpoint_key, trust=trust_checkpoint)
        lb = with_checkpoint(land, checkpoint_b, key=checkpoint_key, trust=trust_checkpoint)
        check_budget(steps, 1, max(check_theta0(la), check_theta0(lb)), max_hours)
        fp = {
            "command": "interpolate",
            "model": model,
            "example": example,
            "span": span,
            "steps": steps,
            "strategy": strategy.value,
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
                span=span,
                steps=steps,
                strategy=strategy.value,
                progress=progress,
                chunk_size=chunk_size,
                journal=journal,
            )
        run.save(c, "path", log=log)
        run.provenance(la, fp)
        run.summary = [*summary_lines(c, "path"), f"wrote {run.out}/ ({len(run.files)} files)"]
