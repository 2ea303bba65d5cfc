"""``lossmap report``: the HTML report of one run folder, or of several side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossmap.cli._common import CliError, app, echo


@app.command()
def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Run folders (the --out of lossmap commands); several: side by side."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="The page to write (default: RUN_DIR/report.html; for several runs, "
            "report-A-B.html beside the first).",
        ),
    ] = None,
) -> None:
    """Write one self-contained HTML page of a run (or a comparison of runs): it opens
    with no network."""
    from lossmap import report as lreport

    if out is not None and out.suffix.lower() not in (".html", ".htm"):
        raise CliError(f"--out {out} should name an .html file, e.g. --out {out}.html")
    if out is not None and out.is_dir():
        raise CliError(f"--out {out} is a folder; name the page, e.g. --out {out}/report.html")
    try:
        path = lreport.write(run_dirs, out)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    size = path.stat().st_size
    echo([f"wrote {path} ({size / 1e6:.2f} MB, {len(run_dirs)} run{'s' * (len(run_dirs) > 1)})"])
