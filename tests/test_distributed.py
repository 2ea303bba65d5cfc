"""lossmap under torchrun: shares of data, points dealt to ranks, dead ranks, resume.

The multi-process tests launch ``tests/torchrun_job.py`` (an MLP on 203 samples in
float64: a 9 × 7 plane in chunks of 4 points, the top 5 Hessian eigenvalues, a Hutch++
trace and a gradient) with ``torchrun`` on the gloo backend, two ranks of one thread,
and compare with the same job in one process: points mode must give the plane bit for
bit (the same chunks, the same arithmetic), data mode to rounding (its sums are
grouped by share), and every rank must hold the same eigenvalues (Lanczos in lockstep).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SUBPROCESS_TIMEOUT

from lossmap import distributed
from lossmap.data import DataSet, batch_size, slice_batch

JOB = Path(__file__).with_name("torchrun_job.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
KEYS = ("loss", "test_loss", "acc", "eig", "trace", "value", "grad", "mb_grad")


# ----------------------------------------------------------------- shares
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [0, 1, 5, 203, 1000])
def test_share_range_covers_every_sample_once(n: int, world: int) -> None:
    parts = [distributed.share_range(n, r, world) for r in range(world)]
    covered = [i for lo, hi in parts for i in range(lo, hi)]
    assert covered == list(range(n))  # each sample once, in order
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1


def test_share_range_refuses_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="rank"):
        distributed.share_range(10, 2, 2)


def test_held_share_cuts_batches_across_their_borders() -> None:
    # Three held batches of 4, 4, 2 samples (dict batches with a per-batch scalar).
    batches = [
        {"x": torch.arange(a, b), "scale": torch.tensor(1.0)} for a, b in ((0, 4), (4, 8), (8, 10))
    ]
    ds = DataSet("train", batches, None, 10)
    got = [[int(v) for b in ds.share(r, 3) for v in b["x"]] for r in range(3)]
    assert got == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert all(b["scale"].ndim == 0 for r in range(3) for b in ds.share(r, 3))
    assert ds.share(1, 3) is ds.share(1, 3)  # made once: the engine caches per batch object
    assert list(ds.share(0, 1)) == batches


def test_streamed_share_deals_batches() -> None:
    loader = [(torch.full((2, 1), float(i)), torch.zeros(2)) for i in range(5)]
    ds = DataSet("train", None, loader, 10)
    got = [[int(b[0][0, 0]) for b in ds.share(r, 2)] for r in range(2)]
    assert got == [[0, 2, 4], [1, 3]]


def test_slice_batch_keeps_what_has_no_batch_dimension() -> None:
    b = (torch.zeros(6, 3), torch.arange(6), torch.ones(3, 6))
    cut = slice_batch(b, 2, 5)
    assert batch_size(cut) == 3 and cut[1].tolist() == [2, 3, 4]
    assert cut[2].shape == (3, 6)  # leading size 3 ≠ 6: not a per-sample tensor


def test_ranks_refuse_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="points, data"):
        distributed.Ranks(0, 2, "pixels")
    with pytest.raises(ValueError, match="timeout"):
        distributed.init("points", timeout=0)


def test_one_process_shares_nothing() -> None:
    assert distributed.init("data") is None  # no WORLD_SIZE: nothing to join
    assert distributed.detect() is None


# ----------------------------------------------------------------- torchrun
# Ports: a free one is picked, released, and bound again by the job seconds later; in
# between another process (a second pytest-xdist worker's job, any program's outgoing
# connection) may take it. A job whose rendezvous port was taken fails before any rank
# starts, saying EADDRINUSE, and is started again on another port.
PORT_TRIES = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_taken(stderr: str) -> bool:
    return "EADDRINUSE" in stderr or "address already in use" in stderr.lower()


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _torchrun(nproc: int, *job: str, restarts: int = 0) -> subprocess.CompletedProcess[str]:
    for _ in range(PORT_TRIES):
        cmd = [
            *TORCHRUN,
            "--max-restarts",
            str(restarts),
            "--nproc-per-node",
            str(nproc),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{_free_port()}",
            str(JOB),
            *job,
        ]
        r = subprocess.run(
            cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=_env()
        )
        if r.returncode == 0 or not _port_taken(r.stderr):
            break
    return r


def _single(out: Path, *extra: str) -> dict[str, np.ndarray]:
    cmd = [sys.executable, str(JOB), "none", str(out), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    return _single(tmp_path_factory.mktemp("one") / "one.npz")


def _check(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], *, exact: bool) -> None:
    assert str(got["strategy"]) == str(ref["strategy"]) == "vmap"
    for k in KEYS:
        if exact and k in ("loss", "test_loss", "acc"):
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
        else:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("mode", ["points", "data"])
def test_two_ranks_equal_one_process(
    mode: str, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "two.npz"
    r = _torchrun(2, mode, str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    _check(dict(np.load(out)), reference, exact=mode == "points")
    # Lanczos in lockstep: both ranks hold the same eigenvalues, bit for bit.
    np.testing.assert_array_equal(np.load(f"{out}.eig0.npy"), np.load(f"{out}.eig1.npy"))


def test_data_mode_streams_a_loader_in_shares(tmp_path: Path) -> None:
    ref = _single(tmp_path / "one.npz", "--streamed")
    out = tmp_path / "two.npz"
    r = _torchrun(2, "data", str(out), "--streamed")
    assert r.returncode == 0, r.stderr[-3000:]
    _check(dict(np.load(out)), ref, exact=False)


def test_a_dead_rank_stops_the_job_and_a_rerun_resumes(
    reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    journal = str(tmp_path / "journal.sqlite")
    out = tmp_path / "two.npz"
    r = _torchrun(2, "points", str(out), "--journal", journal, "--die-after", "3")
    assert r.returncode != 0 and not out.exists()
    assert "rank      : 1" in r.stderr and "SIGKILL" in r.stderr  # torchrun names the dead rank
    from lossmap.store import Journal

    with Journal(journal, {"job": 1}) as j:
        done = j.progress()["plane"]["done"]
    assert 0 < done < 63  # rank 0 journaled the rounds before the death, and no more
    # Rerun with two ranks: the finished chunks are not recomputed, the file is the same.
    r = _torchrun(2, "points", str(out), "--journal", journal)
    assert r.returncode == 0, r.stderr[-3000:]
    _check(dict(np.load(out)), reference, exact=True)


def test_torchrun_restarts_resume_from_the_journal(
    reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """``torchrun --max-restarts 1``: rank 1 dies, torchrun restarts both ranks, and the
    second attempt resumes from rank 0's journal."""
    journal = str(tmp_path / "journal.sqlite")
    out = tmp_path / "two.npz"
    r = _torchrun(2, "points", str(out), "--journal", journal, "--die-after", "3", restarts=1)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exitcode: -9" in r.stderr  # the first attempt did die
    _check(dict(np.load(out)), reference, exact=True)


