"""The curve fit's SGD step goes through the derivative core: one epoch against a float64
reference written out by hand (uneven last minibatch, momentum), and the journal's
settings check naming what differs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import lossmap as lm
from lossmap import connect as C


def _seed_for(seed: int, epoch: int) -> int:
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (50,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    a = land.point()
    b = {k: v + torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in a.items()}
    return land, a, b, x, y


def _reference(a, b, x, y, *, kind, epochs, lr, momentum, batch_size, seed):
    """SGD with momentum on the bend, by hand: ∂L/∂θ = c_θ ∇L(φ(t)) in float64."""
    theta = {k: (a[k] + b[k]) / 2 for k in a}
    buf: dict[str, torch.Tensor] = {}
    names = list(a)
    losses = []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(_seed_for(seed, epoch))
        perm = torch.randperm(len(x), generator=gen)
        ts = torch.rand(math.ceil(len(x) / batch_size), generator=gen, dtype=torch.float64)
        total = 0.0
        for j, i in enumerate(range(0, len(x), batch_size)):
            idx = perm[i : i + batch_size]
            ca, ct, cb = C.coefficients(kind, float(ts[j]))[0]
            phi = {k: (ca * a[k] + ct * theta[k] + cb * b[k]).requires_grad_(True) for k in a}
            h = torch.tanh(x[idx] @ phi["0.weight"].T + phi["0.bias"])
            out = h @ phi["2.weight"].T + phi["2.bias"]
            loss = nn.functional.cross_entropy(out, y[idx])
            grads = torch.autograd.grad(loss, [phi[k] for k in names])
            for k, gk in zip(names, grads, strict=True):
                d = ct * gk
                buf[k] = d if k not in buf else momentum * buf[k] + d
                theta[k] = theta[k] - lr * buf[k]
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(x))
    return theta, losses


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_curve_epochs_match_a_float64_reference(kind) -> None:
    land, a, b, x, y = _problem()
    kw = {"kind": kind, "epochs": 2, "lr": 0.1, "momentum": 0.9, "batch_size": 16, "seed": 2}
    fit = C.curve(land, a, b, steps=3, **kw)
    theta, losses = _reference(a, b, x, y, **kw)  # 50 = 3 x 16 + 2: an uneven last batch
    for k in theta:
        torch.testing.assert_close(fit.bend[k], theta[k], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fit.history, losses, rtol=1e-12)


class Blobs(dict):
    """A journal stand-in: ``get`` from the dict, ``put`` a copy."""

    def put(self, key: str, value: np.ndarray) -> None:
        self[key] = np.array(value, copy=True)


def test_a_parameter_the_loss_does_not_use_stays_where_it_is() -> None:
    """It gets a zero gradient, so its momentum buffer exists and is journaled: a
    resumed fit equals an uninterrupted one (the momentum of the others is kept)."""

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(3, 2).double()
            self.spare = nn.Parameter(torch.ones(2, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    _, _, _, x, y = _problem()
    land = lm.Landscape(Unused(), nn.CrossEntropyLoss(), data=(x, y))
    a = land.point()
    b = {k: v + 1.0 for k, v in a.items()}
    fit = C.curve(land, a, b, epochs=2, steps=3, batch_size=16)
    assert torch.equal(fit.bend["spare"], (a["spare"] + b["spare"]) / 2)
    assert not torch.equal(fit.bend["used.weight"], (a["used.weight"] + b["used.weight"]) / 2)
    journal = Blobs()
    C.curve(land, a, b, epochs=1, steps=3, batch_size=16, journal=journal)
    resumed = C.curve(land, a, b, epochs=2, steps=3, batch_size=16, journal=journal)
    for k in fit.bend:
        assert torch.equal(resumed.bend[k], fit.bend[k]), k


def test_a_journal_with_other_settings_names_what_differs() -> None:
    land, a, b, _, _ = _problem()
    journal = Blobs()
    C.curve(land, a, b, epochs=1, steps=3, journal=journal)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0\.05 -> 0\.1\)"):
        C.curve(land, a, b, epochs=1, steps=3, lr=0.1, journal=journal)
    moved = {k: v + 1 for k, v in b.items()}
    with pytest.raises(ValueError, match=r"b: [0-9a-f]{16} -> [0-9a-f]{16}"):
        C.curve(land, a, moved, epochs=1, steps=3, journal=journal)
