"""The command line as a person types it (issue #17): BatchNorm paths that use each
point's own statistics by default, the notes a command owes its user (a random
network, θ0 off the grid), spans and steps per axis, and what `status` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import batchnorm_checkpoint, run_cli
from torch import nn

import lossmap as lm


def _fresh_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The loss after BatchNorm statistics from one pass over all of ``x``."""
    import copy

    m = copy.deepcopy(net)
    for layer in m.modules():
        if isinstance(layer, nn.BatchNorm1d):
            layer.reset_running_stats()
            layer.momentum = None
    with torch.no_grad():
        m.train()
        m(x)
        m.eval()
        return float(nn.functional.cross_entropy(m(x), y))


def test_connect_recomputes_batchnorm_statistics_by_default(
    tmp_path: Path, factories: str, capsys
) -> None:
    """Issue #17, item 4: without any flag, endpoint b of the straight path scores b's
    loss with statistics of its own (recomputed), not with a's; --no-reset-bn keeps a's
    statistics but warns in one line and says so beside the barrier."""
    import userfactories  # type: ignore[import-not-found]

    x, y = userfactories._data()
    nets = [
        batchnorm_checkpoint(tmp_path / f"bn{i}.pt", seed=i, scale=0.5, rows=20) for i in (0, 1)
    ]
    base = ["connect", str(tmp_path / "bn0.pt"), str(tmp_path / "bn1.pt")]
    base += ["--model", "userfactories:batchnorm", "--curve", "none", "--steps", "5"]
    code, stdout, err = run_cli([*base, "--out", str(tmp_path / "c")], capsys)
    assert code == 0, err
    assert "warning" not in err
    path = lm.load(tmp_path / "c" / "path.h5")
    t = path.alpha
    i0, i1 = int(np.argmin(np.abs(t))), int(np.argmin(np.abs(t - 1)))
    assert path.meta["reset_bn"] is True
    assert path["loss"][i0] == pytest.approx(_fresh_loss(nets[0], x, y), abs=1e-6)
    assert path["loss"][i1] == pytest.approx(_fresh_loss(nets[1], x, y), abs=1e-6)
    run = json.loads((tmp_path / "c" / "run.json").read_text())
    bar = run["barrier_line"]["train/loss"]
    assert bar["end"] == pytest.approx(_fresh_loss(nets[1], x, y), abs=1e-6)
    assert "barrier along the straight path: train/loss" in stdout

    code, stdout, err = run_cli([*base, "--no-reset-bn", "--out", str(tmp_path / "f")], capsys)
    assert code == 0, err
    warn = [ln for ln in err.splitlines() if ln.strip()]
    assert len(warn) == 1 and warn[0].startswith("warning: --no-reset-bn"), err
    assert "checkpoint a's BatchNorm statistics" in stdout
    foreign = lm.load(tmp_path / "f" / "path.h5")
    assert foreign.meta["bn_statistics_foreign"] is True
    with torch.no_grad():
        own_b = float(nn.functional.cross_entropy(nets[1](x), y))
    assert abs(foreign["loss"][i1] - own_b) > 1e-3  # b with a's statistics: not b's loss


def test_plane_spans_and_steps_per_axis_as_typed(tmp_path: Path, factories: str, capsys) -> None:
    """`--span 1` is -1..1; `--span-beta` and `--steps-beta` set the β axis; the old
    two-word `--span LO HI` still reads; a random network is announced in one line."""
    import userfactories  # type: ignore[import-not-found]

    out = tmp_path / "p"
    args = ["plane", "--model", "userfactories:good", "--span", "1", "--span-beta", "-0.5,0.25"]
    code, stdout, err = run_cli(
        [*args, "--steps", "5", "--steps-beta", "3", "--out", str(out)], capsys
    )
    assert code == 0, err
    surf = lm.load(out / "surface.h5")
    np.testing.assert_array_equal(surf.alpha, np.linspace(-1, 1, 5))
    np.testing.assert_array_equal(surf.beta, np.linspace(-0.5, 0.25, 3))
    assert surf["loss"].shape == (5, 3)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2, err  # the random network, and θ0 off the β grid
    assert lines[0].startswith("note: no --checkpoint") and "random" in lines[0]
    assert lines[1].startswith("warning: --steps-beta 3") and "θ0" in lines[1]
    # The summary keeps θ0's own value although θ0 is not a grid point.
    x, y = userfactories._data()
    net = userfactories.good()[0]
    with torch.no_grad():
        at = float(nn.functional.cross_entropy(net(x), y))
    (row,) = [ln for ln in stdout.splitlines() if "train/loss" in ln]
    assert f"{at:.4g} at θ0 (not a grid point)" in row
    # The two-word spelling of earlier versions, and a line with an odd grid: no warning.
    code, stdout, err = run_cli(
        [
            "line",
            "--model",
            "userfactories:good",
            "--span",
            "-2",
            "2",
            "--steps",
            "5",
            "--out",
            str(tmp_path / "l"),
        ],
        capsys,
    )
    assert code == 0, err
    np.testing.assert_array_equal(lm.load(tmp_path / "l" / "line.h5").alpha, np.linspace(-2, 2, 5))
    assert "warning" not in err and f"{at:.4g} at θ0, " in stdout
    code, _, err = run_cli(["line", "--model", "userfactories:good", "--span", "a,b"], capsys)
    assert code == 2 and "must be R (for -R..R) or LO,HI" in err


