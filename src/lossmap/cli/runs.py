"""``lossmap status`` and ``lossmap rerun``: inspect and repeat a run folder."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from lossmap.cli._common import CliError, _echo, _human, app


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (its --out).")],
) -> None:
    """Progress of a running or interrupted run: points done, total, rate and ETA."""
    from lossmap.store import Journal

    path = run_dir / "journal.sqlite"
    if not path.is_file():
        raise CliError(
            f"{run_dir} has no journal.sqlite: not a lossmap run folder, or its run has not "
            "started a grid yet"
        )
    with Journal(path) as j:
        prog = j.progress()
        pid = j.meta("pid")
        fp = j.fingerprint
    views = {k: v for k, v in prog.items() if k != "units"}
    record = run_dir / "run.json"
    # run.json is written last: newer than the journal's last write means finished.
    recorded = record.is_file() and record.stat().st_mtime >= max(
        [v["last_write"] or 0.0 for v in views.values()] + [prog.get("units", {}).get("last", 0.0)]
    )
    complete = recorded or (bool(views) and all(v["done"] >= v["total"] for v in views.values()))
    alive = False
    if pid and not complete:
        try:
            os.kill(int(pid), 0)
            alive = True
        except (OSError, ValueError):
            alive = False
    state = "complete" if complete else ("running" if alive else "interrupted")
    lines = [f"{run_dir}: {fp.get('command', '?')} run, {state}"]
    for name, v in views.items():
        pct = 100.0 * v["done"] / max(1, v["total"])
        rate = v["points_per_second"]
        eta = v["eta_seconds"]
        ago = time.time() - v["last_write"] if v["last_write"] else None
        lines.append(
            f"  {name}: {v['done']:,}/{v['total']:,} points ({pct:.1f} %)"
            + (f", {rate:,.3g} points/s" if rate else "")
            + (f", ETA {_human(eta)}" if eta and state == "running" else "")
            + (f", last write {_human(ago)} ago" if ago is not None else "")
        )
    if "units" in prog:
        lines.append(
            f"  {prog['units']['done']} units of work recorded (curve epochs, probes, ...)"
        )
    if state == "interrupted":
        lines.append("  re-run the same command with the same --out to resume")
    _echo(lines)


def _with_option(argv: list[str], name: str, value: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return [*out, name, value]


@app.command()
def rerun(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to repeat it (default RUN_DIR/rerun).")
    ] = None,
) -> None:
    """Repeat a run from its run.json and report whether the numbers match."""
    import numpy as np

    import lossmap as lm

    record = run_dir / "run.json"
    if not record.is_file():
        raise CliError(f"{run_dir} has no run.json: not a finished lossmap run folder")
    info = json.loads(record.read_text())
    argv = info.get("argv")
    if not argv:
        raise CliError(f"{record} does not record its command line (written by an older lossmap)")
    target = (out or run_dir / "rerun").resolve()
    argv = _with_option([str(a) for a in argv], "--out", str(target))
    if info["command"] in (
        "line",
        "plane",
        "interpolate",
        "demo",
        "hessian",
        "sharpness",
        "connect",
        "trajectory",
    ):
        argv.append("--restart")
    if info["command"] in ("line", "plane", "interpolate"):
        # Pin what auto chose by timing: another strategy differs in the last bits.
        (res,) = info["results"].values()
        engine = res["meta"]["engine"]
        argv = _with_option(argv, "--strategy", str(engine["strategy"]))
        argv = _with_option(argv, "--chunk-size", str(engine["chunk_size"]))
    here = os.getcwd()
    os.chdir(info.get("cwd", here))
    try:
        typer.echo(f"rerun: lossmap {' '.join(argv)}")
        rc = app(args=argv, standalone_mode=False)
    finally:
        os.chdir(here)
    if isinstance(rc, int) and rc:
        raise typer.Exit(rc)
    lines, worst = [], 0.0
    for name in info.get("files", []):
        if not name.endswith(".h5"):
            continue
        a, b = lm.load(run_dir / name), lm.load(target / name)
        va = getattr(a, "values", None) or {"density": a.density}  # type: ignore[union-attr]
        vb = getattr(b, "values", None) or {"density": b.density}  # type: ignore[union-attr]
        for k in va:
            x, y = np.asarray(va[k]), np.asarray(vb.get(k, np.array([])))
            if x.shape == y.shape and np.array_equal(x, y, equal_nan=True):
                continue
            if x.shape != y.shape or not np.array_equal(np.isnan(x), np.isnan(y)):
                rel = math.inf
            else:
                ok = ~np.isnan(x)
                rel = float(np.max(np.abs(x[ok] - y[ok]) / np.maximum(np.abs(x[ok]), 1e-12)))
            worst = max(worst, rel)
            lines.append(f"  {name} {k}: max relative difference {rel:.3g}")
    if worst == 0.0:
        verdict = "every value matches bit for bit"
    elif worst <= 1e-5:
        verdict = f"values match to rounding (max relative difference {worst:.2g})"
    else:
        verdict = "values DIFFER (see above)"
    _echo([*lines, f"rerun of {run_dir}: {verdict}"])
    if worst > 1e-5:
        raise typer.Exit(1)
