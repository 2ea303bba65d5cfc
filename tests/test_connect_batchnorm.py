"""The straight path between two BatchNorm CNNs (issue #17, item 4): by default every
point, the endpoints included, is evaluated with BatchNorm statistics recomputed there,
so endpoint b scores b's own loss (with statistics from a fresh pass over the data) and
the barrier is computed from those values; turning recomputation off warns."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import assert_unchanged, state_of
from torch import nn

import lossmap as lm
from lossmap import connect as C
from lossmap.examples import digits_data, train


def bn_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, stride=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 10),
    )


@pytest.fixture(scope="module")
def cnn_pair():
    x, y = digits_data()["train"]
    x, y = x[:300], y[:300]
    models = []
    for seed in (0, 1):
        m = bn_cnn(seed)
        with torch.random.fork_rng(devices=[]):
            train(m, nn.CrossEntropyLoss(), x, y, epochs=3, batch_size=50, lr=5e-2, seed=seed)
        models.append(m.eval())
    return models[0], models[1], (x, y)


def _loss_with_fresh_statistics(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The model's loss after its BatchNorm statistics are set to the exact moments of
    its activations on ``x`` (one batch, cumulative average: the mean and unbiased
    variance), by hand with PyTorch's own BatchNorm."""
    m = copy.deepcopy(model)
    for layer in m.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None
    m.train()
    with torch.no_grad():
        m(x)
        m.eval()
        return float(nn.functional.cross_entropy(m(x), y))


def test_default_path_recomputes_statistics_at_each_point(cnn_pair) -> None:
    model_a, model_b, (x, y) = cnn_pair
    before_a, before_b = state_of(model_a), state_of(model_b)
    land = lm.Landscape(model_a, nn.CrossEntropyLoss(), data=(x, y))
    a = land.point()
    b = {k: v.detach().clone() for k, v in model_b.named_parameters()}
    path = C.linear(land, a, b, span=(0, 1), steps=5)
    assert path.meta["reset_bn"] is True and path.meta["bn_statistics_foreign"] is False
    assert path.meta["batchnorm_layers"] == 2
    loss = path["train/loss"]
    own_a = _loss_with_fresh_statistics(model_a, x, y)
    own_b = _loss_with_fresh_statistics(model_b, x, y)
    assert loss[0] == pytest.approx(own_a, abs=1e-6)
    assert loss[-1] == pytest.approx(own_b, abs=1e-6)
    # The middle point: the interpolated network with its own fresh statistics.
    mid = copy.deepcopy(model_a)
    with torch.no_grad():
        for k, p in mid.named_parameters():
            p.copy_(0.5 * a[k] + 0.5 * b[k])
    assert loss[2] == pytest.approx(_loss_with_fresh_statistics(mid, x, y), abs=1e-6)
    # The barrier is computed from these values.
    t = np.linspace(0.0, 1.0, 5)
    chord = (1 - t) * loss[0] + t * loss[-1]
    bar = path.meta["barrier"]["train/loss"]
    assert bar["start"] == loss[0] and bar["end"] == loss[-1]
    assert bar["height"] == pytest.approx(float(np.max(loss - chord)), abs=1e-12)
    assert bar["height_frankle"] == pytest.approx(
        float(loss.max() - (loss[0] + loss[-1]) / 2), abs=1e-12
    )
    assert_unchanged(model_a, before_a)
    assert_unchanged(model_b, before_b)


def test_foreign_statistics_only_with_a_warning(cnn_pair) -> None:
    """reset_bn=False evaluates b with a's statistics (the bug of issue #17): allowed,
    but with a warning and a flag in the metadata; the default agrees with reset_bn=True."""
    model_a, model_b, (x, y) = cnn_pair
    land = lm.Landscape(model_a, nn.CrossEntropyLoss(), data=(x, y))
    a = land.point()
    b = {k: v.detach().clone() for k, v in model_b.named_parameters()}
    with pytest.warns(UserWarning, match="foreign"):
        foreign = C.linear(land, a, b, span=(0, 1), steps=3, reset_bn=False)
    assert foreign.meta["bn_statistics_foreign"] is True
    own_b = _loss_with_fresh_statistics(model_b, x, y)
    assert abs(foreign["train/loss"][-1] - own_b) > 1e-3
    explicit = C.linear(land, a, b, span=(0, 1), steps=3, reset_bn=True)
    default = C.linear(land, a, b, span=(0, 1), steps=3)
    np.testing.assert_array_equal(default["train/loss"], explicit["train/loss"])
