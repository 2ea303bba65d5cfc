"""``lossmap plot``: re-draw the figures of a saved result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossmap.cli._common import CliError, LogOpt, app, echo, prepare_out


@app.command()
def plot(
    result: Annotated[Path, typer.Argument(help="A result file written by lossmap (.h5).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the figures (default: next to the result)."),
    ] = None,
    log: LogOpt = None,
) -> None:
    """Re-draw the figures of a saved result."""
    import lossmap as lm
    from lossmap import plot as lplot

    try:
        r = lm.load(result)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    folder = prepare_out(out or result.parent)
    files = lplot.figures(r, folder, prefix=f"{result.stem}_", log=log)
    echo([f"wrote {len(files)} figures to {folder}/"])
