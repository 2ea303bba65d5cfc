"""The command line as a person types it (issue #17): BatchNorm paths that use each
point's own statistics by default, the notes a command owes its user (a random
network, θ0 off the grid), spans and steps per axis, and what `status` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FACTORIES
from torch import nn

import lossmap as lm
from lossmap.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([*args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


@pytest.fixture
def factories(tmp_path: Path, monkeypatch) -> str:
    (tmp_path / "userfactories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return str(tmp_path / "userfactories.py")


def _bn_checkpoint(path: Path, *, seed: int) -> nn.Module:
    """The `batchnorm` factory's model moved (seeded), with running statistics of its
    own from one train-mode pass on half the data (so they are not the data's moments)."""
    import userfactories  # type: ignore[import-not-found]

    x, _y = userfactories._data()
    net = userfactories.batchnorm()[0]
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn_like(p))
        net.train()
        net(x[:20])
    net.eval()
    torch.save(net.state_dict(), path)
    return net


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
    nets = [_bn_checkpoint(tmp_path / f"bn{i}.pt", seed=i) for i in (0, 1)]
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
