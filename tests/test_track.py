"""``lossmap.track``: sharpness recorded inside a training loop, against dense Hessians,
against ``trajectory.gradient_descent``, resumed from its journal, and its adapters."""

from __future__ import annotations

import copy
import csv
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import lossmap as lm
from lossmap.store import JournalMismatch
from lossmap.track import Tracker
from lossmap.trajectory import gradient_descent


class HalfSquaredError(nn.Module):
    """Cohen et al.'s square loss ``mean_i ½ Σ_c (out_ic − target_ic)²`` (as in
    benchmarks/edge_of_stability.py)."""

    def forward(self, out: Tensor, target: Tensor) -> Tensor:
        return 0.5 * ((out - target) ** 2).sum(dim=-1).mean()


def _digits(n: int) -> tuple[Tensor, Tensor]:
    x, y = lm.examples.digits_data()["train"]
    return x[:n], y[:n]


def _small(seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """An 8-4-3 tanh MLP (51 parameters) on 40 Gaussian samples: dense Hessians are cheap."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    return lm.examples.make_mlp([8, 4, 3], activation="tanh", seed=seed), x, y


def _dense_top_and_trace(land: lm.Landscape) -> tuple[float, float]:
    H = lm.hessian.dense(land).double()
    return float(torch.linalg.eigvalsh(H)[-1]), float(torch.trace(H))


def _train(model: nn.Module, x: Tensor, y: Tensor, tracker: Tracker | None, steps: int, lr: float):  # type: ignore[no-untyped-def]
    """Full-batch GD with cross-entropy, the tracker called before each update; returns
    the parameters at every step."""
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    states = []
    for t in range(steps + 1):
        states.append(copy.deepcopy(model))
        if tracker is not None:
            tracker.step(model, t)
        if t == steps:
            break
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
    return states


# ------------------------------------------------------------------ ground truth
def test_recorded_lambda_max_trace_and_loss_are_those_of_the_dense_hessian() -> None:
    model, x, y = _small()
    n = sum(p.numel() for p in model.parameters())

    def land_fn(m: nn.Module) -> lm.Landscape:
        return lm.Landscape(m, nn.CrossEntropyLoss(), data=(x, y))

    tracker = Tracker(
        land_fn,
        every=4,
        measures=("lambda_max", "trace", "loss"),
        # Hutch++ whose sketch spans all n directions is exact
        options={"lambda_max": {"tol": 1e-8}, "trace": {"matvecs": 3 * n}},
    )
    states = _train(model, x, y, tracker, steps=10, lr=0.5)
    assert tracker.history["step"] == [0, 4, 8]
    for i, t in enumerate(tracker.history["step"]):
        top, tr = _dense_top_and_trace(land_fn(states[t]))
        assert tracker.history["lambda_max"][i] == pytest.approx(top, rel=1e-6)
        assert tracker.history["trace"][i] == pytest.approx(tr, rel=1e-6)
        assert tracker.history["loss"][i] == pytest.approx(
            float(nn.CrossEntropyLoss()(states[t](x), y).detach()), rel=1e-6
        )
    assert tracker.history["lambda_max"][-1] != tracker.history["lambda_max"][0]  # it moved


def test_the_tracker_leaves_training_unchanged() -> None:
    """Training with the tracker gives bit for bit the parameters training without it does."""
    model, x, y = _small()
    twin = copy.deepcopy(model)
    tracker = Tracker(lambda m: lm.Landscape(m, nn.CrossEntropyLoss(), data=(x, y)), every=2)
    _train(model, x, y, tracker, steps=5, lr=0.5)
    _train(twin, x, y, None, steps=5, lr=0.5)
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_sharpness_measures_are_the_library_functions_at_that_step() -> None:
    model, x, y = _small()

    def land_fn(m: nn.Module) -> lm.Landscape:
        return lm.Landscape(m, nn.CrossEntropyLoss(), data=(x, y))

    tracker = Tracker(
        land_fn,
        every=3,
        measures=("sharpness.average", "sharpness.epsilon", "sharpness.adaptive"),
        options={
            "sharpness.average": {"sigma": 0.05, "samples": 8},
            "sharpness.epsilon": {"eps": 1e-3, "restarts": 0, "max_iter": 3},
            "sharpness.adaptive": {"rho": 0.05, "steps": 3, "restarts": 0},
        },
        seed=3,
    )
    states = _train(model, x, y, tracker, steps=3, lr=0.5)
    land = land_fn(states[3])
    avg = lm.sharpness.average(land, 0.05, samples=8, seed=3)
    eps = lm.sharpness.epsilon(land, 1e-3, restarts=0, max_iter=3, seed=3)
    ada = lm.sharpness.adaptive(land, 0.05, steps=3, restarts=0, seed=3)
    assert tracker.history["sharpness.average"][1] == avg.value
    assert tracker.history["sharpness.epsilon"][1] == eps.value
    assert tracker.history["sharpness.adaptive"][1] == ada.value
    assert avg.value != 0 and eps.value > 0 and ada.value > 0


# ------------------------------------------------------------------ edge of stability
def test_plain_gd_loop_reproduces_gradient_descent_series() -> None:
    """The edge-of-stability problem (benchmarks/edge_of_stability.py, fewer images and
    steps): GD written as a plain PyTorch loop with the tracker records the λ_max series
    of ``trajectory.gradient_descent`` on the same run (benchmarks/track_eos.py: the
    full run)."""
    x, y = _digits(100)
    target = nn.functional.one_hot(y, 10).to(x.dtype)
    crit, lr, steps, every = HalfSquaredError(), 2.0 / 9.0, 20, 5
    model = lm.examples.make_mlp([64, 64, 64, 10], activation="tanh", seed=0)
    land = lm.Landscape(model, crit, data=(x, target))
    ref = gradient_descent(land, lr=lr, steps=steps, sharpness_every=every, tol=1e-4)

    tracker = Tracker(lambda m: lm.Landscape(m, crit, data=(x, target)), every=every, lr=lr)
    with torch.no_grad():
        for t in range(steps + 1):
            tracker.step(model, t)
            if t == steps:
                break
            with torch.enable_grad():
                model.zero_grad()
                crit(model(x), target).backward()
            for p in model.parameters():
                p.copy_(p - lr * p.grad)
    assert tracker.history["step"] == ref.sharpness_steps.tolist()
    got = np.asarray(tracker.history["lambda_max"])
    assert np.max(np.abs(got - ref.sharpness) / ref.sharpness) <= 1e-4
    assert got[-1] > got[0] and len(set(got)) == len(got)  # a series that moves


# ------------------------------------------------------------------ journal
def _run(out: Path, stop: int | None = None, seed: int = 0, **kw) -> Tracker:  # type: ignore[no-untyped-def]
    model, x, y = _small(seed)
    calls: list[int] = []

    def land_fn(m: nn.Module) -> lm.Landscape:
        calls.append(1)
        return lm.Landscape(m, nn.CrossEntropyLoss(), data=(x, y))

    tracker = Tracker(land_fn, every=2, measures=("lambda_max", "loss"), out=out, **kw)
    crit, opt = nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.5)
    for t in range(11):
        tracker.step(model, t)
        if t == stop:  # the process dies here: nothing closed
            tracker.land_calls = len(calls)  # type: ignore[attr-defined]
            return tracker
        if t < 10:
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    tracker.land_calls = len(calls)  # type: ignore[attr-defined]
    tracker.close()
    return tracker


def test_a_rerun_resumes_from_the_journal_bit_for_bit(tmp_path: Path) -> None:
    whole = _run(tmp_path / "whole")
    assert whole.land_calls == 6 and whole.restored == 0  # type: ignore[attr-defined]
    again = _run(tmp_path / "whole")
    assert again.land_calls == 0 and again.restored == 6  # type: ignore[attr-defined]
    assert again.history == whole.history
    # killed after step 6: the rerun measures 8 and 10 only, warm-started from the
    # journaled eigenvector, so it records the numbers of an uninterrupted run
    _run(tmp_path / "cut", stop=6)
    resumed = _run(tmp_path / "cut")
    assert resumed.land_calls == 2 and resumed.restored == 4  # type: ignore[attr-defined]
    assert resumed.history == whole.history
    rows = list(csv.reader((tmp_path / "cut" / "history.csv").read_text().splitlines()))
    assert rows[0] == ["step", "lambda_max", "loss"]
    assert [float(r[1]) for r in rows[1:]] == whole.history["lambda_max"]
    assert (tmp_path / "cut" / "track.png").stat().st_size > 0


def test_a_rerun_of_another_training_or_other_settings_is_refused(tmp_path: Path) -> None:
    _run(tmp_path / "a")
    with pytest.raises(ValueError, match="model at step 0 is not the one"):
        _run(tmp_path / "a", seed=1)  # another initialisation: another training
    other = Tracker(lambda m: m, every=2, out=tmp_path / "a")  # type: ignore[arg-type, return-value]
    with pytest.raises(JournalMismatch, match=r"measures: .*pass restart=True"):
        other.step(_small()[0], 0)
    fresh = _run(tmp_path / "a", seed=1, restart=True)
    assert fresh.restored == 0 and fresh.land_calls == 6  # type: ignore[attr-defined]


# ------------------------------------------------------------------ figure, TensorBoard
def test_figure_draws_the_two_over_lr_line_and_tensorboard_gets_the_scalars(
    tmp_path: Path,
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, x, y = _small()
    tracker = Tracker(
        lambda m: lm.Landscape(m, nn.CrossEntropyLoss(), data=(x, y)),
        every=2,
        measures=("lambda_max", "loss"),
        lr=0.5,
        out=tmp_path,
        tensorboard=True,
    )
    _train(model, x, y, tracker, steps=4, lr=0.5)
    fig = tracker.figure()
    ax = fig.axes[0]
    assert ax.get_ylabel() == "λ_max"
    assert [line.get_ydata()[0] for line in ax.lines[1:]] == [4.0]  # 2/η
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), tracker.history["lambda_max"])
    tracker.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    events = acc.Scalars("lossmap/lambda_max")
    assert [e.step for e in events] == [0, 2, 4]
    np.testing.assert_allclose([e.value for e in events], tracker.history["lambda_max"], rtol=1e-6)
    assert [e.step for e in acc.Images("lossmap/track")] == [4]


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, ValueError, "every must be a positive integer"),
        (
            {"measures": ("lambda_max", "sharpest")},
            ValueError,
            "unknown measure 'sharpest'; choose",
        ),
        ({"measures": ()}, ValueError, "measures is empty"),
        ({"measures": [1]}, TypeError, "tuple of names"),
        ({"lr": -1.0}, ValueError, "lr must be a positive number"),
        ({"options": {"trace": {}}}, ValueError, "options for 'trace', which is not among"),
        (
            {"options": {"lambda_max": {"tolerance": 1}}},
            TypeError,
            "no option 'tolerance'; it takes max_iter, tol, warm_start",
        ),
        ({"measures": ("sharpness.adaptive",)}, ValueError, "sharpness.adaptive needs rho"),
        ({"tensorboard": True}, ValueError, "give out= too"),
        ({"tensorboard": "yes"}, TypeError, "SummaryWriter"),
    ],
)
def test_bad_arguments_are_refused_before_training(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Tracker(lambda m: m, **kwargs)


def test_bad_calls_say_what_is_wrong() -> None:
    model, _, _ = _small()
    with pytest.raises(TypeError, match="land_fn must be a function"):
        Tracker(model)  # type: ignore[arg-type]
    tracker = Tracker(lambda m: m, every=2)  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        tracker.step(model, -1)
    assert tracker.step(model, 1) is None
    with pytest.raises(TypeError, match="must return a lossmap.Landscape, got Sequential"):
        tracker.step(model, 2)


# ------------------------------------------------------------------ optional frameworks
def test_import_lossmap_imports_no_optional_framework() -> None:
    code = (
        "import sys, lossmap, lossmap.track; "
        "print(sorted(m for m in ('pytorch_lightning', 'lightning', 'transformers', "
        "'tensorboard', 'torch.utils.tensorboard', 'meshio') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


# ------------------------------------------------------------------ the README's snippets
README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_blocks() -> list[str]:
    """The Python blocks of the README's "Sharpness during training" section, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Sharpness during training\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def _fresh_lambda_max(land: lm.Landscape) -> float:
    """λ_max from a random start at a tight tolerance: the reference."""
    return float(lm.hessian.eigenvalues(land, 1, tol=1e-10, seed=1).values[0])


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The plain-loop block, run once in a fresh folder: its namespace."""
    blocks = _readme_blocks()
    assert len(blocks) == 3
    folder = tmp_path_factory.mktemp("readme")
    namespace: dict[str, Any] = {"__name__": "readme"}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        exec(compile(blocks[0], "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return {"folder": folder, "namespace": namespace, "blocks": blocks}


def _run_block(readme: dict[str, Any], i: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(readme["folder"])
    namespace = dict(readme["namespace"])
    exec(compile(readme["blocks"][i], "README.md", "exec"), namespace)
    return namespace


def _check_series(namespace: dict[str, Any], final: nn.Module, readme: dict[str, Any]) -> None:
    history = namespace["tracker"].history
    assert history["step"] == [0, 10, 20, 30]
    # step 0 is the same initialisation (make_mlp, seed 0) on the same data in every block
    assert history["lambda_max"][0] == readme["namespace"]["tracker"].history["lambda_max"][0]
    reference = _fresh_lambda_max(namespace["land_fn"](final))
    assert history["lambda_max"][-1] == pytest.approx(reference, rel=1e-4)
    assert history["lambda_max"][-1] != history["lambda_max"][0]


def test_readme_plain_loop(readme: dict[str, Any]) -> None:
    ns = readme["namespace"]
    _check_series(ns, ns["model"], readme)
    assert ns["tracker"].history["loss"][-1] < ns["tracker"].history["loss"][0]
    out = readme["folder"] / "runs" / "track"
    assert (out / "history.csv").is_file() and (out / "track.png").is_file()


def test_readme_lightning_callback(readme: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pytorch_lightning", reason="the lightning extra is not installed")
    with warnings.catch_warnings():
        # pytorch_lightning 2.6 calls an isinstance check that torch 2.13 deprecates
        warnings.filterwarnings(
            "ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning
        )
        ns = _run_block(readme, 1, monkeypatch)
    _check_series(ns, ns["module"].net, readme)
    assert (readme["folder"] / "runs" / "track-pl" / "track.png").is_file()  # on_train_end


def test_readme_trainer_callback(readme: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers", reason="the transformers extra is not installed")
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    ns = _run_block(readme, 2, monkeypatch)
    _check_series(ns, ns["hf_model"].net, readme)
    assert (readme["folder"] / "runs" / "track-hf" / "history.csv").is_file()


def test_the_callbacks_refuse_several_processes() -> None:
    """A landscape built inside a process group would wait for the collectives of ranks
    that do not measure: refused at the start, in one line."""
    from types import SimpleNamespace

    tracker = Tracker(lambda m: m, every=1)  # type: ignore[arg-type, return-value]
    pytest.importorskip("pytorch_lightning", reason="the lightning extra is not installed")
    from lossmap.track.lightning import LossmapCallback

    with pytest.raises(RuntimeError, match="does not support training on 2 processes"):
        LossmapCallback(tracker).on_train_start(SimpleNamespace(world_size=2), None)  # type: ignore[arg-type]
    pytest.importorskip("transformers", reason="the transformers extra is not installed")
    from lossmap.track.hf import LossmapTrainerCallback

    with pytest.raises(RuntimeError, match="does not support training on 4 processes"):
        LossmapTrainerCallback(tracker).on_train_begin(SimpleNamespace(world_size=4), None, None)  # type: ignore[arg-type]
    assert tracker.history["step"] == []
