import numpy as np
import pytest
import torch
from torch import nn

import lossmap as lm
from lossmap import evaluate
from lossmap.evaluate import Explicit, Span, chunks, run


class CountingLoader:
    """An iterable of batches that counts how often it is iterated."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bs: int) -> None:
        self.batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_streamed_loader_is_iterated_once_per_chunk(mlp_data) -> None:
    model, x, y = mlp_data
    loader = CountingLoader(x, y, 30)
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=loader, cache_bytes=0)
    assert not land.datasets["train"].in_memory
    d = lm.directions.random(land, 1, seed=0)[0]
    theta = land.point()
    pts = Span(theta, [d], np.linspace(-1, 1, 20)[:, None])
    for strategy in ("loop", "vmap", "affine"):
        loader.passes = 0
        res = run(land, pts, strategy=strategy, chunk_size=5)
        assert loader.passes == 4, strategy  # 20 points / 5 per chunk, not 20 passes
        held = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
        ref = run(held, pts, strategy="loop")
        np.testing.assert_allclose(res.values["train/loss"], ref.values["train/loss"], rtol=1e-5)


def test_explicit_points_and_auto_metadata(mlp_data) -> None:
    model, x, y = mlp_data
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    dirs = lm.directions.random(land, 40, seed=1, orthogonal=False)
    res = run(land, Explicit([lm.vectors.add(land.point(), d, alpha=0.1) for d in dirs]))
    info = res.info
    assert info["strategy"] in info["eligible"] and "reason" in info
    assert set(info["timings_ms_per_point"]) <= set(info["eligible"])
    assert "affine" not in info["eligible"]  # explicit points are not a span
    ref = land.evaluate(
        [lm.vectors.add(land.point(), d, alpha=0.1) for d in dirs[:3]], strategy="loop"
    )
    np.testing.assert_allclose(res.values["train/loss"][:3], ref["loss"], rtol=1e-5)


def test_train_mode_forces_loop(mlp_data) -> None:
    model, x, y = mlp_data
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y), train_mode=True)
    d = lm.directions.random(land, 1)[0]
    c = lm.line(land, d, steps=20)
    assert c.meta["engine"]["strategy"] == "loop"
    with pytest.raises(ValueError, match="cannot run here"):
        lm.line(land, d, steps=5, strategy="vmap")


def test_chunks() -> None:
    assert [c.tolist() for c in chunks(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert sum(len(c) for c in chunks(1000, 7)) == 1000
    with pytest.raises(ValueError):
        chunks(3, 0)


@pytest.mark.parametrize("tiles", [False, True])
@pytest.mark.parametrize(
    "kind",
    ["bce", "mse", "ce-sum", "ce-no-metrics", "ce-accuracy-deep", "ce-frozen-last", "ce-lone"],
)
def test_batched_losses_match_the_loop(kind, tiles, monkeypatch) -> None:
    """The vmap-free batched path reduces known losses by formula: check each formula,
    on one tile and on CPU tiles of 8 points (the last one shorter), through a deeper
    chain with an activation that has no in-place form, and with a frozen last layer
    (shared weights, not per point), and for a lone linear layer."""
    if tiles:
        monkeypatch.setattr(evaluate, "_TILE_BYTES", 1)  # the smallest tile: 8 points
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "ce-lone":  # softmax regression: the loss overwrites the first product
            model = nn.Linear(4, 3)
        elif kind == "ce-accuracy-deep":
            model = nn.Sequential(
                nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3)
            )
        else:
            model = nn.Sequential(
                nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3 if kind.startswith("ce") else 1)
            )
        if kind == "ce-frozen-last":
            model[2].requires_grad_(False)
    if kind == "bce":
        land = lm.Landscape(model, nn.BCEWithLogitsLoss(), data=(x, (x[:, :1] > 0).float()))
    elif kind == "mse":
        land = lm.Landscape(model, nn.MSELoss(), data=(x, x[:, :1] ** 2))
    elif kind == "ce-sum":
        land = lm.Landscape(
            model,
            nn.CrossEntropyLoss(reduction="sum"),
            data=(x, torch.randint(0, 3, (60,), generator=g)),
        )
    else:
        land = lm.Landscape(
            model,
            nn.CrossEntropyLoss(),
            data=(x, torch.randint(0, 3, (60,), generator=g)),
            metrics={} if kind == "ce-no-metrics" else None,
        )
    d1, d2 = lm.directions.random(land, 2, seed=1)
    batched = lm.plane(land, d1, d2, steps=(5, 4), strategy="affine-vmap")
    loop = lm.plane(land, d1, d2, steps=(5, 4), strategy="loop")
    assert list(batched.values) == list(loop.values)
    assert len(loop.values) == (1 if kind in ("mse", "ce-no-metrics") else 2)  # + accuracy
    assert batched.meta["engine"]["strategy"] == "affine-vmap"
    for k in loop.values:
        np.testing.assert_allclose(
            batched.values[k], loop.values[k], rtol=1e-5, atol=1e-7, err_msg=k
        )


def test_auto_values_are_bit_identical_to_its_pick_run_alone(mlp_data) -> None:
    """auto keeps the rows its timing trial computed: they must be exactly the rows the
    chosen strategy computes on its own (same chunks, same arithmetic)."""
    model, x, y = mlp_data
    land = lm.Landscape(
        model, nn.CrossEntropyLoss(), data={"train": (x, y), "test": (x[:30], y[:30])}
    )
    d1, d2 = lm.directions.random(land, 2, seed=0)
    for _ in range(3):  # whichever strategy the timing picks
        land._choices.clear()
        auto = lm.plane(land, d1, d2, steps=(9, 7))
        pick = auto.meta["engine"]["strategy"]
        alone = lm.plane(land, d1, d2, steps=(9, 7), strategy=pick)
        for k in auto.values:
            np.testing.assert_array_equal(auto.values[k], alone.values[k], err_msg=f"{pick} {k}")


@pytest.mark.parametrize("winner", ["affine", "affine-vmap"])
def test_auto_keeps_the_trial_rows_of_either_winner(mlp_data, monkeypatch, winner) -> None:
    import time

    from lossmap import evaluate

    model, x, y = mlp_data
    land = lm.Landscape(
        model, nn.CrossEntropyLoss(), data={"train": (x, y), "test": (x[:30], y[:30])}
    )
    d1, d2 = lm.directions.random(land, 2, seed=0)
    alone = lm.plane(land, d1, d2, steps=(9, 7), strategy=winner)
    original = evaluate._Evaluator.__call__

    def slow_loser(self, params, idx, *args, **kwargs):
        if self.strategy != winner:  # 10 ms per point: loses on any machine, however loaded
            time.sleep(0.01 * len(idx))
        return original(self, params, idx, *args, **kwargs)

    monkeypatch.setattr(evaluate._Evaluator, "__call__", slow_loser)
    land._choices.clear()
    auto = lm.plane(land, d1, d2, steps=(9, 7))
    assert auto.meta["engine"]["strategy"] == winner
    for k in auto.values:
        np.testing.assert_array_equal(auto.values[k], alone.values[k], err_msg=k)


@pytest.mark.parametrize("case", ["ties", "no-ties", "nan-and-tie"])
@pytest.mark.parametrize("classes_first", [True, False])
def test_batched_accuracy_is_argmax_with_ties(classes_first: bool, case: str) -> None:
    """The batched cross-entropy path counts a sample correct exactly when argmax
    (first maximum on ties) equals the target: ties, all-equal logits included, and
    a chunk where one sample's NaN logits and another's tie would balance a count of
    maxima (the no-tie shortcut must not be taken there)."""
    g = torch.Generator().manual_seed(0)
    n, c, p = 50, 4, 6
    x = torch.randn(n, 3, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    land = lm.Landscape(nn.Linear(3, c), nn.CrossEntropyLoss(), data=(x, y))
    if case == "ties":
        logits = torch.randint(-1, 2, (p, n, c), generator=g).float()  # many ties
        logits[0] = 0.0  # all classes tied: only target 0 is correct
    else:
        logits = torch.randn(p, n, c, generator=g)
    if case == "nan-and-tie":
        logits[1, 0] = float("nan")  # no maximum
        logits[1, 1] = 0.0
        logits[1, 1, 2:] = -1.0  # classes 0 and 1 tied: argmax is 0
        y = y.clone()
        y[1] = 1  # so the tied sample is wrong, and counted right only by mistake
    stats = land.batched_output_stats(
        logits.transpose(1, 2).contiguous() if classes_first else logits,
        y,
        n,
        classes_first=classes_first,
    )
    assert stats is not None
    # (torch's argmax calls a NaN the maximum; a sample with NaN logits is never correct)
    finite = ~logits.isnan().any(dim=-1)
    expected_acc = ((logits.argmax(dim=-1) == y) & finite).float().sum(dim=-1)
    expected_loss = torch.stack(
        [nn.functional.cross_entropy(logits[i], y, reduction="sum") for i in range(p)]
    )
    torch.testing.assert_close(stats[:, 1], expected_acc, rtol=0, atol=0)
    torch.testing.assert_close(stats[:, 0], expected_loss, rtol=1e-6, atol=1e-5, equal_nan=True)
    if case == "ties":
        assert float(stats[0, 1]) == float((y == 0).sum())


@pytest.mark.parametrize("classes_first", [True, False])
def test_batched_cross_entropy_has_no_cancellation(classes_first: bool) -> None:
    """Σ_n loss_n is reduced as Σ log Σ exp(s) − Σ s[y] with s = logits − max: small
    terms near a minimum. Summing logsumexp and the target logits separately and then
    subtracting would lose the loss to cancellation when logits are large (here all
    offset by 1000, which cross-entropy ignores): ~1 % error instead of ~1e-7."""
    g = torch.Generator().manual_seed(0)
    n, c, p = 512, 3, 4
    y = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(p, n, c, generator=g)
    logits[torch.arange(p)[:, None], torch.arange(n), y] += 5.0  # confident: loss ≈ 0.01
    logits += 1000.0
    land = lm.Landscape(nn.Linear(3, c), nn.CrossEntropyLoss(), data=(torch.randn(n, 3), y))
    stats = land.batched_output_stats(
        logits.transpose(1, 2).contiguous() if classes_first else logits.clone(),
        y,
        n,
        classes_first=classes_first,
        owned=True,
    )
    assert stats is not None
    expected = torch.stack(
        [nn.functional.cross_entropy(logits[i].double(), y, reduction="sum") for i in range(p)]
    )
    assert float(expected.min()) < 0.05 * n  # the regime that matters: a small loss
    torch.testing.assert_close(stats[:, 0].double(), expected, rtol=2e-5, atol=0)
