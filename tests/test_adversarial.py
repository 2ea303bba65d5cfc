"""Trying to break lossmap through the real command: a run folder is data that people
share, so nothing in it may run code, write outside ``--out``, or lose journaled work.
Each case gets one line on stderr, a non-zero exit where nothing was done, and leaves
the files it must not touch as they were.

The command runs in this process (``conftest.cli_result``: the same ``main``, its exit
status and output, from the same working directory, with the modules a ``--model``
imported forgotten after each run), except where the process is the point: a command
SIGKILLed during its final write, and crafted result files read under a memory limit
(all in one subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import SUBPROCESS_TIMEOUT, cli_result, one_line_error, run_lossmap

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


_run = cli_result


_one_line = one_line_error


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


def test_rerun_never_imports_a_recorded_model(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = _run_folder(tmp_path, ["line", "--model", "innocent:f", "--steps", "3"])
    mine = tmp_path / "mine"
    mine.mkdir()
    r = _run(["rerun", str(run)], capsys, cwd=mine)
    _one_line(r, "--model 'innocent:f'", "runs its code", "repeating")
    assert "rerun: lossmap line --model innocent:f" in r.stdout  # shows what it would run
    assert not (tmp_path / "theirs" / "MARKER").exists()
    assert not (run / "rerun").exists()


def test_rerun_runs_a_model_the_user_repeats_from_the_users_cwd(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Repeating --model is consent; the factory is looked up from the user's own folder,
    never from the recorded cwd."""
    run = _run_folder(tmp_path, ["line", "--model", "innocent.py:f", "--steps", "3"])
    mine = tmp_path / "mine"
    mine.mkdir()
    r = _run(["rerun", str(run), "--model", "innocent.py:f"], capsys, cwd=mine)
    _one_line(r, "no file innocent.py")  # not found here: the recorded cwd is not used
    assert not (tmp_path / "theirs" / "MARKER").exists()
    (mine / "innocent.py").write_text(INNOCENT)
    r = _run(["rerun", str(run), "--model", "innocent.py:f"], capsys, cwd=mine)
    assert r.returncode == 0, r.stderr
    assert (mine / "MARKER").exists() and not (tmp_path / "theirs" / "MARKER").exists()
    again = json.loads((run / "rerun" / "run.json").read_text())
    assert again["argv"][0] == "line"  # the repeated run records its own command


