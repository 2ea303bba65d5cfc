"""The run folder of a command, from the empty ``--out`` to the summary: one context
manager, :class:`RunFolder`, that every command writing a run folder goes through.

The order of a run, and what an interruption leaves:

1. ``--out`` is created (or refused: not writable) when the block is entered;
2. the journal is opened with the run's fingerprint (``--restart`` discards what it
   holds; another run's journal is refused) and closed as soon as the computation that
   feeds it ends, whether it finished or not; Ctrl-C and SIGTERM arrive as
   ``KeyboardInterrupt`` after the last finished chunk was recorded, and the next run
   resumes from there;
3. each result is written as soon as it is ready, every file atomically (a temporary
   renamed into place: a run killed mid-write leaves no half file under a result's name);
4. ``report.html`` (:mod:`lossmap.report`), on a normal exit only, from the files
   written (a failure to write it is a warning: the results stay);
5. ``run.json`` is written last, on a normal exit only: it names the journal's run id
   and every file, which is how ``lossmap status`` tells a complete run from one killed
   while writing its results, and the run's peak memory on its device
   (:func:`lossmap.devices.peak_memory`);
6. the summary is echoed, with the report's path.

An exception anywhere (a :class:`~lossmap.cli._common.CliError`, an interruption, a
bug) writes nothing more and reaches :func:`lossmap.cli.main`, which reports it in one
line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from lossmap.cli._common import (
    CURRENT_RUN,
    CliError,
    data_hash,
    echo,
    echo_err,
    library_versions,
    pid_alive,
    prepare_out,
    secondary_rank,
    write_json,
)


class RunFolder:
    """One command's run folder: journal, result files, ``run.json``, summary.

    Args:
        command: the command's name, run.json's ``"command"``.
        args: the command's parameters, run.json's ``"arguments"``; ``args["out"]`` is
            the folder and ``args["restart"]`` whether to discard its journal.
        t0: when the command started (``time.perf_counter()``), for run.json's
            ``"seconds"``.

    Example (the shape of every command)::

        with RunFolder("plane", args, t0=t0) as run:
            land = ...
            with run.journal(fingerprint) as journal:
                surface = lm.plane(land, d1, d2, journal=journal)
            run.save(surface, "surface")
            run.provenance(land, fingerprint)
            run.summary = [..., f"wrote {run.out}/ ({len(run.files)} files)"]
    """

    def __init__(self, command: str, args: dict[str, Any], *, t0: float) -> None:
        self.command = command
        self.args = args
        self.t0 = t0
        self.out: Path = args["out"]
        self.files: list[Path] = []
        """Every file written so far (run.json's ``"files"``)."""
        self.results: dict[str, Any] = {}
        """The results saved, by name (run.json's ``"results"``, when there are any)."""
        self.summary: list[str] = []
        """The lines echoed after run.json is written."""
        self._fields: dict[str, Any] = {}
        self._after_files: dict[str, Any] = {}
        self._warnings: list[str] = []
        self._private: Path | None = None
        self._made: list[Path] = []
        """The folders ``__enter__`` created for ``out``, deepest first."""

    def __enter__(self) -> RunFolder:
        from lossmap.devices import reset_peak_memory

        reset_peak_memory()  # run.json's peak_memory is this run's (rank 0's under torchrun)
        if secondary_rank():
            # Under torchrun, ranks other than 0 compute their share and write nowhere
            # the user sees: their copies of the files go to a private folder, removed.
            self._private = Path(tempfile.mkdtemp(prefix="lossmap-rank-"))
            self.out = self._private
            return self
        self._made = _missing_folders(self.out)
        self.out = prepare_out(self.out)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            return
        if exc_type is not None:  # nothing more is written; main() reports the exception
            for folder in self._made:  # a run refused before writing leaves no empty folder
                try:
                    folder.rmdir()
                except OSError:
                    break  # not empty (the run wrote something: kept for a resume)
            return
        self._write_record()
        echo_err(self._warnings)
        echo(self.summary)

    def warn(self, lines: list[str]) -> None:
        """Notes and warnings for the user: on stderr, one line each, after a run that
        finished (a failure stays one line: the error)."""
        self._warnings += lines

    @contextmanager
    def journal(self, fingerprint: dict[str, Any]) -> Iterator[Any]:
        """The run folder's journal for this fingerprint, closed when the block ends."""
        j = _open_journal(self.out, fingerprint, bool(self.args["restart"]))
        try:
            yield j
        finally:
            j.close()

    def save(self, result: Any, name: str, *, log: Any = None, figures: bool = True) -> list[Path]:
        """Write ``name.h5``, ``name.csv`` and (``figures``) the result's figures, ``log``
        a bool, ``None`` or ``plot.log_scales`` of the run; run.json lists it."""
        from lossmap import plot

        files = [result.save(self.out / f"{name}.h5"), result.to_csv(self.out / f"{name}.csv")]
        if figures:
            files += plot.figures(result, self.out, prefix=f"{name}_", log=log)
        self.results[name] = result
        self.files += files
        return files

    def add(self, files: list[Path]) -> None:
        """Files the command wrote itself (tables, extra figures): run.json lists them."""
        self.files += files

    def note(self, **fields: Any) -> None:
        """Entries of run.json, after ``"results"`` and before ``"files"``."""
        self._fields.update(fields)

    def provenance(
        self, land: Any, fingerprint: dict[str, Any] | None = None, *, after_files: bool = False
    ) -> None:
        """What ``lossmap rerun`` needs to repeat the run, and what a reader needs to trust it.

        Hashes the fingerprint already holds (of θ0, of the data) are not computed again.
        ``after_files``: placed after run.json's ``"files"`` (where ``hessian`` and
        ``sharpness`` have always written them)."""
        from lossmap.store import hash_tensors

        fp = fingerprint or {}
        fields = {
            "argv": list(CURRENT_RUN["argv"]),
            "cwd": os.getcwd(),
            "run_id": CURRENT_RUN.get("run_id"),
            "device": str(land.device),
            "theta0_sha256": fp.get("theta0") or hash_tensors(land.theta0),
            "data_sha256": fp.get("data") or data_hash(land),
            "fingerprint": fingerprint,
        }
        (self._after_files if after_files else self._fields).update(fields)

    def _write_record(self) -> None:
        from lossmap.devices import peak_memory

        device = {**self._fields, **self._after_files}.get("device", "cpu")
        record: dict[str, Any] = {
            "command": self.command,
            "arguments": self.args,
            "versions": library_versions(),
            "seconds": time.perf_counter() - self.t0,
            "peak_memory": peak_memory(device),
        }
        if self.results:
            record["results"] = {
                k: {"summary": r.summary(_loss_key(r)), "meta": r.meta}
                for k, r in self.results.items()
            }
        record.update(self._fields)
        written = sorted(str(f.relative_to(self.out)) for f in self.files)
        self._write_report({**record, "files": written, **self._after_files})
        record["files"] = sorted(str(f.relative_to(self.out)) for f in self.files)
        record.update(self._after_files)
        write_json(self.out / "run.json", record)

    def _write_report(self, record: dict[str, Any]) -> None:
        """``report.html`` (:func:`lossmap.report.write`), from the files written and what
        run.json will say; listed in run.json and named in the summary. A failure loses
        no result: it is one line of warning."""
        from lossmap import report
        from lossmap.results import jsonable

        try:
            path = report.write(self.out, record=jsonable(record))
        except Exception as e:
            self._warnings.append(
                f"warning: report.html was not written ({type(e).__name__}: {e}); the results "
                f"are saved: run `lossmap report {self.out}` to try again"
            )
            return
        self.files.append(path)
        # before the last line (where the commands say where they wrote)
        self.summary.insert(max(0, len(self.summary) - 1), f"  report: {path}")


def _loss_key(result: Any) -> str:
    """The loss a result's summary is about: the first data set's loss, or the first
    loss there is (``--dataset test`` evaluates no ``train/loss``)."""
    values = getattr(result, "values", None) or {}
    if any(k.endswith("/loss") for k in values):
        try:
            return str(result.key("loss"))
        except KeyError:
            return next(k for k in values if k.endswith("/loss"))
    return "loss"


def _open_journal(out: Path, fingerprint: dict[str, Any], restart: bool) -> Any:
    import lossmap
    from lossmap.store import Journal, JournalMismatch

    # Another lossmap version may compute other values: never mix them in one run.
    fingerprint = {**fingerprint, "lossmap": lossmap.__version__}
    CURRENT_RUN["journal"] = out / "journal.sqlite"  # named by any error while opening it
    try:
        j = Journal(out / "journal.sqlite", fingerprint, restart=restart)
    except JournalMismatch as e:
        raise CliError(str(e)) from None
    CURRENT_RUN["journal"] = j.path
    CURRENT_RUN["run_id"] = j.run_id
    if not pid_alive(j.previous_pid):  # its temporaries are stale: a killed final write
        from lossmap.results import stale_temporaries

        for tmp in stale_temporaries(out):
            tmp.unlink(missing_ok=True)
    return j


def _missing_folders(out: Path) -> list[Path]:
    """The folders that creating ``out`` will make (``out`` and its missing parents),
    deepest first."""
    made, p = [], out
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    return made