def test_resume_with_another_number_of_ranks(
    reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    journal = str(tmp_path / "journal.sqlite")
    out = tmp_path / "two.npz"
    r = _torchrun(2, "points", str(out), "--journal", journal, "--die-after", "2")
    assert r.returncode != 0
    got = _single(tmp_path / "one.npz", "--journal", journal)  # resumed by one process
    _check(got, reference, exact=True)


def _two_processes(
    tmp_path: Path, *job: str, hangs: bool = False, timeout: float = SUBPROCESS_TIMEOUT
) -> tuple[list[int | None], list[str]]:
    """Rank 0 and rank 1 started by hand (no torchrun agent to stop the survivor): their
    exit statuses and stderr once rank 0 has stopped (rank 1 killed then if it ``hangs``)."""
    cmd = [sys.executable, str(JOB), "points", str(tmp_path / "x.npz"), *job]
    for _ in range(PORT_TRIES):
        env = dict(_env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        procs = [
            subprocess.Popen(
                cmd,
                env=dict(env, WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in range(2)
        ]
        try:
            err0 = procs[0].communicate(timeout=timeout)[1]
            taken = _port_taken(err0)
            if hangs or taken:
                procs[1].kill()
            err1 = procs[1].communicate(timeout=SUBPROCESS_TIMEOUT)[1]
        finally:  # a limit passed: nothing left running
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate()
        if not taken:
            break
    return [p.returncode for p in procs], [err0, err1]


def _failure_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if "RankFailure:" in ln]
    assert len(lines) == 1, stderr[-3000:]
    assert "rank 0 of 2" in lines[0] and "run the same command again" in lines[0]
    return lines[0]


def test_the_survivor_of_a_dead_rank_says_so_in_one_line(tmp_path: Path) -> None:
    """Rank 0 meets the dead rank in its next collective and fails at once."""
    codes, errs = _two_processes(tmp_path, "--die-after", "2")
    assert codes[1] == -9 and codes[0] != 0
    assert "20 s" in _failure_line(errs[0])  # the job's timeout, named


def test_a_rank_that_stops_answering_times_out(tmp_path: Path) -> None:
    """Rank 1 hangs (alive, silent): rank 0 gives up after the timeout set, not never
    (the test's own limit, far longer, only guards against a hang)."""
    codes, errs = _two_processes(
        tmp_path, "--hang-after", "2", "--timeout", "4", hangs=True, timeout=600
    )
    assert codes[0] != 0
    assert "4 s" in _failure_line(errs[0])


def test_two_hosts(reference: dict[str, np.ndarray], tmp_path: Path) -> None:
    """Two torchrun launches on localhost, one process each, meeting through c10d."""
    out = tmp_path / "two.npz"

    def launch(node: int, port: int) -> subprocess.Popen[str]:
        cmd = [
            *TORCHRUN,
            "--nnodes",
            "2",
            "--node-rank",
            str(node),
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "lossmap-test",
            str(JOB),
            "data",
            str(out),
        ]
        return subprocess.Popen(
            cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    for _ in range(PORT_TRIES):
        port = _free_port()
        hosts = [launch(0, port), launch(1, port)]
        errs = [h.communicate(timeout=SUBPROCESS_TIMEOUT)[1] for h in hosts]
        if not any(h.returncode and _port_taken(e) for h, e in zip(hosts, errs, strict=True)):
            break
    assert [h.returncode for h in hosts] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    _check(dict(np.load(out)), reference, exact=False)


# ----------------------------------------------------------------- the command
UNSEEDED = """
import os
import torch
from torch import nn

def per_rank():
    torch.manual_seed(int(os.environ.get("RANK", "0")))  # a different θ0 on every rank
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), nn.CrossEntropyLoss(), (x, y)
"""


def _torchrun_cli(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(_env(), PYTHONPATH=os.pathsep.join([str(cwd), _env()["PYTHONPATH"]]))
    for _ in range(PORT_TRIES):
        cmd = [*TORCHRUN, "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d"]
        cmd += ["--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "-m", "lossmap", *args]
        r = subprocess.run(
            cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=env, cwd=cwd
        )
        if r.returncode == 0 or not _port_taken(r.stderr):
            break
    return r


def test_command_under_torchrun_writes_once_what_one_process_writes(
    factories: str, tmp_path: Path
) -> None:
    from lossmap import load

    plane = ["plane", "--model", "userfactories:good", "--steps", "7", "--chunk-size", "5"]
    r = _torchrun_cli(2, "--split", "points", *plane, "--out", "two", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote two/") == 1  # rank 0 talks; rank 1 writes nothing
    one = subprocess.run(
        [sys.executable, "-m", "lossmap", *plane, "--out", "one"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=dict(_env(), PYTHONPATH=os.pathsep.join([str(tmp_path), _env()["PYTHONPATH"]])),
        cwd=tmp_path,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load(tmp_path / "one" / "surface.h5"), load(tmp_path / "two" / "surface.h5")
    for k in a.values:
        np.testing.assert_array_equal(a.values[k], b.values[k], err_msg=k)
    assert b.meta["engine"]["ranks"] == {"world": 2, "mode": "points"}


def test_command_refuses_ranks_that_built_different_models(tmp_path: Path) -> None:
    (tmp_path / "unseeded.py").write_text(UNSEEDED)
    args = ["plane", "--model", "unseeded:per_rank", "--steps", "5", "--out", "x"]
    r = _torchrun_cli(2, *args, cwd=tmp_path)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert lines and "differs between rank 0 and rank(s) [1]" in lines[0], r.stderr[-2000:]
    assert "seed" in lines[0]
