"""``lossmap status`` and ``lossmap rerun``: inspect and repeat a run folder."""

from __future__ import annotations

import json
import math
import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lossmap.cli._common import CliError, app, echo, human_time, join_span_pairs, pid_alive


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (its --out).")],
) -> None:
    """Progress of a running or interrupted run: points done, total, rate and ETA."""
    from lossmap.store import Journal

    path = run_dir / "journal.sqlite"
    if not path.is_file() and not path.is_symlink() and _finished_without_journal(run_dir):
        return
    if not path.is_file() and not path.is_symlink():
        raise CliError(
            f"{run_dir} has no journal.sqlite: not a lossmap run folder, or its run has not "
            "started a grid yet"
        )
    with Journal(path, read_only=True) as j:  # status only reads
        prog = j.progress()
        pid = j.meta("pid")
        fp = j.fingerprint
        run_id = j.run_id
    views = {k: v for k, v in prog.items() if k != "units"}
    complete = _results_written(run_dir, run_id)
    alive = not complete and pid_alive(pid)
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
            + (f", ETA {human_time(eta)}" if eta and state == "running" else "")
            + (f", last write {human_time(ago)} ago" if ago is not None else "")
        )
    if "units" in prog:
        lines.append(
            f"  {prog['units']['done']} units of work recorded (curve epochs, probes, ...)"
        )
    if state == "interrupted" and views and all(v["done"] >= v["total"] for v in views.values()):
        lines.append("  every point is done but the results were not all written")
    if state == "interrupted":
        lines.append("  re-run the same command with the same --out to resume")
    echo(lines)