def test_rerun_never_unpickles_without_the_users_trust(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import torch

    run = _run_folder(
        tmp_path,
        ["line", "--example", "linear", "--checkpoint", "weights.pt", "--trust-checkpoint"],
    )
    there = tmp_path / "theirs"
    torch.save({"model": _Evil(str(there / "PWNED"))}, there / "weights.pt")
    for cwd in (there, tmp_path):  # even run from the folder holding weights.pt
        r = _run(["rerun", str(run)], capsys, cwd=cwd)
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
def test_rerun_malformed_run_json_is_one_line(tmp_path: Path, text: str, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run1"
    run.mkdir()
    (run / "run.json").write_text(text)
    r = _run(["rerun", str(run)], capsys, cwd=tmp_path)
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
    journaled: Path, args: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = _rows(journaled)
    assert before == 40
    base = ["line", "--example", "linear", "--steps", "40", "--out", str(journaled)]
    r = _run([*base, *args, "--restart"], capsys)
    _one_line(r, *needles)
    assert _rows(journaled) == before


def test_strategy_choices_are_the_engines() -> None:
    from lossmap.cli._common import Strategy
    from lossmap.evaluate import STRATEGIES

    assert tuple(s.value for s in Strategy) == STRATEGIES


# ------------------------------------------------ killed during the final write, status
# Loaded by every Python started with this folder first on PYTHONPATH: SIGKILLs the
# process at the moment a result named in LOSSMAP_TEST_KILL_AT would be renamed into
# place (its temporary file fully written), as a kill during the final write would.
SITECUSTOMIZE = textwrap.dedent(
    """
    import os, signal
    _real = os.replace
    _at = os.environ.get("LOSSMAP_TEST_KILL_AT", "")

    def _replace(src, dst, *a, **kw):
        if _at and os.fspath(dst).endswith(_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return _real(src, dst, *a, **kw)

    os.replace = _replace
    """
)


def _killed_at(tmp_path: Path, name: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(hook), "LOSSMAP_TEST_KILL_AT": name}
    r = run_lossmap(args, env=env)
    assert r.returncode == -9, r.stderr
    return r


def _status(out: Path) -> str:
    r = _run(["status", str(out)])  # captured here: no capsys needed
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_killed_during_the_final_write_is_not_complete(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = ["plane", "--example", "linear", "--steps", "6", "--strategy", "loop", "--out", str(out)]
    _killed_at(tmp_path, "/surface.h5", cmd)
    names = sorted(p.name for p in out.iterdir())
    assert not (out / "surface.h5").exists() and not (out / "run.json").exists()
    assert [n for n in names if n.startswith("surface.h5.") and n.endswith(".tmp.h5")]
    s = _status(out)
    assert "plane run, interrupted" in s and "results were not all written" in s
    assert "re-run the same command" in s
    again = _run(cmd)
    assert again.returncode == 0, again.stderr
    assert "plane run, complete" in _status(out)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # the resume cleaned up


def test_restart_killed_while_writing_figures_is_not_complete(tmp_path: Path) -> None:
    """surface.h5 of seed 1 next to run.json and figures of seed 0: not complete."""
    out = tmp_path / "run"
    cmd = ["plane", "--example", "linear", "--steps", "6", "--strategy", "loop", "--out", str(out)]
    assert _run(cmd).returncode == 0
    assert "plane run, complete" in _status(out)
    _killed_at(tmp_path, ".png", [*cmd, "--seed", "1", "--restart"])
    assert "plane run, interrupted" in _status(out)


def test_status_of_a_finished_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = _run(["line", "--example", "linear", "--steps", "5", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert "line run, complete" in _status(out)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert after == before


# ------------------------------------------------------------ the journal is not a link
def _other_apps_db(path: Path) -> bytes:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE contacts (name TEXT)")
    db.execute("INSERT INTO contacts VALUES ('ada')")
    db.commit()
    db.close()
    return path.read_bytes()


@pytest.mark.parametrize("target", ["sqlite", "empty"])
def test_a_symlinked_journal_is_refused_and_its_target_untouched(
    tmp_path: Path, target: str
) -> None:
    other = tmp_path / "other.db"
    data = _other_apps_db(other) if target == "sqlite" else b""
    other.write_bytes(data)
    out = tmp_path / "runs" / "x"
    out.mkdir(parents=True)
    (out / "journal.sqlite").symlink_to(other)
    r = _run(["line", "--example", "linear", "--steps", "5", "--out", str(out)])
    _one_line(r, "journal.sqlite", "symbolic link")
    assert other.read_bytes() == data
    r = _run(["status", str(out)])
    _one_line(r, "symbolic link")
    assert other.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db", "runs"]


def test_a_symlinked_wal_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other-wal"
    other.write_bytes(b"")
    out = tmp_path / "x"
    out.mkdir()
    (out / "journal.sqlite-wal").symlink_to(other)
    r = _run(["line", "--example", "linear", "--steps", "5", "--out", str(out)])
    _one_line(r, "journal.sqlite-wal", "symbolic link")
    assert other.read_bytes() == b""


# ------------------------------------------------------- a damaged journal is not trusted
def test_damaged_journal_rows_are_recomputed(tmp_path: Path) -> None:
    import sqlite3

    cmd = ["line", "--example", "linear", "--steps", "401", "--strategy", "loop"]
    ref = tmp_path / "ref"
    assert _run([*cmd, "--out", str(ref)]).returncode == 0
    out = tmp_path / "run"
    assert _run([*cmd, "--out", str(out)]).returncode == 0
    db = sqlite3.connect(out / "journal.sqlite")
    for i in (3, 50, 160, 161, 399):  # one byte flipped in five stored rows
        (data,) = db.execute("SELECT data FROM rows WHERE idx = ?", (i,)).fetchone()
        db.execute(
            "UPDATE rows SET data = ? WHERE idx = ?",
            (data[:5] + bytes([data[5] ^ 4]) + data[6:], i),
        )
    db.commit()
    db.close()
    (out / "line.csv").unlink()
    r = _run([*cmd, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert "journal.sqlite" in r.stderr and "5 rows" in r.stderr and "damaged" in r.stderr
    assert "resumed: 396 of 401 points" in r.stdout
    assert (out / "line.csv").read_bytes() == (ref / "line.csv").read_bytes()


# ------------------------------------------------------------------------ checkpoints
class _System:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch pwned",))


def test_malicious_os_system_checkpoint_points_to_trust(tmp_path: Path) -> None:
    """torch 2.13 words this refusal 'unsupported GLOBAL posix.system ... is blocked'."""
    import torch

    torch.save({"model": _System()}, tmp_path / "evil.pt")
    r = _run(["line", "--example", "linear", "--checkpoint", "evil.pt", "--out", "o"], cwd=tmp_path)
    _one_line(r, "pickled Python objects", "system", "--trust-checkpoint")
    assert not (tmp_path / "pwned").exists()


def test_integer_checkpoint_into_a_float_model_is_refused(tmp_path: Path) -> None:
    import torch

    torch.save({"weight": torch.tensor([[3]]), "bias": torch.tensor([2])}, tmp_path / "int.pt")
    torch.save(  # float64 into float32 (or the same) only rounds: allowed
        {"weight": torch.tensor([[3.0]]), "bias": torch.tensor([2.0])}, tmp_path / "f32.pt"
    )
    base = ["line", "--example", "linear", "--steps", "3", "--checkpoint"]
    r = _run([*base, str(tmp_path / "int.pt"), "--out", str(tmp_path / "a")])
    _one_line(r, "weight is int64", "model's is float64", "lose")
    assert not (tmp_path / "a" / "line.h5").exists()
    r = _run([*base, str(tmp_path / "f32.pt"), "--out", str(tmp_path / "b")])
    assert r.returncode == 0, r.stderr


def test_lossy_dtype_rules() -> None:
    import torch

    from lossmap.cli._load import _lossy

    lossy = [(torch.int64, torch.float32), (torch.bool, torch.float64), (torch.uint8, torch.half)]
    lossy += [(torch.complex64, torch.float32), (torch.float32, torch.int64)]
    lossy += [(torch.int64, torch.bool)]
    fine = [(torch.float64, torch.float32), (torch.float16, torch.float32)]
    fine += [(torch.int32, torch.int64), (torch.float32, torch.complex64)]
    fine += [(torch.bool, torch.bool)]
    assert all(_lossy(a, b) for a, b in lossy)
    assert not any(_lossy(a, b) for a, b in fine)


def test_safetensors_checkpoint_loads(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    import torch

    import lossmap as lm

    st.save_file(
        {"weight": torch.tensor([[2.5]], dtype=torch.float64), "bias": torch.tensor([1.0])},
        str(tmp_path / "model.safetensors"),
    )
    out = tmp_path / "o"
    ckpt = tmp_path / "model.safetensors"
    r = _run(
        [
            "line",
            "--example",
            "linear",
            "--steps",
            "3",
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
        ]
    )
    assert r.returncode == 0, r.stderr
    assert lm.load(out / "line.h5").meta["theta0_norm"] == pytest.approx((2.5**2 + 1) ** 0.5)
    (tmp_path / "cut.safetensors").write_bytes(ckpt.read_bytes()[:-4])
    r = _run(
        ["line", "--example", "linear", "--checkpoint", str(tmp_path / "cut.safetensors")],
        cwd=tmp_path,
    )
    _one_line(r, "not a readable safetensors file", "cut.safetensors")


def test_safetensors_without_the_package_says_what_to_install(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # As in a Python without the package: importing it raises ImportError.
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    # the safetensors layout: 8-byte header length, then a JSON header
    header = b'{"weight":{"dtype":"F64","shape":[1,1],"data_offsets":[0,8]}}'
    data = len(header).to_bytes(8, "little") + header + bytes(8)
    (tmp_path / "model.bin").write_bytes(data)  # detected by its layout, not its name
    r = _run(
        ["line", "--example", "linear", "--checkpoint", str(tmp_path / "model.bin")], cwd=tmp_path
    )
    _one_line(r, "safetensors file", "pip install safetensors")


def test_a_factory_calling_sys_exit_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "quitter.py").write_text(
        "import sys\n\ndef f():\n    sys.exit(0)\n\ndef g():\n    raise SystemExit('bye')\n"
    )
    (tmp_path / "quits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    for spec, needle in (
        ("quitter.py:f", "called sys.exit(0)"),
        ("quitter.py:g", "called sys.exit('bye')"),
        ("quits_on_import.py:f", "SystemExit"),
    ):
        out = tmp_path / "o"
        r = _run(["line", "--model", spec, "--out", str(out)], cwd=tmp_path)
        _one_line(r, needle)
        assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------- a crafted result file
def _limit_memory() -> None:
    import resource

    # A regression fails (MemoryError) instead of eating the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def _crafted(path: Path, kind: str, coords: dict, values: dict, group: str = "values") -> Path:  # type: ignore[type-arg]
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        f.attrs["lossmap_kind"] = kind
        f.attrs["lossmap_format"] = 1
        f.attrs["meta"] = "{}"
        for gname, arrays in (("coords", coords), (group, values)):
            if not arrays:
                continue
            g = f.create_group(gname)
            for k, v in arrays.items():
                if isinstance(v, tuple):  # a shape: a gzip'd dataset of zeros, tiny on disk
                    g.create_dataset(k, shape=v, dtype="f8", compression="gzip", fillvalue=0)
                else:
                    g.create_dataset(k, data=np.asarray(v))
            f.attrs[f"{gname}_order"] = json.dumps(list(arrays))
        if kind == "spectrum":
            f.attrs["sigma"], f.attrs["matvecs"] = 0.1, 10
    return path


CRAFTED = [
    ("huge-values", "surface", {"alpha": [0, 1], "beta": [0, 1]}, {"loss": (50000, 50000)}),
    ("huge-axis", "curve", {"alpha": (10**10,)}, {"loss": (10**10,)}),
    ("huge-grid", "surface", {"alpha": (10**5,), "beta": (10**5,)}, {"loss": (10**5, 10**5)}),
    ("2-d-axis", "curve", {"alpha": (3, 3)}, {"loss": (3, 3)}),
    ("missing-values", "curve", {"alpha": [0, 1]}, {}),
]


# Each command in the same fresh process, its exit status and output apart (as JSON).
_COMMANDS_IN_ONE_PROCESS = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from lossmap.cli import main

    done = {}
    for name, args in json.loads(sys.argv[1]).items():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        done[name] = [code, out.getvalue(), err.getvalue()]
    print(json.dumps(done))
    """
)


@pytest.fixture(scope="module")
def crafted_plots(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """``lossmap plot`` of each crafted file (CRAFTED, and a spectrum whose density is
    far longer than its grid), each in its own folder, all in one subprocess under the
    2 GiB memory limit (one Python start instead of six): each folder and its command's
    exit status and output."""
    root = tmp_path_factory.mktemp("crafted")
    jobs = {}
    for name, kind, coords, values in CRAFTED:
        (root / name).mkdir()
        path = _crafted(root / name / "surface.h5", kind, coords, values)
        jobs[name] = ["plot", str(path), "--out", str(root / name / "figs")]
    arrays = {"grid": [0.0, 1.0], "density": (10**9,), "nodes": [[1.0]], "weights": [[1.0]]}
    (root / "spectrum").mkdir()
    path = _crafted(root / "spectrum" / "spectrum.h5", "spectrum", {}, arrays, group="arrays")
    jobs["spectrum"] = ["plot", str(path)]
    r = subprocess.run(
        [sys.executable, "-c", _COMMANDS_IN_ONE_PROCESS, json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        preexec_fn=_limit_memory,
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout.splitlines()[-1])
    return {
        name: (root / name, subprocess.CompletedProcess(args, *done[name]))
        for name, args in jobs.items()
    }


@pytest.mark.parametrize("name", [c[0] for c in CRAFTED])
def test_crafted_result_file_is_refused_before_reading(
    crafted_plots: dict[str, tuple[Path, subprocess.CompletedProcess[str]]], name: str
) -> None:
    folder, r = crafted_plots[name]
    assert (folder / "surface.h5").stat().st_size < 100_000
    _one_line(r, "surface.h5", "not a valid lossmap result")
    assert not (folder / "figs").exists()


def test_crafted_spectrum_is_refused_before_reading(
    crafted_plots: dict[str, tuple[Path, subprocess.CompletedProcess[str]]],
) -> None:
    _folder, r = crafted_plots["spectrum"]
    _one_line(r, "density", "does not match its grid")


def test_result_linking_to_another_file_is_refused(tmp_path: Path) -> None:
    import h5py

    path = _crafted(tmp_path / "line.h5", "curve", {"alpha": [0.0, 1.0]}, {"loss": [1.0, 2.0]})
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(16))
    with h5py.File(path, "a") as f:
        del f["values/loss"]
        f["values"].create_dataset("loss", shape=(2,), dtype="f8", external=[(str(secret), 0, 16)])
    r = _run(["plot", str(path)])
    _one_line(r, "another file")


# ------------------------------------------------------------- a full disk: one line
def test_full_disk_names_the_file_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """A full disk while a result is written: one line naming the file (CSV writes
    raise without a file name; HDF5 explains over several lines)."""
    import csv
    import errno

    import h5py

    from lossmap.cli import main

    def no_space(*a, **kw):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    def hdf5_no_space(*a, **kw):  # type: ignore[no-untyped-def]
        raise OSError(
            errno.ENOSPC,
            "Can't synchronously write data (file write failed)\n  errno = 28, error "
            "message = 'No space left on device'\n  buf = 0x55d0, total write size = 800",
        )

    for target, name in ((csv, "writer"), (h5py.Group, "create_dataset")):
        out = tmp_path / name
        with monkeypatch.context() as m:
            m.setattr(target, name, no_space if target is csv else hdf5_no_space)
            with pytest.raises(SystemExit) as e:
                main(["line", "--example", "linear", "--steps", "3", "--out", str(out)])
        assert e.value.code == 1
        err = capsys.readouterr().err
        line = _one_line(subprocess.CompletedProcess([], 1, "", err), code=1)
        assert "No space left on device" in line and "free space" in line
        assert str(out / "line.") in line  # line.h5 or line.csv: the file being written
        assert not [p for p in out.iterdir() if ".tmp" in p.name]
