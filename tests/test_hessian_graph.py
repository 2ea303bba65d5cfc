"""When the gradient graph is kept for every Hessian-vector product, and when it is
rebuilt batch by batch (it would not fit): the same products either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossmap as lm
from lossmap import hessian


def _land() -> lm.Landscape:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 2, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3)
        ).double()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 60, 16)]  # 16/16/16/12
    return lm.Landscape(net, nn.CrossEntropyLoss(), data=batches)


def test_a_graph_that_does_not_fit_is_rebuilt_with_the_same_products(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    land = _land()
    kept = hessian.HessianOperator(land)
    assert kept.reuse_graph  # a few KiB of activations: kept
    # A device of 1 MiB: 60 samples' graph does not fit in a quarter of it.
    monkeypatch.setattr(hessian, "total_memory", lambda device: 2**20)
    assert not hessian.graph_fits(land)
    rebuilt = hessian.HessianOperator(land)
    assert not rebuilt.reuse_graph
    v = np.random.default_rng(0).standard_normal(land.num_parameters)
    np.testing.assert_allclose(rebuilt @ v, kept @ v, rtol=1e-12, atol=1e-14)
    cols = np.random.default_rng(1).standard_normal((land.num_parameters, 3))
    np.testing.assert_allclose(rebuilt.matmat(cols), kept.matmat(cols), rtol=1e-12, atol=1e-14)
