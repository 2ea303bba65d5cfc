"""Bad input, through the real command: non-zero exit, one clear line on stderr naming
the problem and the fix, no traceback, nothing half-written, and the run folder's earlier
results untouched. Then the library's argument checks, fuzzed.

The command runs in this process (``conftest.cli_result``: the same ``main``, its exit
status and output, ~5 s of imports faster than ``python -m lossmap``); a full disk, which
needs a file-size limit on the process, runs in a subprocess."""

from __future__ import annotations

import os
import pickle
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FACTORIES, cli_result, one_line_error, run_lossmap
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

import lossmap as lm


# A checkpoint that, unpickled, would create a file: the proof that code ran.
class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.target, "w"))


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Factories, checkpoints of every kind, and a run folder with earlier results."""
    root = tmp_path_factory.mktemp("bad")
    (root / "userfactories.py").write_text(FACTORIES)
    spec = str(root / "userfactories.py")
    sys.path.insert(0, str(root))
    try:
        import userfactories  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(root))
    good = userfactories.good()[0].state_dict()
    torch.save(good, root / "good.pt")
    data = (root / "good.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04" + os.urandom(300))
    torch.save(userfactories.other_arch()[0].state_dict(), root / "other.pt")
    nan = {k: v.clone() for k, v in good.items()}
    nan["2.weight"][0, 0] = float("nan")
    torch.save(nan, root / "nan.pt")
    with open(root / "evil_raw.pt", "wb") as f:  # a plain pickle
        pickle.dump(_Evil(str(root / "PWNED")), f)
    torch.save({"model": _Evil(str(root / "PWNED"))}, root / "evil.pt")  # torch's format
    out = root / "run"
    done = cli_result(["line", "--model", f"{spec}:good", "--steps", "5", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return {"root": root, "spec": Path(spec), "out": out}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _assert_clean_failure(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    return one_line_error(r, *needles, code=None)


CASES = [
    # (id, args after "line --out RUN", needles in the one line)
    ("missing-checkpoint", ["--checkpoint", "{root}/nope.pt"], ["no file", "nope.pt"]),
    ("truncated-checkpoint", ["--checkpoint", "{root}/truncated.pt"], ["truncated or corrupt"]),
    ("corrupt-checkpoint", ["--checkpoint", "{root}/corrupt.pt"], ["truncated or corrupt"]),
    (
        "wrong-architecture",
        ["--checkpoint", "{root}/other.pt"],
        ["does not fit the model", "0.weight: (5, 4) vs expected (6, 4)", "2.weight"],
    ),
    ("nan-checkpoint", ["--checkpoint", "{root}/nan.pt"], ["non-finite", "2.weight"]),
    ("unknown-module", ["--model", "no_such_pkg.mod:f"], ["cannot import", "PYTHONPATH"]),
    ("unknown-attribute", ["--model", "{spec}:nope"], ["has no attribute 'nope'"]),
    ("factory-raises", ["--model", "{spec}:raises"], ["raised RuntimeError", "unreachable"]),
    ("factory-wrong-type", ["--model", "{spec}:wrong_type"], ["returned int", "Landscape"]),
    ("empty-data", ["--model", "{spec}:empty"], ["empty"]),
    (
        "labels-out-of-range",
        ["--model", "{spec}:labels_out_of_range"],
        ["at θ0 failed", "labels in [0, classes)"],
    ),
    ("nonfinite-loss", ["--model", "{spec}:nonfinite_loss"], ["at θ0 is nan", "data"]),
    ("steps-below-2", ["--steps", "1"], ["--steps", "2"]),
    ("steps-absurd", ["--steps", "1000000000000"], ["points", "about", "fewer --steps"]),
    ("inverted-span", ["--span", "1", "-1"], ["empty or inverted", "lo < hi"]),
    ("unknown-normalization", ["--normalization", "filters"], ["filters", "filter"]),
    ("unknown-ignore", ["--ignore", "biases"], ["unknown ignore rule 'biases'"]),
    ("conflicting-model-example", ["--example", "linear"], ["exactly one of --model"]),
    ("cuda-without-gpu", ["--device", "cuda"], ["--device cpu"]),
    (
        "malicious-checkpoint",
        ["--checkpoint", "{root}/evil.pt"],
        ["pickled Python objects", "io.open", "--trust-checkpoint"],
    ),
    (
        "malicious-raw-pickle",
        ["--checkpoint", "{root}/evil_raw.pt"],
        ["plain pickle", "could run code", "--trust-checkpoint"],
    ),
]


@pytest.mark.parametrize(("args", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(
    world: dict[str, Path], args: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = world["out"]
    before = _snapshot(out)
    spec = str(world["spec"])
    filled = [a.format(root=world["root"], spec=spec) for a in args]
    if ("--model" not in filled and "--example" not in filled) or "--example" in filled:
        filled = ["--model", f"{spec}:good", *filled]
    if "--steps" not in filled:
        filled += ["--steps", "5"]
    r = cli_result(["line", *filled, "--out", str(out)], capsys)
    _assert_clean_failure(r, *needles)
    assert _snapshot(out) == before  # earlier results untouched, nothing new or partial
    assert not (world["root"] / "PWNED").exists()  # the malicious pickle never ran


def test_out_not_writable(world: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_text("x")
    args = ["line", "--model", f"{world['spec']}:good", "--out", str(tmp_path / "file" / "sub")]
    r = cli_result(args, capsys)
    _assert_clean_failure(r, "--out", "writable")


def test_disk_full_during_write(world: dict[str, Path], tmp_path: Path) -> None:
    """A write that fails half-way (the file-size limit stands in for a full disk) is
    reported in one line, and leaves the earlier results and no partial files behind."""
    out = tmp_path / "run"
    spec = f"{world['spec']}:good"
    first = cli_result(["plane", "--model", spec, "--steps", "5", "--out", str(out)])
    assert first.returncode == 0, first.stderr
    before = _snapshot(out)

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    r = run_lossmap(
        ["plane", "--model", spec, "--steps", "60", "--restart", "--out", str(out)],
        preexec_fn=small_files,
    )
    line = _assert_clean_failure(r, "could not write", "free space or choose another --out")
    assert "File too large" in line or "disk" in line.lower()
    after = _snapshot(out)
    for name, data in before.items():
        if name.startswith("journal.sqlite"):
            continue  # --restart discarded the old journal: that was asked for
        assert after.get(name) == data, name
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_trust_checkpoint_loads_a_pickled_module(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--trust-checkpoint is the explicit way to load a whole pickled module."""
    sys.path.insert(0, str(world["root"]))
    try:
        import userfactories  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(world["root"]))
    net = userfactories.good()[0]
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)
    torch.save({"epoch": 3, "model": net}, tmp_path / "module.pt")
    spec = f"{world['spec']}:good"
    base = ["line", "--model", spec, "--steps", "3", "--checkpoint", str(tmp_path / "module.pt")]
    refused = cli_result([*base, "--out", str(tmp_path / "a")], capsys)
    _assert_clean_failure(refused, "--trust-checkpoint")
    ok = cli_result([*base, "--trust-checkpoint", "--out", str(tmp_path / "b")], capsys)
    assert ok.returncode == 0, ok.stderr
    assert "full unpickling" in ok.stderr
    theta0 = lm.load(tmp_path / "b" / "line.h5").meta["theta0_norm"]
    expected = float(torch.cat([p.detach().reshape(-1) for p in net.parameters()]).norm())
    assert theta0 == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ library fuzz
