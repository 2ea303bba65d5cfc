"""Shared fixtures: small models and data with known answers."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Under pytest-xdist (`make test` runs two workers on two cores) each worker and the
# commands it starts compute on one thread: two workers of two threads each would
# oversubscribe the cores (OpenMP and OpenBLAS threads busy-wait). Set before torch and
# numpy are imported, so that their thread pools start at that size.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import pytest
import torch
from torch import nn

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


# A subprocess's time limit only guards against a hang: the suite must pass at any
# machine load (a command that takes 5 s on an idle machine took 16x that at load 11).
SUBPROCESS_TIMEOUT = 1800


def run_lossmap(args: list[str], **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """``python -m lossmap ARGS`` in a subprocess, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "lossmap", *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        **kw,
    )


def _installed(module: object) -> bool:
    """Whether a module comes with Python, an installed package or lossmap itself (not
    from a test's folder: a user factory that ``--model`` imported)."""
    file = getattr(module, "__file__", None)
    if not file:
        return True
    roots = (sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[1] / "src"))
    return str(Path(file).resolve()).startswith(tuple(str(Path(r).resolve()) for r in roots))


def run_cli(
    args: list[str],
    capsys: pytest.CaptureFixture[str] | None = None,
    *,
    cwd: str | Path | None = None,
) -> tuple[int, str, str]:
    """``lossmap ARGS`` in this process (faster than a subprocess), run from ``cwd``:
    exit status, stdout, stderr (read from ``capsys``, or captured here without it, as
    in a module-scoped fixture).

    What a command changes in the process for the user's code is undone afterwards, as
    a fresh process would start without it: the import path, and the modules that
    ``--model`` imported from the test's files (so that a later run imports them anew,
    and a test that checks a factory module's import ran cannot see an earlier one)."""
    from lossmap.cli import main

    if capsys is not None:
        capsys.readouterr()  # what the test printed before is not the command's
    out, err = io.StringIO(), io.StringIO()
    path, modules, here = list(sys.path), dict(sys.modules), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.ExitStack() as stack:
            if capsys is None:
                stack.enter_context(contextlib.redirect_stdout(out))
                stack.enter_context(contextlib.redirect_stderr(err))
            # lossmap's warnings reach stderr through logging's last resort in a fresh
            # process; here pytest's log capture holds the root logger, so say them as it
            # would: the message alone, on (this command's) stderr.
            handler = logging.StreamHandler()
            handler.setLevel(logging.WARNING)
            logger = logging.getLogger("lossmap")
            logger.addHandler(handler)
            stack.callback(logger.removeHandler, handler)
            with pytest.raises(SystemExit) as e:
                main([*args])
                raise SystemExit(0)
    finally:
        os.chdir(here)
        sys.path[:] = path
        for name, module in list(sys.modules.items()):
            if modules.get(name) is not module and not _installed(module):
                if name in modules:
                    sys.modules[name] = modules[name]
                else:
                    del sys.modules[name]
    if capsys is not None:
        got = capsys.readouterr()
        out.write(got.out)
        err.write(got.err)
    code = e.value.code
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()


def cli_result(
    args: list[str],
    capsys: pytest.CaptureFixture[str] | None = None,
    *,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """:func:`run_cli` as a :class:`subprocess.CompletedProcess` (for :func:`one_line_error`
    and the checks written for ``run_lossmap``)."""
    code, out, err = run_cli(args, capsys, cwd=cwd)
    return subprocess.CompletedProcess(["lossmap", *args], code, out, err)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``lossmap demo`` run once for the session (an 11 x 11 plane instead of the default
    41 x 41: the same results, quicker): its run folder and what it printed. Tests only
    read it (one that changes files works on a copy).

    It trains two digits MLPs, about half the demo's time; under pytest-xdist the first
    worker to need it runs it and the others wait for it (a lock on a file in the
    session's shared temporary folder), then read the same folder."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the controller's, one per session
    out, printed = shared / "demo" / "run", shared / "demo" / "stdout.txt"
    out.parent.mkdir(exist_ok=True)
    with open(shared / "demo" / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not printed.exists():
            code, stdout, stderr = run_cli(["demo", "--out", str(out), "--steps", "11"])
            assert code == 0, stderr
            printed.write_text(stdout, encoding="utf-8")
    return out, printed.read_text(encoding="utf-8")


@pytest.fixture
def factories(tmp_path, monkeypatch) -> str:  # type: ignore[no-untyped-def]
    """``userfactories.py`` (FACTORIES below) in a temporary folder on the import path."""
    path = tmp_path / "userfactories.py"
    path.write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return str(path)


def batchnorm_checkpoint(path, *, seed: int, scale: float, rows: int | None = None) -> nn.Module:  # type: ignore[no-untyped-def]
    """The ``userfactories:batchnorm`` model with its parameters moved by ``scale``
    (seeded) and running statistics of its own from one train-mode pass over the first
    ``rows`` samples (all by default), saved to ``path``; returned in eval mode. Needs
    the ``factories`` fixture."""
    import userfactories  # type: ignore[import-not-found]

    x, _y = userfactories._data()
    net = userfactories.batchnorm()[0]
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))
        net.train()
        net(x[:rows])
    net.eval()
    torch.save(net.state_dict(), path)
    return net


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str, code: int | None = 2) -> str:
    """The one line a failed command printed on stderr (no traceback), holding ``needles``;
    its exit status is ``code`` (``None``: any non-zero status)."""
    if code is None:
        assert r.returncode != 0, r.stdout
    else:
        assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# User factories for `--model file.py:factory`, shared by the command-line tests.
FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn

    def _data(n=40):
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)

    def _net(width=6):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))

    def good():
        return _net(), nn.CrossEntropyLoss(), _data()

    def other_arch():
        return _net(5), nn.CrossEntropyLoss(), _data()

    def wrong_type():
        return 42

    def raises():
        raise RuntimeError("dataset server unreachable")

    def empty():
        x, y = _data()
        return _net(), nn.CrossEntropyLoss(), (x[:0], y[:0])

    def frozen():
        return _net().requires_grad_(False), nn.CrossEntropyLoss(), _data()

    def batchnorm():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
        return net, nn.CrossEntropyLoss(), _data()

    def labels_out_of_range():
        x, y = _data()
        return _net(), nn.CrossEntropyLoss(), (x, y + 5)

    def nonfinite_loss():
        x, y = _data()
        x[3, 1] = float("inf")
        return _net(), nn.CrossEntropyLoss(), (x, y)
    """
)


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters, buffers and train flags, copied, to check the model is untouched."""
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out.update({f"__training__{n}": torch.tensor(m.training) for n, m in model.named_modules()})
    return out


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = state_of(model)
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), f"{k} changed"


@pytest.fixture
def mlp_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 5, generator=g)
    y = torch.randint(0, 3, (100,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    return model, x, y


@pytest.fixture
def cnn_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 2, 6, 6, generator=g)
    y = torch.randint(0, 4, (40,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 4),
        )
        # Non-trivial running statistics, as after training.
        model.train()
        with torch.no_grad():
            model(x)
        model.eval()
    return model, x, y


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The reference full-batch cross-entropy, computed directly."""
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))
