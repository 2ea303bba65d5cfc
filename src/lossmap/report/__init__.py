"""One self-contained HTML report of a run folder, or of several side by side.

:func:`write` reads what a command wrote (the results' ``.h5`` files through
:func:`lossmap.load`, ``run.json``, ``eigenvalues.csv``, ``sharpness.csv``) and writes
one page that opens with no network: plotly.js is embedded in it, gzip-compressed and
base64-encoded (about 1.4 MB instead of 4.8 MB), and unpacked by the browser's own
``DecompressionStream`` (Chrome/Edge 80+, Firefox 113+, Safari 16.4+).

The page holds one section per kind of result, with a table of contents:

- planes: an interactive 3-D surface and a filled contour plot of each, θ0 marked, the
  training trajectory over the contours when the run has one, a choice of statistic
  (train/test, loss/accuracy) and of a log₁₀ scale (chosen first by the same rule as the
  figures, :func:`lossmap.plot.auto_log`), the colour map :data:`lossmap.plot.COLORMAP`;
- lines and paths: the statistics against the coordinate, θ0 marked; the barriers;
- curvature: the extreme eigenvalues and the trace, the spectral density;
- sharpness: every metric with its one-line definition and its paper;
- the runs' metadata: command line, model and parameter count, data sizes, directions
  and their normalisation with the measured cosine between the axes, seeds, versions,
  timings, peak memory and the engine's strategy.

Several runs (``write(["runs/sgd", "runs/sam"])``) share each section: their planes side
by side on one colour scale per statistic, their curves and spectra on the same axes,
their tables in columns.

>>> import tempfile, lossmap as lm
>>> from pathlib import Path
>>> from lossmap import report
>>> land = lm.examples.linear_regression()
>>> folder = Path(tempfile.mkdtemp())
>>> s = lm.plane(land, "weight", "bias", span=[(0, 6), (-1, 5)], steps=(11, 13))
>>> _ = s.save(folder / "surface.h5")
>>> page = report.write(folder)
>>> page.name, page.stat().st_size < 5_000_000
('report.html', True)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lossmap.report._page import build
from lossmap.report._runs import Run, read_run, read_runs
from lossmap.results import atomic_path

__all__ = ["Run", "read_run", "write"]

PathLike = str | os.PathLike[str]


def default_out(folders: Sequence[Path]) -> Path:
    """``FOLDER/report.html`` for one run; for several, ``report-A-B.html`` in the folder
    that holds the first."""
    if len(folders) == 1:
        return folders[0] / "report.html"
    names = "-".join(f.resolve().name for f in folders)[:120]
    return folders[0].resolve().parent / f"report-{names}.html"


def write(
    run_dirs: PathLike | Sequence[PathLike],
    out: PathLike | None = None,
    *,
    record: dict[str, Any] | None = None,
) -> Path:
    """Write the HTML report of one run folder, or of several side by side.

    Args:
        run_dirs: a run folder (the ``--out`` of a lossmap command), or several.
        out: the page to write; default ``RUN_DIR/report.html`` for one run, and
            ``report-A-B.html`` beside the first run folder for several.
        record: ``run.json``'s contents, for a command that writes its report before
            ``run.json`` (one run folder only).

    Returns:
        The path of the page (written atomically).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: a folder holds no lossmap result, or a result file is damaged.
    """
    if isinstance(run_dirs, str | os.PathLike):
        folders = [Path(run_dirs)]
    else:
        folders = [Path(d) for d in run_dirs]
    if record is not None:
        if len(folders) != 1:
            raise ValueError("record= describes one run folder; pass one run folder with it")
        runs = [read_run(folders[0], record)]
    else:
        runs = read_runs(list(folders))
    path = Path(out) if out is not None else default_out(folders)
    text = build(runs)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
