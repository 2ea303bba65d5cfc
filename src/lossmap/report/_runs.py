"""A run folder as the report reads it: ``run.json``, the result files (``.h5``) and the
tables (``eigenvalues.csv``, ``sharpness.csv``)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossmap.results import Result, Spectrum, load


@dataclass
class Run:
    """What one run folder holds.

    ``name`` labels the run on the page (the folder's name, made unique among the runs
    compared); ``record`` is ``run.json`` (empty while a command is still writing the
    folder, before ``run.json``); ``results`` maps a file's stem (``"surface"``,
    ``"line"``, ``"path"``, ``"curve"``) to its Curve or Surface; ``spectrum`` is
    ``spectrum.h5``; ``eigenvalues`` and ``sharpness`` the rows of the two tables."""

    folder: Path
    name: str
    record: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Result] = field(default_factory=dict)
    spectrum: Spectrum | None = None
    eigenvalues: list[dict[str, Any]] = field(default_factory=list)
    sharpness: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.results or self.spectrum or self.eigenvalues or self.sharpness)


def _number(text: str) -> Any:
    """A CSV cell as Python reads it: numbers as float (``nan`` as NaN), booleans as
    bool, anything else as the text."""
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a table the command wrote with ``write_rows`` (a header, then rows)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_run(folder: str | Path, record: dict[str, Any] | None = None) -> Run:
    """Read the run folder ``folder``.

    ``record``: ``run.json``'s contents when the caller has them before the file exists
    (a command writing its report). Only the files its ``"files"`` names are read, when
    it names them (a folder reused by another command may hold others). Raises FileNotFoundError when ``folder`` is no
    folder, ValueError when it holds nothing the report can show."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no run folder at {folder}; pass the --out folder of a lossmap command"
        )
    if record is None:
        rj = folder / "run.json"
        record = json.loads(rj.read_text()) if rj.is_file() else {}
    run = Run(folder, folder.resolve().name or str(folder), dict(record or {}))
    listed = run.record.get("files")
    # The files run.json names (a folder reused by another command may hold others).
    names = (
        {Path(f).name for f in listed}
        if isinstance(listed, list)
        else {p.name for p in folder.iterdir()}
    )
    for name in sorted(n for n in names if n.endswith(".h5")):
        r = load(folder / name)
        if isinstance(r, Spectrum):
            run.spectrum = r
        else:
            run.results[Path(name).stem] = r
    for table in ("eigenvalues", "sharpness"):
        if f"{table}.csv" in names:
            setattr(run, table, read_rows(folder / f"{table}.csv"))
    if run.empty:
        raise ValueError(
            f"{folder} holds no lossmap results (no .h5 file, eigenvalues.csv or "
            "sharpness.csv); is it the --out folder of a finished command?"
        )
    return run


def read_runs(folders: list[str | Path]) -> list[Run]:
    """The runs, each named by its folder (``parent/name`` where two folders share a name)."""
    if not folders:
        raise ValueError("no run folder given; e.g. lossmap report runs/demo")
    runs = [read_run(f) for f in folders]
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = "/".join(r.folder.resolve().parts[-2:])
    return runs


def finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
