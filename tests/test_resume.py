"""Long runs survive: a plane killed mid-grid (SIGKILL, SIGTERM) resumes to the same file.

These start the real command in a subprocess and kill it while it works; the runs that
are not killed (the references, the resumes, status, rerun) run the same ``main`` in
this process (``conftest.cli_result``: ~5 s of imports faster each).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SUBPROCESS_TIMEOUT, cli_result

import lossmap as lm

# A model that takes about 2 s for a 21 x 21 plane (it sleeps 2 ms per forward pass,
# sparing the CPU), so that there is time to kill the command in the middle.
FACTORY = """
import time
import torch
from torch import nn

class Slow(nn.Module):
    def forward(self, x):
        time.sleep(0.002)
        return x

def mlp():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = torch.randint(0, 4, (256,), generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), Slow(), nn.Linear(32, 4))
    return net, nn.CrossEntropyLoss(), {"train": (x, y), "test": (x[:64], y[:64])}
"""
STEPS = 21
POINTS = STEPS * STEPS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("factory")
    (folder / "slowfactory.py").write_text(FACTORY)
    return f"{folder / 'slowfactory.py'}:mlp"


@pytest.fixture(scope="module")
def reference(spec: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the same command."""
    out = tmp_path_factory.mktemp("reference")
    ref = cli_result(_args(spec, out))
    assert ref.returncode == 0, ref.stderr
    return out / "surface.h5"


def _cmd(spec: str, out: Path, *extra: str) -> list[str]:
    """``python -m lossmap`` with :func:`_args`."""
    return [sys.executable, "-m", "lossmap", *_args(spec, out, *extra)]


def _args(spec: str, out: Path, *extra: str) -> list[str]:
    return [
        "plane",
        "--model",
        spec,
        "--steps",
        str(STEPS),
        "--strategy",
        "loop",
        "--chunk-size",
        "8",
        "--out",
        str(out),
        *extra,
    ]


def _done(out: Path) -> int:
    path = out / "journal.sqlite"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        n = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        db.close()
        return int(n)
    except sqlite3.Error:
        return 0


def _kill_midway(cmd: list[str], out: Path, sig: int) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + SUBPROCESS_TIMEOUT
    while _done(out) < 24 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be killed: " + proc.stderr.read()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _values(path: Path) -> dict[str, np.ndarray]:
    r = lm.load(path)
    return r.values  # type: ignore[union-attr]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_plane_resumes_to_the_same_file(
    tmp_path: Path, spec: str, reference: Path, sig: int
) -> None:
    out = tmp_path / "run"

    killed = _kill_midway(_cmd(spec, out), out, sig)
    done = _done(out)
    assert 0 < done < POINTS
    if sig == signal.SIGTERM:  # stops cleanly, says how to resume, writes no result
        assert killed.returncode == 143, killed.stderr
        assert "interrupted" in killed.stderr and "resume" in killed.stderr
        assert "Traceback" not in killed.stderr
    else:
        assert killed.returncode == -signal.SIGKILL
    assert not (out / "surface.h5").exists()

    status = cli_result(["status", str(out)])
    assert status.returncode == 0, status.stderr
    assert f"{done:,}/{POINTS} points" in status.stdout and "interrupted" in status.stdout

    again = cli_result(_args(spec, out))
    assert again.returncode == 0, again.stderr
    assert f"resumed: {done} of {POINTS} points were done" in again.stdout
    meta = lm.load(out / "surface.h5").meta
    assert meta["engine"]["resumed_points"] == done
    a, b = _values(reference), _values(out / "surface.h5")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k  # bit for bit


def test_resume_with_other_arguments_is_refused(tmp_path: Path, spec: str) -> None:
    out = tmp_path / "run"
    killed = _kill_midway(_cmd(spec, out), out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    other = cli_result(_args(spec, out, "--seed", "1"))
    assert other.returncode == 2
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and "seed: 0 -> 1" in lines[0] and "--restart" in lines[0]
    assert "directions:" in lines[0]  # the directions' hash differs too
    done = _done(out)
    fresh = cli_result(_args(spec, out, "--seed", "1", "--restart"))
    assert fresh.returncode == 0, fresh.stderr
    assert "resumed" not in fresh.stdout and done > 0


def test_rerun_reports_a_match(tmp_path: Path, spec: str) -> None:
    out = tmp_path / "run"
    first = cli_result(_args(spec, out))
    assert first.returncode == 0, first.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["argv"][0] == "plane" and run["theta0_sha256"] and run["data_sha256"]["train"]
    assert run["fingerprint"]["steps"] == [STEPS, STEPS]  # per axis (--steps-beta)
    rerun = cli_result(["rerun", str(out), "--model", spec])
    assert rerun.returncode == 0, rerun.stderr
    assert "every value matches bit for bit" in rerun.stdout
    assert (out / "rerun" / "surface.h5").exists()


def _blob_done(out: Path, key: str) -> bool:
    path = out / "journal.sqlite"
    if not path.exists():
        return False
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        n = db.execute("SELECT COUNT(*) FROM blobs WHERE key = ?", (key,)).fetchone()[0]
        db.close()
        return bool(n)
    except sqlite3.Error:
        return False


def test_killed_curve_fit_resumes_to_the_same_files(tmp_path: Path, spec: str) -> None:
    """`lossmap connect` killed during the curve fit (after its first epochs were
    journaled) and run again writes the files an uninterrupted run writes, bit for bit:
    the straight path, the curve and the barriers in run.json."""

    import torch

    # Two endpoints: the factory's model at two sets of weights.
    ckpts = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        sd = {
            "0.weight": torch.randn(32, 16, generator=g) * 0.3,
            "0.bias": torch.zeros(32),
            "3.weight": torch.randn(4, 32, generator=g) * 0.3,
            "3.bias": torch.zeros(4),
        }
        ckpts.append(tmp_path / f"end{seed}.pt")
        torch.save(sd, ckpts[-1])

    def args(out: Path) -> list[str]:
        return [
            *("connect", *map(str, ckpts), "--model", spec),
            *("--epochs", "30", "--batch-size", "16", "--steps", "11", "--out", str(out)),
        ]

    ref_out, out = tmp_path / "reference", tmp_path / "run"
    ref = cli_result(args(ref_out))
    assert ref.returncode == 0, ref.stderr

    cmd = [sys.executable, "-m", "lossmap", *args(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + SUBPROCESS_TIMEOUT
    while not _blob_done(out, "curve/epoch/1") and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be killed: " + proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert not (out / "curve.h5").exists()

    again = cli_result(args(out))
    assert again.returncode == 0, again.stderr
    assert not list(out.glob("*.tmp*")), list(out.glob("*.tmp*"))
    for name in ("path.h5", "curve.h5"):
        a, b = _values(ref_out / name), _values(out / name)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].tobytes() == b[k].tobytes(), f"{name} {k}"  # bit for bit
    runs = [json.loads((o / "run.json").read_text()) for o in (ref_out, out)]
    assert runs[0]["barrier_line"] == runs[1]["barrier_line"]
    assert runs[0]["barrier_curve"] == runs[1]["barrier_curve"]
