"""``lossmap export``: a saved result as VTK (ParaView), CSV or NPZ."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from lossmap.cli._common import CliError, app, echo, prepare_out


class Format(str, enum.Enum):
    vtk = "vtk"
    vtu = "vtu"
    csv = "csv"
    npz = "npz"


@app.command()
def export(
    result: Annotated[Path, typer.Argument(help="A result file written by lossmap (.h5).")],
    format: Annotated[
        Format,
        typer.Option(
            "--format",
            help="vtk: legacy VTK (ParaView); vtu: VTK XML; csv: one row per grid point; "
            "npz: numpy arrays.",
        ),
    ] = Format.vtk,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="The file to write (default: the result's name, new suffix)."),
    ] = None,
) -> None:
    """Export a curve or surface to VTK (points alpha, beta, loss; every value a field,
    plus log_loss), CSV or NPZ."""
    import lossmap as lm

    fmt = Format(format)
    if out is not None and out.suffix.lower() != f".{fmt.value}":
        raise CliError(
            f"--out {out} does not end in .{fmt.value}; name the file for --format {fmt.value}"
        )
    target = out or result.with_suffix(f".{fmt.value}")
    if target.resolve() == result.resolve():
        raise CliError(f"--out {out} is the result itself; choose another file")
    try:
        r = lm.load(result)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    if not isinstance(r, lm.Curve | lm.Surface):
        raise CliError(
            f"{result} holds a {r.kind} (a Hessian eigenvalue density): export writes curves "
            "and surfaces; read it in Python with lossmap.load (.grid, .density)"
        )
    prepare_out(target.parent)
    if fmt in (Format.vtk, Format.vtu):
        r.to_vtk(target)
    elif fmt is Format.csv:
        r.to_csv(target)
    elif fmt is Format.npz:
        r.to_npz(target)
    else:  # pragma: no cover - every Format is handled above
        raise CliError(f"unknown format {fmt.value}; choose one of {', '.join(Format)}")
    echo([f"wrote {target}"])
