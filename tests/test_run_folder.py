"""The CLI's run folder: every command that writes one goes through ``RunFolder``, which
writes run.json and the summary on a normal exit only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import cli_result, one_line_error, run_cli

import lossmap as lm
from lossmap.cli import app
from lossmap.cli._common import CURRENT_RUN
from lossmap.cli._run import RunFolder

# Commands that write no run folder: they read one (status, rerun: which repeats a
# command that does; report: a page of run folders), re-draw figures next to a result
# (plot) or convert one (export).
NOT_RUN_FOLDERS = {"plot", "status", "rerun", "export", "report"}


def _checkpoints(tmp_path: Path, n: int) -> list[str]:
    """``n`` state dicts of the built-in linear example, moved apart (seeded)."""
    model = lm.examples.linear_regression().model
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        sd = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
        paths.append(str(tmp_path / f"c{i}.pt"))
        torch.save(sd, paths[-1])
    return paths


def _invocations(tmp_path: Path) -> dict[str, list[str]]:
    """The smallest run of each command on the built-in linear example."""
    c = _checkpoints(tmp_path, 3)
    return {
        "line": ["line", "--example", "linear", "--steps", "3"],
        "plane": ["plane", "--example", "linear", "--steps", "3"],
        "interpolate": ["interpolate", c[0], c[1], "--example", "linear", "--steps", "3"],
        "connect": ["connect", c[0], c[1], "--example", "linear", "--steps", "3", "--epochs", "1"],
        "trajectory": ["trajectory", *c, "--example", "linear", "--steps", "3"],
        "hessian": ["hessian", "--example", "linear", "--k", "1"],
        "sharpness": ["sharpness", "--example", "linear", "--samples", "2"],
        "demo": ["demo", "--example", "linear", "--steps", "3"],
    }


def test_every_command_writes_its_run_folder_through_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command's run enters one RunFolder and leaves it normally; run.json is the
    one RunFolder wrote (a command writing its own run.json, or a new command that
    bypasses RunFolder, fails here)."""
    import typer.main

    calls: list[tuple[str, str]] = []
    enter, exit_, write = RunFolder.__enter__, RunFolder.__exit__, RunFolder._write_record

    def spy_enter(self: RunFolder) -> RunFolder:
        calls.append(("enter", self.command))
        return enter(self)

    def spy_exit(self: RunFolder, *exc: Any) -> None:
        calls.append(("exit" if exc[0] is None else "raise", self.command))
        return exit_(self, *exc)

    def spy_write(self: RunFolder) -> None:
        write(self)
        record = json.loads((self.out / "run.json").read_text())
        record["written by RunFolder"] = True
        (self.out / "run.json").write_text(json.dumps(record))

    monkeypatch.setattr(RunFolder, "__enter__", spy_enter)
    monkeypatch.setattr(RunFolder, "__exit__", spy_exit)
    monkeypatch.setattr(RunFolder, "_write_record", spy_write)
    runs = _invocations(tmp_path)
    registered = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert registered - NOT_RUN_FOLDERS == set(runs), "give each new command a run here"
    for command, args in runs.items():
        calls.clear()
        out = tmp_path / command
        code, stdout, err = run_cli([*args, "--out", str(out)], capsys)
        assert code == 0, (command, err)
        assert calls == [("enter", command), ("exit", command)], command
        record = json.loads((out / "run.json").read_text())
        assert record["written by RunFolder"] and record["command"] == command
        # "arguments" holds the command's parameters and nothing else (issue #17: no
        # local imports or timers recorded as arguments).
        params = {q.name for q in typer.main.get_command(app).commands[command].params}  # type: ignore[attr-defined]
        assert set(record["arguments"]) == params, (command, set(record["arguments"]) ^ params)
        assert all((out / f).is_file() for f in record["files"]), command
        # the run's peak memory on its device (on CPU, the process's max RSS)
        peak = record["peak_memory"]
        assert peak["device"] == record["device"] == "cpu", command
        assert peak["how"] == "ru_maxrss" and 0 < peak["bytes"] <= _machine_bytes(), command
        assert f"{out}/" in stdout.splitlines()[-2 if command == "demo" else -1], command


def _machine_bytes() -> int:
    import os

    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_a_failure_inside_writes_no_run_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CliError after the folder was prepared: no run.json, and the folder the run
    created, still empty, is removed again."""
    out = tmp_path / "h"
    code, stdout, err = run_cli(
        ["hessian", "--example", "linear", "--k", "3", "--out", str(out)], capsys
    )
    assert code == 2 and "--k 3" in err and not stdout
    assert not out.exists()


def test_run_folder_order_and_interruption(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Normal exit: run.json (results, notes, files, then late fields) then the summary.
    An interruption in the journal's block: the journal is closed, named for main()'s
    message, and nothing more is written."""
    monkeypatch.setitem(CURRENT_RUN, "argv", ["line"])
    monkeypatch.setitem(CURRENT_RUN, "journal", None)
    monkeypatch.setitem(CURRENT_RUN, "run_id", None)
    land = lm.examples.linear_regression()
    args = {"out": tmp_path / "a", "restart": False}
    with RunFolder("line", args, t0=0.0) as run:
        with run.journal({"command": "line"}) as journal:
            c = lm.line(land, "bias", steps=3, journal=journal)
        run.save(c, "line")
        run.note(extra=1)
        run.provenance(land, after_files=True)
        run.summary = ["done"]
        assert not (run.out / "run.json").exists()
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert list(record)[:8] == [
        "command",
        "arguments",
        "versions",
        "seconds",
        "peak_memory",
        "results",
        "extra",
        "files",
    ]
    assert record["run_id"] == CURRENT_RUN["run_id"] and record["argv"] == ["line"]
    # the report's path (report.html, written before run.json), then the summary
    assert capsys.readouterr().out == f"  report: {tmp_path / 'a' / 'report.html'}\ndone\n"

    args = {"out": tmp_path / "b", "restart": False}
    opened: list[Any] = []
    with pytest.raises(KeyboardInterrupt), RunFolder("line", args, t0=0.0) as run:
        run.summary = ["never"]
        with run.journal({"command": "line"}) as journal:
            opened.append(journal)
            raise KeyboardInterrupt
    assert CURRENT_RUN["journal"] == tmp_path / "b" / "journal.sqlite"
    assert not (tmp_path / "b" / "run.json").exists() and capsys.readouterr().out == ""
    with pytest.raises(Exception, match="closed"):
        opened[0].get("x")  # the journal was closed on the way out


def test_a_refused_run_leaves_no_empty_folder(tmp_path: Path, capsys) -> None:
    """Bad input found inside the run (one checkpoint for ``connect``) is refused in
    one line, and the default ``runs/connect`` it had created, parents included, is
    gone again; a folder that held something before is kept."""
    c = _checkpoints(tmp_path, 1)
    r = cli_result(["connect", c[0], "--example", "linear"], capsys, cwd=tmp_path)
    one_line_error(r, "two checkpoints")
    assert not (tmp_path / "runs").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    r = cli_result(["connect", c[0], "--example", "linear", "--out", "mine"], capsys, cwd=tmp_path)
    one_line_error(r, "two checkpoints")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "x"
