"""Held batches too big for the cache are evaluated in pieces: the same values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossmap as lm
from lossmap.data import DataSet
from lossmap.evaluate import memory


def test_share_cuts_pieces_of_at_most_most_samples() -> None:
    batches = [(torch.arange(a, b),) for a, b in ((0, 4), (4, 8), (8, 10))]
    ds = DataSet("train", batches, None, 10)
    got = [[int(v) for v in b[0]] for b in ds.share(most=3)]
    assert got == [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9]]
    halves = [[[int(v) for v in b[0]] for b in ds.share(r, 2, most=2)] for r in range(2)]
    assert halves == [[[0, 1], [2, 3], [4]], [[5, 6], [7], [8, 9]]]
    assert ds.share(most=3) is ds.share(most=3)  # made once
    assert list(ds.share(most=4)) == batches  # batches that fit are kept as they are


def _cnn() -> lm.Landscape:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (300,), generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 64, 4),
        ).eval()
    return lm.Landscape(net, nn.CrossEntropyLoss(), data=(x, y))


def test_a_plane_in_pieces_equals_the_plane_in_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    land = _cnn()
    d1, d2 = lm.directions.random(land, 2, seed=0)
    assert memory.piece_samples(land, "train") is None  # ~4 KiB a sample: one batch
    whole = lm.plane(land, d1, d2, steps=5, strategy="loop")
    per_sample = memory.output_sizes(land).activation_bytes  # type: ignore[union-attr]
    monkeypatch.setattr(memory, "PIECE_BYTES", 64 * per_sample)
    assert memory.piece_samples(land, "train") == 64  # 300 samples: 5 pieces
    pieces = lm.plane(land, d1, d2, steps=5, strategy="loop")
    for k in whole.values:
        np.testing.assert_allclose(pieces.values[k], whole.values[k], rtol=1e-6, err_msg=k)
    assert not np.array_equal(pieces["loss"], whole["loss"])  # it did run in pieces