def test_line_dataset_and_train_mode(tmp_path: Path, factories: str, capsys) -> None:
    """`--dataset` evaluates only the named set; `--train-mode` evaluates with batch
    statistics, so at θ0 a BatchNorm model scores its train-mode loss."""
    import userfactories  # type: ignore[import-not-found]

    x, y = userfactories._data()
    (tmp_path / "two.py").write_text(
        "import userfactories\n\ndef two():\n"
        "    net, crit, (x, y) = userfactories.batchnorm()\n"
        "    return net, crit, {'train': (x, y), 'test': (x[:10], y[:10])}\n"
    )
    out = tmp_path / "l"
    code, _stdout, err = run_cli(
        [
            "line",
            "--model",
            f"{tmp_path / 'two.py'}:two",
            "--dataset",
            "test",
            "--train-mode",
            "--steps",
            "3",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    line = lm.load(out / "line.h5")
    assert "test/loss" in line.values and not any(k.startswith("train/") for k in line.values)
    net = userfactories.batchnorm()[0].train()
    with torch.no_grad():
        own = float(nn.functional.cross_entropy(net(x[:10]), y[:10]))
    assert line["test/loss"][1] == pytest.approx(own, rel=1e-5)
    run = json.loads((out / "run.json").read_text())
    assert run["arguments"]["dataset"] == ["test"] and run["arguments"]["train_mode"] is True


def test_seed_help_says_what_it_seeds() -> None:
    import typer.main

    from lossmap.cli import app

    group = typer.main.get_command(app)
    expected = {"line": "random directions", "hessian": "Lanczos", "connect": "curve fit"}
    for command, words in expected.items():
        (seed,) = [p for p in group.commands[command].params if p.name == "seed"]  # type: ignore[attr-defined]
        assert words in seed.help, (command, seed.help)


def test_status_reads_a_connect_run_without_journal(tmp_path: Path, factories: str, capsys) -> None:
    """A straight path alone keeps no journal: `status` calls it a complete connect run
    (it said "not a lossmap run folder"), and an incomplete one when a file is gone."""
    import userfactories  # type: ignore[import-not-found]

    for i in (0, 1):
        torch.manual_seed(i)
        torch.save(userfactories._net().state_dict(), tmp_path / f"m{i}.pt")
    out = tmp_path / "c"
    code, _, err = run_cli(
        [
            "connect",
            str(tmp_path / "m0.pt"),
            str(tmp_path / "m1.pt"),
            "--model",
            "userfactories:good",
            "--curve",
            "none",
            "--steps",
            "5",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    assert not (out / "journal.sqlite").exists()
    code, stdout, err = run_cli(["status", str(out)], capsys)
    assert code == 0, err
    assert (
        stdout.splitlines()[0]
        == f"{out}: connect run, complete (it kept no journal: nothing to resume)"
    )
    (out / "path.csv").unlink()
    code, stdout, err = run_cli(["status", str(out)], capsys)
    assert code == 0 and "incomplete" in stdout and "missing: path.csv" in stdout
    code, _, err = run_cli(["status", str(tmp_path)], capsys)
    assert code == 2 and "not a lossmap run folder" in err