def _finished_without_journal(run_dir: Path) -> bool:
    """A finished run whose command kept no journal (a straight path alone, a trajectory
    without a grid to resume): its run.json and every file it lists. Echoes its state."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, list) or not isinstance(info.get("command"), str):
        return False
    there = [f for f in files if isinstance(f, str) and Path(f).name == f]
    missing = [f for f in there if not (run_dir / f).is_file()]
    state = "complete" if not missing and len(there) == len(files) else "incomplete"
    lines = [f"{run_dir}: {info['command']} run, {state} (it kept no journal: nothing to resume)"]
    if missing:
        lines.append(f"  missing: {', '.join(missing[:5])}")
    echo(lines)
    return True


def _results_written(run_dir: Path, run_id: str | None) -> bool:
    """Complete: run.json was written by the run this journal holds (it carries the
    journal's run id) and every result file it lists is there. run.json is written
    last, so a run killed while writing its results, or one restarted since, is not."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(info, dict) or run_id is None or info.get("run_id") != run_id:
        return False
    files = info.get("files")
    if not isinstance(files, list) or not files:
        return False
    return all(isinstance(f, str) and Path(f).name == f and (run_dir / f).is_file() for f in files)


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


_RERUNNABLE = (
    "line",
    "plane",
    "interpolate",
    "demo",
    "hessian",
    "sharpness",
    "connect",
    "trajectory",
)


def _recorded_command(record: Path) -> tuple[dict[str, Any], list[str]]:
    """run.json's content and its command line, checked for shape: one line if malformed."""
    try:
        info = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CliError(
            f"{record} is not readable JSON ({e}); rerun needs a lossmap run.json"
        ) from None
    argv = info.get("argv") if isinstance(info, dict) else None
    if not isinstance(info, dict) or argv is None:
        raise CliError(
            f"{record} does not record its command line (no 'argv': written by an older lossmap, "
            "or not a lossmap run.json)"
        )
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise CliError(f"{record}: 'argv' must be a non-empty list of strings")
    if argv[0] not in _RERUNNABLE:
        raise CliError(
            f"{record} records the command {argv[0][:40]!r}; rerun repeats only "
            f"{', '.join(_RERUNNABLE)}"
        )
    if info.get("command", argv[0]) != argv[0]:
        raise CliError(f"{record}: 'command' {info.get('command')!r} is not its argv's {argv[0]!r}")
    return info, list(argv)


def _parse_recorded(argv: list[str], record: Path) -> dict[str, Any]:
    """Every element of ``argv`` checked against the command's own options and types
    (nothing is run): the parsed values."""
    import typer.main

    if "--help" in argv:
        raise CliError(f"{record}: its command line asks for --help; not a run to repeat")
    group = typer.main.get_command(app)
    command = group.commands[argv[0]]  # type: ignore[attr-defined]
    try:
        ctx = command.make_context(argv[0], list(argv[1:]), resilient_parsing=False)
    except typer.TyperException as e:
        raise CliError(f"{record}: its command line is not valid ({e.format_message()})") from None
    except typer.Exit:
        raise CliError(f"{record}: its command line is not a run to repeat") from None
    return dict(ctx.params)


def _compare(run_dir: Path, target: Path, files: Any) -> tuple[list[str], float]:
    """Each result file run.json lists, in ``run_dir`` against its repetition in ``target``:
    a line per statistic that differs, and the largest relative difference (0: none)."""
    import numpy as np

    import lossmap as lm

    lines, worst = [], 0.0
    for name in files if isinstance(files, list) else []:
        if not isinstance(name, str) or not name.endswith(".h5") or Path(name).name != name:
            continue  # only result files inside the run folder
        try:
            a, b = lm.load(run_dir / name), lm.load(target / name)
        except (FileNotFoundError, ValueError) as e:
            raise CliError(str(e)) from None
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
    return lines, worst


@app.command()
def rerun(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to repeat it (default RUN_DIR/rerun).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Confirm the recorded --model: rerun imports a factory only if you repeat it.",
        ),
    ] = None,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint",
            help="Confirm the recorded --trust-checkpoint (full unpickling runs code).",
        ),
    ] = False,
) -> None:
    """Repeat a run from its run.json and report whether the numbers match.

    A run folder is data: rerun runs from your own working directory (never the recorded
    one), and imports a --model or unpickles with --trust-checkpoint only when you repeat
    that option here."""

    from lossmap.cli._common import CURRENT_RUN

    record = run_dir / "run.json"
    if not record.is_file():
        raise CliError(f"{run_dir} has no run.json: not a finished lossmap run folder")
    info, argv = _recorded_command(record)
    argv = join_span_pairs(argv)  # recorded by a version that took --span LO HI
    target = (out or run_dir / "rerun").resolve()
    argv = _with_option(argv, "--out", str(target))
    argv.append("--restart")
    if argv[0] in ("line", "plane", "interpolate"):
        # Pin the strategy and chunks the run used: another strategy, or other chunks,
        # differ in the last bits (auto is a fixed rule, but the rule may change).
        try:
            (res,) = info["results"].values()
            engine = res["meta"]["engine"]
            pins = {
                "--strategy": str(engine["strategy"]),
                "--chunk-size": str(engine["chunk_size"]),
            }
        except (AttributeError, KeyError, TypeError, ValueError):
            raise CliError(f"{record}: 'results' does not record the engine used") from None
        for name, value in pins.items():
            argv = _with_option(argv, name, value)
    params = _parse_recorded(argv, record)
    typer.echo(f"rerun: lossmap {' '.join(shlex.quote(a) for a in argv)}")
    wanted = params.get("model")
    if wanted is not None and model != wanted:
        raise CliError(
            f"{record} runs --model {wanted!r}, which imports and runs its code; rerun it only "
            f"if you trust it, by repeating: lossmap rerun {run_dir} --model {wanted}"
        )
    if model is not None and wanted is None:
        raise CliError(f"{record} does not use --model; rerun it without --model")
    if params.get("trust_checkpoint") and not trust_checkpoint:
        raise CliError(
            f"{record} loads checkpoints with --trust-checkpoint, which runs code from them; "
            f"rerun it only if you trust them, by repeating: lossmap rerun {run_dir} "
            "--trust-checkpoint"
        )
    CURRENT_RUN["argv"] = list(argv)  # the repeated run records its own command, not "rerun"
    rc = app(args=argv, standalone_mode=False)
    if isinstance(rc, int) and rc:
        raise typer.Exit(rc)
    lines, worst = _compare(run_dir, target, info.get("files"))
    if worst == 0.0:
        verdict = "every value matches bit for bit"
    elif worst <= 1e-5:
        verdict = f"values match to rounding (max relative difference {worst:.2g})"
    else:
        verdict = "values DIFFER (see above)"
    echo([*lines, f"rerun of {run_dir}: {verdict}"])
    if worst > 1e-5:
        raise typer.Exit(1)
