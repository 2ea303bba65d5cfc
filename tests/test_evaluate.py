import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lossmap as lm
from lossmap import devices, evaluate
from lossmap.evaluate import Explicit, Span, chunks, memory, run
from lossmap.evaluate.losses import batched_output_stats


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
        monkeypatch.setattr(memory, "TILE_BYTES", 1)  # the smallest tile: 8 points
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


class _Residual(nn.Module):
    """Not an nn.Sequential: a conv, BatchNorm (eval mode) and a skip connection."""

    def __init__(self, c: int = 4, k: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.head = nn.Linear(c, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.relu(h + self.conv2(h))
        return self.head(h.mean(dim=(2, 3)))


class _Branchy(nn.Module):
    """Data-dependent control flow: runs one point at a time, never under vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        return out if bool(out.sum() > 0) else -out


def _landscape(kind: str, n: int = 40, **kw) -> lm.Landscape:
    """Small landscapes of each class the rule tells apart (BatchNorm with non-trivial
    running statistics, evaluated in eval mode)."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind in ("mlp", "branchy"):
            x = torch.randn(n, 5, generator=g)
            model = (
                _Branchy()
                if kind == "branchy"
                else nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
            )
        elif kind == "cnn":  # Sequential, BatchNorm after the first conv
            x = torch.randn(n, 2, 6, 6, generator=g)
            model = nn.Sequential(
                nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
            )
        elif kind in ("residual", "residual-big"):
            size = 32 if kind == "residual-big" else 6
            x = torch.randn(n, 2, size, size, generator=g)
            model = _Residual(c=8 if kind == "residual-big" else 4, k=3)
        elif kind == "cnn-big":
            x = torch.randn(n, 2, 32, 32, generator=g)
            model = nn.Sequential(
                nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 3)
            )
        else:
            raise ValueError(kind)
        model.train()
        with torch.no_grad():
            model(x)  # BatchNorm running statistics as after training
        model.eval()
    y = torch.randint(0, 3, (n,), generator=g)
    data = CountingLoader(x, y, 10) if kw.get("cache_bytes") == 0 else (x, y)
    return lm.Landscape(model, nn.CrossEntropyLoss(), data=data, **kw)


@pytest.mark.parametrize(
    ("kind", "kw", "expected"),
    [
        ("mlp", {}, "affine-vmap"),  # the batched features-first path
        ("cnn", {}, "affine-vmap"),  # small activations: overhead-bound
        ("cnn-big", {}, "affine"),  # 1.9 MiB of activations: compute-bound
        ("residual", {}, "vmap"),
        ("residual-big", {}, "loop"),
        ("residual", {"train_mode": True}, "loop"),
        ("residual", {"cache_bytes": 0}, "loop"),  # streamed: activation size unknown
        ("branchy", {}, "loop"),  # vmap cannot run data-dependent control flow
    ],
)
def test_auto_is_a_fixed_rule_of_the_model_not_of_timing(kind, kw, expected, monkeypatch) -> None:
    """auto consults neither a clock nor free memory: with the clock made to raise and
    free memory plentiful but different at every call, it picks the strategy its rule
    names, every time, and its values are bit for bit those of that strategy asked for
    by name."""

    def no_clock() -> float:
        raise AssertionError("auto must not time anything")

    free = iter(range(1 << 40, 1 << 41, 1 << 30))

    def plenty_and_changing(*_args) -> int:
        return next(free)  # free memory never short: it only caps a budget where it is

    monkeypatch.setattr(lm.data, "available_memory", plenty_and_changing)
    monkeypatch.setattr(devices, "free_memory", plenty_and_changing)
    land = _landscape(kind, n=64 if kind.endswith("big") else 40, **kw)
    d1, d2 = lm.directions.random(land, 2, seed=0)
    picks = set()
    with monkeypatch.context() as m:
        m.setattr(time, "perf_counter", no_clock)
        for _ in range(2):
            points = Span(land.point(), [d1, d2], np.array([[0.0, 0.0], [0.5, -0.5], [1, 0.25]]))
            strategy, reason = evaluate.choose(land, points)
            picks.add((strategy, reason))
    assert len(picks) == 1 and strategy == expected, picks
    auto = lm.plane(land, d1, d2, steps=(5, 4))
    assert auto.meta["engine"]["strategy"] == expected
    assert auto.meta["engine"]["reason"] == reason
    assert "timings_ms_per_point" not in auto.meta["engine"]
    alone = lm.plane(land, d1, d2, steps=(5, 4), strategy=expected)
    for k in auto.values:
        np.testing.assert_array_equal(auto.values[k], alone.values[k], err_msg=f"{kind} {k}")


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kind", ["mlp", "cnn", "residual"])
def test_same_plane_twice_and_killed_and_resumed_are_bit_identical(kind, tmp_path) -> None:
    """The same plane computed twice, on fresh landscapes, and a run killed after two
    chunks then resumed from its journal: every value equal bit for bit."""
    from lossmap.store import Journal

    def plane(**kw):
        land = _landscape(kind)  # fresh: nothing remembered from an earlier run
        d1, d2 = lm.directions.random(land, 2, seed=0)
        return lm.plane(land, d1, d2, steps=(9, 7), **kw)

    first, second = plane(), plane()
    assert first.meta["engine"]["strategy"] == second.meta["engine"]["strategy"]
    chunk = 5  # several chunks, so that the kill lands between two
    whole = plane(chunk_size=chunk)

    def kill_after_two(done: int, total: int) -> None:
        if done >= 2 * chunk:
            raise _Killed

    path = tmp_path / "journal.sqlite"
    with Journal(path, {"kind": kind}) as journal, pytest.raises(_Killed):
        plane(chunk_size=chunk, journal=journal, progress=kill_after_two)
    with Journal(path, {"kind": kind}) as journal:
        resumed = plane(journal=journal)  # no chunk size: the journal's is reused
    assert resumed.meta["engine"]["resumed_points"] == 2 * chunk
    assert resumed.meta["engine"]["strategy"] == whole.meta["engine"]["strategy"]
    assert resumed.meta["engine"]["chunk_size"] == chunk
    for k in first.values:
        np.testing.assert_array_equal(first.values[k], second.values[k], err_msg=f"twice {k}")
        np.testing.assert_array_equal(whole.values[k], resumed.values[k], err_msg=f"resumed {k}")


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
    stats = batched_output_stats(
        land,
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
    stats = batched_output_stats(
        land,
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


class _FusedAttention(nn.Module):
    """Embedding, one head of ``scaled_dot_product_attention`` (PyTorch's fused kernel,
    which torch.vmap on CPU runs once per point: no batching rule), a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Linear(4, 7)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        q, k, v = (z.unsqueeze(1) for z in self.qkv(h).split(4, dim=-1))  # [B, 1, T, 4]
        o = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(h + o.squeeze(1))


def _next_token(model, batch):  # type: ignore[no-untyped-def]
    ids = batch["input_ids"]
    logits = model(ids)[:, :-1]
    return nn.functional.cross_entropy(logits.reshape(-1, 7), ids[:, 1:].reshape(-1))


def test_auto_does_not_batch_a_model_that_vmap_would_run_point_by_point() -> None:
    """Under torch.vmap, an operator without a batching rule runs once per point and
    warns: auto's probe sees the warning, keeps one point per call and says why (the
    warning neither escapes, nor, where warnings are errors, fails the run)."""
    torch.manual_seed(0)
    model = _FusedAttention()
    data = [{"input_ids": torch.randint(0, 7, (4, 6), generator=torch.Generator().manual_seed(1))}]
    land = lm.Landscape(model, loss=_next_token, data=data)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.vmap(lambda p: land.batch_stats(p, data[0]))(
            {k: t.unsqueeze(0) for k, t in land.theta0.items()}
        )
    if not any(
        "batching rule" in str(w.message) for w in seen
    ):  # pragma: no cover - a torch whose CPU attention has a batching rule
        pytest.skip("this torch batches scaled_dot_product_attention under vmap")
    d = lm.directions.random(land, 1, seed=0)[0]
    curve = lm.line(land, d, steps=5)  # warnings are errors in this suite
    engine = curve.meta["engine"]
    assert engine["strategy"] == "loop"
    assert "no batching rule for aten::_scaled_dot_product" in engine["reason"]
    ref = lm.line(land, d, steps=5, strategy="loop")
    np.testing.assert_array_equal(curve["loss"], ref["loss"])
