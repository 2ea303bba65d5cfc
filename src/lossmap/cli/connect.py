"""``lossmap connect``: the path between two checkpoints, straight or fitted."""

from __future__ import annotations

import enum
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from lossmap.cli._common import (
    CkptKeyOpt,
    CliError,
    DeviceOpt,
    Example,
    ExampleOpt,
    ModelOpt,
    OutOpt,
    RestartOpt,
    TrustOpt,
    app,
    barrier_line,
    data_hash,
    parse_span_text,
    progress_bar,
    seed_option,
)
from lossmap.cli._load import build_landscape, check_theta0, with_checkpoint
from lossmap.cli._run import RunFolder

SeedOpt = Annotated[int, seed_option("the curve fit: its start and the order of its minibatches")]


class CurveOpt(str, enum.Enum):
    bezier = "bezier"
    polychain = "polychain"
    none = "none"


def _pair(
    land: Any,
    checkpoint_a: Path | None,
    checkpoint_b: Path | None,
    example: Example | None,
    key: str | None,
    trust: bool,
) -> tuple[Any, Any]:
    """The two endpoints: two checkpoints, or (built-in digits) a second seed's training."""
    if (checkpoint_a is None) != (checkpoint_b is None):
        raise CliError("give two checkpoints (CKPT_A CKPT_B), or none with --example digits")
    if checkpoint_a is not None and checkpoint_b is not None:
        la = with_checkpoint(land, checkpoint_a, key=key, trust=trust)
        lb = with_checkpoint(land, checkpoint_b, key=key, trust=trust)
        return la, lb
    if example is not Example.digits:
        raise CliError(
            "without checkpoints only --example digits has a second endpoint (another seed); "
            "pass CKPT_A CKPT_B"
        )
    from lossmap import examples

    other = examples.digits_mlp(seed=1)
    return land, land.at(dict(other.model.state_dict()))


@app.command()
def connect(
    checkpoint_a: Annotated[Path | None, typer.Argument(help="State dict at t = 0.")] = None,
    checkpoint_b: Annotated[Path | None, typer.Argument(help="State dict at t = 1.")] = None,
    model: ModelOpt = None,
    example: ExampleOpt = None,
    curve: Annotated[
        CurveOpt, typer.Option("--curve", help="Fit a Garipov et al. curve, or none.")
    ] = CurveOpt.bezier,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Curve-fitting epochs.")] = 20,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Curve-fitting step size.")] = 0.1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 128,
    steps: Annotated[int, typer.Option("--steps", min=2, help="Points along each path.")] = 41,
    span: Annotated[
        str | None,
        typer.Option(
            "--span",
            help="t range of the straight path, LO,HI (must put 0 and 1 on the grid); "
            "default: about -0.5,1.5, chosen so that 0 and 1 are on the grid of --steps points.",
        ),
    ] = None,
    reset_bn: Annotated[
        bool | None,
        typer.Option(
            "--reset-bn/--no-reset-bn",
            help="Recompute BatchNorm statistics at every point of the straight path "
            "(default: yes, when the model has BatchNorm); --no-reset-bn uses checkpoint a's "
            "statistics everywhere, and says so.",
        ),
    ] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    out: OutOpt = Path("runs/connect"),
    restart: RestartOpt = False,
    checkpoint_key: CkptKeyOpt = None,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Paths between two minima: the straight line's barrier and a fitted low-loss curve.

    With BatchNorm, every point of both paths is evaluated with statistics recomputed
    there (the curve is fitted in train mode); ``--no-reset-bn`` evaluates the straight
    path with checkpoint a's statistics instead, with a warning."""
    args = dict(locals())  # the parameters alone: first, before any local name
    import lossmap as lm
    from lossmap.store import hash_tensors

    t0 = time.perf_counter()
    t_span = None if span is None else parse_span_text(span)
    with RunFolder("connect", args, t0=t0) as run:
        land = build_landscape(model, example, device)
        la, lb = _pair(land, checkpoint_a, checkpoint_b, example, checkpoint_key, trust_checkpoint)
        for end in (la, lb):
            check_theta0(end)
        a, b = la.point(), lb.point()
        with progress_bar("straight path") as progress:
            progress(0, 1)
            with warnings.catch_warnings():  # said below in one line of our own
                warnings.filterwarnings("ignore", "reset_bn=False", UserWarning)
                line = lm.connect.linear(la, a, b, steps=steps, span=t_span, reset_bn=reset_bn)
            progress(1, 1)
        run.save(line, "path", figures=False)  # drawn last, on the run's one scale
        if line.meta.get("bn_statistics_foreign"):
            run.warn(
                [
                    f"warning: --no-reset-bn: every point of the straight path uses checkpoint "
                    f"a's BatchNorm statistics ({line.meta['batchnorm_layers']} layers), so its "
                    "barrier is not the networks' own; drop --no-reset-bn to recompute them "
                    "at each point"
                ]
            )
        name = "straight path" + (
            " (checkpoint a's BatchNorm statistics)"
            if line.meta.get("bn_statistics_foreign")
            else ""
        )
        lines = [barrier_line(name, line.meta["barrier"])]
        run.note(barrier_line=line.meta["barrier"])
        fitted = None
        if curve is not CurveOpt.none:
            fp = {
                "command": "connect",
                "model": model,
                "example": example,
                "curve": curve.value,
                "epochs": epochs,
                "lr": lr,
                "batch_size": batch_size,
                "seed": seed,
                "a": hash_tensors(a),
                "b": hash_tensors(b),
                "data": data_hash(land),
            }
            fit = _fit_curve(run, la, a, b, fp, args)
            run.save(fitted := fit.to_curve("curve"), "curve", figures=False)
            lines.append(barrier_line(f"{curve.value} curve", fit.meta["barrier"]["curve"]))
            run.note(barrier_curve=fit.meta["barrier"]["curve"])
        run.add(_figures(run.out, line, fitted))
        run.provenance(la)
        run.summary = [*lines, f"wrote {run.out}/ ({len(run.files)} files)"]


def _figures(out: Path, line: Any, fitted: Any) -> list[Path]:
    """The straight path's figure and the fitted curve's over it (``<kind>_curve``), the
    loss on one scale decided from both paths' values."""
    from lossmap import plot as lplot

    scales = lplot.log_scales(*([line] if fitted is None else [line, fitted]))
    files = lplot.figures(line, out, prefix="path_", log=scales)
    if fitted is not None:
        fig = lplot.curve(fitted, logy=scales.get("loss"), straight=line)
        try:
            files += lplot.save(fig, out / f"{fitted.meta['path']}_curve")
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)
    return files


def _fit_curve(
    run: RunFolder, la: Any, a: Any, b: Any, fp: dict[str, Any], args: dict[str, Any]
) -> Any:
    """The fitted curve (resumable: its journal holds each finished epoch)."""
    import lossmap as lm

    kind = args["curve"].value
    with run.journal(fp) as journal, progress_bar(f"{kind} curve") as progress:
        return lm.connect.curve(
            la,
            a,
            b,
            kind=kind,
            epochs=args["epochs"],
            lr=args["lr"],
            batch_size=args["batch_size"],
            seed=args["seed"],
            steps=args["steps"],
            journal=journal,
            progress=progress,
        )
