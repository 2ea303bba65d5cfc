"""The ``lossmap`` command: parse, build a Landscape, call the library, write a run folder.

A run folder holds the result files (``.h5``, ``.csv``), figures (``.png``, ``.pdf``),
``report.html`` and ``run.json`` (arguments, versions, seed, timings, summary).

One module per command (``slices``: line, plane, interpolate; ``connect``;
``trajectory``; ``sharpness``; ``hessian``; ``plot``; ``demo``; ``runs``: status,
rerun; ``report``: the HTML page of run folders) around ``_common`` (the app, options,
shared helpers), ``_run`` (the run folder: one context manager, ``RunFolder``, that
every command writing one goes through) and ``_load`` (models and checkpoints);
:func:`main` turns every failure into one line and an exit status.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import sqlite3
import sys
from typing import Annotated, Any

import typer

from lossmap.cli._common import CURRENT_RUN, CliError, app, join_span_pairs
from lossmap.distributed import RankFailure

# The commands register themselves on ``app`` in this order (``lossmap --help``).
# isort: off
from lossmap.cli import slices, connect, trajectory, sharpness, hessian  # noqa: F401
from lossmap.cli import plot, demo, runs  # noqa: F401
from lossmap.cli import export  # noqa: F401
from lossmap.cli import report  # noqa: F401

# isort: on

__all__ = ["app", "main"]


class Split(str, enum.Enum):
    points = "points"
    data = "data"


@app.callback()
def _options(
    split: Annotated[
        Split,
        typer.Option(
            "--split",
            envvar="LOSSMAP_SPLIT",
            help="Under torchrun: ranks share the points of a grid (bit-identical to one "
            "process) or the samples of the data (for big data; equal up to rounding).",
        ),
    ] = Split.points,
    rank_timeout: Annotated[
        float,
        typer.Option(
            "--rank-timeout",
            min=1.0,
            envvar="LOSSMAP_RANK_TIMEOUT",
            help="Under torchrun: seconds a rank waits for the others before the job stops.",
        ),
    ] = 600.0,
) -> None:
    """Loss landscapes of PyTorch models: lines, planes, curvature, sharpness, paths.

    On several processes: torchrun --nproc-per-node N -m lossmap [--split data] COMMAND ...
    """
    CURRENT_RUN.update(split=split.value, rank_timeout=rank_timeout)


def _on_sigterm(signum: int, frame: Any) -> None:
    CURRENT_RUN["signal"] = signum
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input gets one line on stderr (no traceback) and exit status 2;
    SIGTERM and Ctrl-C stop after the last finished chunk was recorded (resumable)."""
    # `--span LO HI` (two words) is read as `--span LO,HI`: one value, as `--span 1` is.
    argv = join_span_pairs(list(sys.argv[1:] if argv is None else argv))
    CURRENT_RUN.update(argv=list(argv), journal=None, run_id=None, signal=None)
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread (embedded use)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rc = app(args=argv, standalone_mode=False)
        # Without standalone mode typer returns exit codes: Ctrl-C/SIGTERM become 130.
        if rc == 130:
            raise KeyboardInterrupt
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except (CliError, ValueError, TypeError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except RankFailure as e:  # another rank died or went silent: resumable
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except sqlite3.Error as e:  # the journal: disk full, or a file that is not ours
        where = CURRENT_RUN.get("journal") or "the run journal"
        typer.echo(
            f"error: could not write {where}: {e}; free space or choose another --out "
            "(or pass --restart if the journal is damaged)",
            err=True,
        )
        sys.exit(1)
    except OSError as e:  # disk full, permissions, ... while writing
        name = f" {e.filename}" if getattr(e, "filename", None) else ""
        # HDF5 explains a failed write over several lines: the first says what failed.
        why = " ".join(str(e.strerror or e).strip().splitlines()[:1]).strip()[:200]
        if e.errno is not None and os.strerror(e.errno) not in why:
            why = f"{os.strerror(e.errno)} ({why})" if why else os.strerror(e.errno)
        typer.echo(
            f"error: could not write{name}: {why}; free space or choose another --out",
            err=True,
        )
        sys.exit(1)
    except typer.TyperException as e:  # usage errors: bad option values, unknown options
        ctx = getattr(e, "ctx", None)
        command = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
        typer.echo(f"error: {e.format_message()} (see: lossmap{command} --help)", err=True)
        sys.exit(2 if e.exit_code in (1, 2) else e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        where = CURRENT_RUN.get("journal")
        typer.echo(
            "interrupted"
            + (
                f": finished points are saved in {where}; run the same command again to resume"
                if where
                else ""
            ),
            err=True,
        )
        sys.exit(143 if CURRENT_RUN.get("signal") == signal.SIGTERM else 130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # a bug: one line, the traceback on request
        if os.environ.get("LOSSMAP_DEBUG"):
            raise
        typer.echo(
            f"error: internal error {type(e).__name__}: {e} (a bug in lossmap; set "
            "LOSSMAP_DEBUG=1 for the traceback and please report it)",
            err=True,
        )
        sys.exit(3)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
