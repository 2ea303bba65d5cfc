"""Trying to break lossmap through the real command, in a subprocess: a run folder is
data that people share, so nothing in it may run code, write outside ``--out``, or lose
journaled work. Each case gets one line on stderr, a non-zero exit where nothing was
done, and leaves the files it must not touch as they were."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# A factory module whose import leaves a marker next to it: the proof that code ran.
INNOCENT = textwrap.dedent(
    """
    from pathlib import Path
    Path(__file__).with_name("MARKER").write_text("imported")

    def f():
        import lossmap
        return lossmap.examples.linear_regression()
    """
)


def _run(args: list[str], **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "lossmap", *args],
        capture_output=True,
        text=True,
        timeout=180,
        **kw,
    )


def _one_line(r: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# ------------------------------------------------------------- rerun: run.json is data
def _run_folder(root: Path, argv: list[str], **extra: object) -> Path:
    """A received run folder whose run.json names ``argv`` and a cwd with innocent.py."""
    there = root / "theirs"
    there.mkdir(exist_ok=True)
    (there / "innocent.py").write_text(INNOCENT)
    run = root / "run1"
    run.mkdir(exist_ok=True)
    engine = {"strategy": "loop", "chunk_size": 4}
    info = {
        "command": argv[0],
        "argv": argv,
        "cwd": str(there),
        "results": {"line": {"meta": {"engine": engine}}},
        "files": [],
        **extra,
    }
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_rerun_never_imports_a_recorded_model(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, ["line", "--model", "innocent:f", "--steps", "3"])
    mine = tmp_path / "mine"
    mine.mkdir()
    r = _run(["rerun", str(run)], cwd=mine)
    _one_line(r, "--model 'innocent:f'", "runs its code", "repeating")
    assert "rerun: lossmap line --model innocent:f" in r.stdout  # shows what it would run
    assert not (tmp_path / "theirs" / "MARKER").exists()
    assert not (run / "rerun").exists()


def test_rerun_runs_a_model_the_user_repeats_from_the_users_cwd(tmp_path: Path) -> None:
    """Repeating --model is consent; the factory is looked up from the user's own folder,
    never from the recorded cwd."""
    run = _run_folder(tmp_path, ["line", "--model", "innocent.py:f", "--steps", "3"])
    mine = tmp_path / "mine"
    mine.mkdir()
    r = _run(["rerun", str(run), "--model", "innocent.py:f"], cwd=mine)
    _one_line(r, "no file innocent.py")  # not found here: the recorded cwd is not used
    assert not (tmp_path / "theirs" / "MARKER").exists()
    (mine / "innocent.py").write_text(INNOCENT)
    r = _run(["rerun", str(run), "--model", "innocent.py:f"], cwd=mine)
    assert r.returncode == 0, r.stderr
    assert (mine / "MARKER").exists() and not (tmp_path / "theirs" / "MARKER").exists()
    again = json.loads((run / "rerun" / "run.json").read_text())
    assert again["argv"][0] == "line"  # the repeated run records its own command


def test_rerun_never_unpickles_without_the_users_trust(tmp_path: Path) -> None:
    import torch

    run = _run_folder(
        tmp_path,
        ["line", "--example", "linear", "--checkpoint", "weights.pt", "--trust-checkpoint"],
    )
    there = tmp_path / "theirs"
    torch.save({"model": _Evil(str(there / "PWNED"))}, there / "weights.pt")
    for cwd in (there, tmp_path):  # even run from the folder holding weights.pt
        r = _run(["rerun", str(run)], cwd=cwd)
        _one_line(r, "--trust-checkpoint", "runs code")
    assert not (there / "PWNED").exists()


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.target, "w"))


MALFORMED = [
    ("not-json", "{argv: nope"),
    ("a-list", "[1, 2]"),
    ("no-argv", json.dumps({"command": "line"})),
    ("argv-not-list", json.dumps({"command": "line", "argv": "line --example linear"})),
    ("argv-ints", json.dumps({"command": "line", "argv": ["line", 5]})),
    ("self-reference", json.dumps({"command": "rerun", "argv": ["rerun", "."], "cwd": "."})),
    ("status", json.dumps({"command": "status", "argv": ["status", "."]})),
    ("unknown-option", json.dumps({"argv": ["line", "--example", "linear", "--evil", "1"]})),
    ("bad-type", json.dumps({"argv": ["line", "--example", "linear", "--steps", "many"]})),
    ("help", json.dumps({"argv": ["line", "--help"]})),
    ("command-mismatch", json.dumps({"command": "plane", "argv": ["line", "--example", "x"]})),
    ("no-engine", json.dumps({"command": "line", "argv": ["line", "--example", "linear"]})),
]


@pytest.mark.parametrize("text", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_rerun_malformed_run_json_is_one_line(tmp_path: Path, text: str) -> None:
    run = tmp_path / "run1"
    run.mkdir()
    (run / "run.json").write_text(text)
    r = _run(["rerun", str(run)], cwd=tmp_path)
    _one_line(r, "run.json")
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]


# ------------------------------------------- every argument checked before the journal
def _rows(out: Path) -> int:
    import sqlite3

    db = sqlite3.connect(f"file:{out / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])
    finally:
        db.close()


@pytest.fixture(scope="module")
def journaled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A line run whose journal holds all its rows (results removed: as if interrupted)."""
    out = tmp_path_factory.mktemp("journaled") / "run"
    r = _run(
        ["line", "--example", "linear", "--steps", "40", "--strategy", "loop", "--out", str(out)]
    )
    assert r.returncode == 0, r.stderr
    for p in out.iterdir():
        if not p.name.startswith("journal.sqlite"):
            p.unlink()
    return out


TYPOS = [
    ("strategy", ["--strategy", "afine"], ["afine", "affine"]),
    ("normalization", ["--normalization", "filters"], ["filters"]),
    ("ignore", ["--ignore", "biases"], ["unknown ignore rule 'biases'"]),
    ("span", ["--span", "1", "-1"], ["inverted"]),
    ("steps", ["--steps", "1"], ["--steps"]),
    ("seed-negative", ["--seed", "-1"], ["--seed"]),
    ("seed-huge", ["--seed", "99999999999999999999"], ["--seed", "9223372036854775807"]),
    ("chunk-size", ["--chunk-size", "0"], ["--chunk-size"]),
    ("device", ["--device", "tpu"], ["tpu"]),
]


@pytest.mark.parametrize(("args", "needles"), [t[1:] for t in TYPOS], ids=[t[0] for t in TYPOS])
def test_a_typo_with_restart_loses_no_journal_row(
    journaled: Path, args: list[str], needles: list[str]
) -> None:
    before = _rows(journaled)
    assert before == 40
    base = ["line", "--example", "linear", "--steps", "40", "--out", str(journaled)]
    r = _run([*base, *args, "--restart"])
    _one_line(r, *needles)
    assert _rows(journaled) == before


def test_strategy_choices_are_the_engines() -> None:
    from lossmap.cli._common import Strategy
    from lossmap.evaluate import STRATEGIES

    assert tuple(s.value for s in Strategy) == STRATEGIES
