"""Shared fixtures: small models and data with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn


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