def _tiny() -> lm.Landscape:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, generator=g), torch.randint(0, 2, (12,), generator=g)
    torch.manual_seed(0)
    return lm.Landscape(
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)),
        nn.CrossEntropyLoss(),
        data=(x, y),
    )


LAND = _tiny()


def _fails(call) -> bool:
    """Whether ``call()`` raises ValueError/TypeError (anything else propagates)."""
    try:
        call()
    except (ValueError, TypeError):
        return True
    return False


spans = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)),
    st.lists(st.floats(-5, 5), max_size=4),
    st.text(max_size=3),
    st.none(),
)
steps = st.one_of(
    st.integers(-3, 7),
    st.tuples(st.integers(-1, 5), st.integers(-1, 5)),
    st.floats(-1, 5),
    st.text(max_size=2),
    st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(span=spans, steps=steps)
@example(span=8.98846567431158e307, steps=3)  # finite ends, infinite width: overflowed linspace
def test_line_arguments_fuzzed(span: object, steps: object) -> None:
    """Any span/steps either works (finite values on the asked grid) or raises
    ValueError/TypeError with a message; never another exception, never a bad grid."""
    d = lm.directions.random(LAND, 1, seed=0)[0]
    try:
        c = lm.line(LAND, d, span=span, steps=steps, strategy="loop")  # type: ignore[arg-type]
    except (ValueError, TypeError) as e:
        # The message names the argument at fault: each is tried with the other valid.
        culprits = [
            name
            for name, kw in (("span", {"span": span, "steps": 3}), ("steps", {"steps": steps}))
            if _fails(lambda kw=kw: lm.line(LAND, d, strategy="loop", **kw))
        ]
        assert culprits, f"neither argument fails alone, yet together: {e}"
        assert any(name in str(e) for name in culprits), (culprits, str(e))
        return
    assert isinstance(steps, int) and steps >= 2 and c["loss"].shape == (steps,)
    assert c.alpha[0] < c.alpha[-1]


@settings(max_examples=100, deadline=None)
@given(
    normalization=st.one_of(st.sampled_from(["filter", "layer", "model", "none"]), st.text()),
    ignore=st.lists(st.one_of(st.sampled_from(["bias", "norm"]), st.text(max_size=5)), max_size=3),
    n=st.integers(-1, 4),
)
def test_random_directions_arguments_fuzzed(normalization: str, ignore: list[str], n: int) -> None:
    try:
        ds = lm.directions.random(LAND, n, normalization=normalization, ignore=tuple(ignore))
    except (ValueError, TypeError) as e:
        # The message names the argument at fault (or quotes the offending value).
        trials = {
            "normalization": {"normalization": normalization},
            "ignore": {"ignore": tuple(ignore)},
            "n": {"n": n},
        }
        culprits = [
            name
            for name, kw in trials.items()
            if _fails(lambda kw=kw: lm.directions.random(LAND, **{"n": 1, **kw}))
        ]
        assert culprits, f"no argument fails alone, yet together: {e}"
        named = {
            "normalization": ["normalization"],
            "ignore": ["ignore", *(repr(r) for r in ignore)],
            "n": ["n must", "n=", "number of directions"],
        }
        assert any(w in str(e) for c in culprits for w in named[c]), (culprits, str(e))
        return
    assert len(ds) == n and n >= 1
    for d in ds:
        assert d.keys() == LAND.point().keys()
