"""Token-weighted losses: a loss callable that returns ``(sum, count)``.

A tiny language model (embedding + linear, plain PyTorch) on padded sequences of
different lengths with an attention mask, served by a DataLoader of dict batches of
uneven sizes (4, 4, 4, 1 sequences). The reference never goes through lossmap: the
exact per-token mean over the whole data set in one forward pass, in float64,
differentiated by ``torch.func`` (``grad``, ``hessian``). A mean per batch weighted by
its number of sequences (what a plain ``loss(model, batch) -> mean`` gives) differs
from it, so these tests fail without the ``(sum, count)`` form.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, hessian
from torch.utils.data import DataLoader

import lossmap as lm

VOCAB, WIDTH, T = 11, 4, 9
LENGTHS = [9, 2, 5, 7, 3, 8, 4, 6, 2, 9, 5, 3, 6]  # batches of 4: 19, 17, 15, 5 tokens


def _sequences(lengths: list[int]) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in lengths:
        ids = torch.zeros(T, dtype=torch.long)  # 0: padding
        ids[:n] = torch.randint(1, VOCAB, (n,), generator=gen)
        mask = (torch.arange(T) < n).long()
        rows.append({"input_ids": ids, "attention_mask": mask})
    return rows


def _collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def _loader(lengths: list[int] = LENGTHS) -> DataLoader:
    return DataLoader(_sequences(lengths), batch_size=4, collate_fn=_collate)  # type: ignore[arg-type]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, VOCAB)).double()


def _labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token targets, -100 (ignored) at padding."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    return ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)


def _mean_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """What a transformers model's ``out.loss`` is: the batch's mean over its tokens."""
    logits = model(batch["input_ids"])[:, :-1]
    return F.cross_entropy(logits.reshape(-1, VOCAB), _labels(batch).reshape(-1))


def token_loss(model, batch: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    """``(out.loss * n_tokens, n_tokens)``, as the Landscape docstring shows."""
    n_tokens = (_labels(batch) != -100).sum()
    return _mean_loss(model, batch) * n_tokens, n_tokens


def token_accuracy(model, batch: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    labels = _labels(batch)
    hit = (model(batch["input_ids"])[:, :-1].argmax(-1) == labels) & (labels != -100)
    return hit.sum().double(), (labels != -100).sum()


def _exact(params: dict[str, torch.Tensor], model: nn.Module, lengths: list[int]) -> torch.Tensor:
    """The exact per-token mean over the whole data set, one forward pass (``float`` of
    it is taken on detached parameters: lossmap's ``theta0`` and points are)."""
    return _exact_on(params, model, _collate(_sequences(lengths)))


def _exact_on(
    params: dict[str, torch.Tensor], model: nn.Module, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    logits = functional_call(model, params, (batch["input_ids"],))[:, :-1]
    per_token = F.cross_entropy(
        logits.reshape(-1, VOCAB), _labels(batch).reshape(-1), reduction="none"
    )
    return per_token.sum() / (_labels(batch) != -100).sum()


def _flat_reference(model: nn.Module, lengths: list[int]):  # type: ignore[no-untyped-def]
    theta0 = {k: p.detach().clone() for k, p in model.named_parameters()}
    whole = _collate(_sequences(lengths))
    shapes = {k: t.shape for k, t in theta0.items()}

    def f(x: torch.Tensor) -> torch.Tensor:
        parts, i = {}, 0
        for k, s in shapes.items():
            n = int(torch.Size(s).numel())
            parts[k] = x[i : i + n].reshape(s)
            i += n
        return _exact_on(parts, model, whole)

    return f, torch.cat([t.reshape(-1) for t in theta0.values()])


def test_loss_plane_and_strategies_give_the_exact_token_mean() -> None:
    model = _model()
    land = lm.Landscape(model, loss=token_loss, data=_loader())
    theta0 = dict(land.theta0)
    exact = float(_exact(theta0, model, LENGTHS))
    assert land.loss() == pytest.approx(exact, rel=1e-12, abs=0)
    # The sequence-weighted mean (a plain per-batch mean, weighted by batch size).
    plain = lm.Landscape(model, loss=_mean_loss, data=_loader())
    with torch.no_grad():
        per_batch = [float(_mean_loss(model, b)) * len(b["input_ids"]) for b in _loader()]
    per_sequence = sum(per_batch) / len(LENGTHS)
    assert plain.loss() == pytest.approx(per_sequence, rel=1e-12)
    assert abs(per_sequence - exact) > 1e-3  # the test would fail without (sum, count)
    d1, d2 = lm.directions.random(land, 2, seed=3)
    moved = {k: t + 0.5 * d1[k] for k, t in theta0.items()}
    exact_moved = float(_exact(moved, model, LENGTHS))
    for strategy in ("loop", "vmap", "auto"):
        vals = land.evaluate([theta0, moved], strategy=strategy)["loss"]
        assert vals == pytest.approx([exact, exact_moved], rel=1e-12), strategy
    surf = lm.plane(land, d1, d2, span=1.0, steps=3)
    assert surf["loss"][1, 1] == pytest.approx(exact, rel=1e-12)
    corner = {k: t - d1[k] + d2[k] for k, t in theta0.items()}
    assert surf["loss"][0, 2] == pytest.approx(float(_exact(corner, model, LENGTHS)), rel=1e-12)
    curve = lm.line(land, d1, span=(0, 0.5), steps=2)
    assert curve["loss"] == pytest.approx([exact, exact_moved], rel=1e-12)


@pytest.mark.parametrize("streamed", [False, True])
def test_gradient_and_hvp_equal_the_exact_token_mean(streamed: bool) -> None:
    model = _model()
    land = lm.Landscape(model, loss=token_loss, data=_loader(), cache_bytes=0 if streamed else None)
    assert land.datasets["train"].in_memory is not streamed
    f, x0 = _flat_reference(model, LENGTHS)
    value, _ = land.value_and_grad()
    assert value == pytest.approx(float(f(x0)), rel=1e-12)
    assert land.loss() == pytest.approx(float(f(x0)), rel=1e-12)
    flat_g = torch.cat([t.reshape(-1) for t in land.gradient().values()])
    torch.testing.assert_close(flat_g, grad(f)(x0), rtol=1e-10, atol=1e-12)
    H = hessian(f)(x0)
    v = {k: torch.randn(t.shape, dtype=t.dtype) for k, t in land.theta0.items()}
    hv = torch.cat([t.reshape(-1) for t in land.hvp(None, v).values()])
    torch.testing.assert_close(hv, H @ torch.cat([t.reshape(-1) for t in v.values()]))
    top = lm.hessian.eigenvalues(land, k=1, tol=1e-10)
    assert float(top.values[0]) == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-7)


def test_batch_without_tokens_adds_nothing() -> None:
    """A last batch of one-token sequences has no next-token target: its mean is NaN,
    its count 0; it must change neither the loss nor the gradient."""
    lengths = [*LENGTHS[:12], 1]
    model = _model()
    with torch.no_grad():
        assert torch.isnan(_mean_loss(model, list(_loader(lengths))[-1]))
    land = lm.Landscape(model, loss=token_loss, data=_loader(lengths))
    f, x0 = _flat_reference(model, lengths)
    assert land.loss() == pytest.approx(float(f(x0)), rel=1e-12)
    for strategy in ("loop", "vmap"):
        assert land.evaluate([land.theta0], strategy=strategy)["loss"][0] == pytest.approx(
            float(f(x0)), rel=1e-12
        )
    flat_g = torch.cat([t.reshape(-1) for t in land.gradient().values()])
    assert torch.isfinite(flat_g).all()
    torch.testing.assert_close(flat_g, grad(f)(x0), rtol=1e-10, atol=1e-12)


def test_gradient_over_given_batches_divides_by_their_tokens() -> None:
    model = _model()
    land = lm.Landscape(model, loss=token_loss, data=_loader())
    first = next(iter(_loader()))
    value, g = land.value_and_grad(batches=[first])
    f, x0 = _flat_reference(model, LENGTHS[:4])
    assert value == pytest.approx(float(f(x0)), rel=1e-12)
    torch.testing.assert_close(
        torch.cat([t.reshape(-1) for t in g.values()]), grad(f)(x0), rtol=1e-10, atol=1e-12
    )


def test_metrics_as_pairs_and_as_means() -> None:
    """A pair metric is divided by its own counts; a plain mean by the sequences."""
    model = _model()

    def seq_len(m, b):  # type: ignore[no-untyped-def]
        return b["attention_mask"].double().sum(1).mean()

    land = lm.Landscape(
        model,
        loss=token_loss,
        metrics={"accuracy": token_accuracy, "length": seq_len},
        data=_loader(),
    )
    batch = _collate(_sequences(LENGTHS))
    labels = _labels(batch)
    with torch.no_grad():
        hit = (model(batch["input_ids"])[:, :-1].argmax(-1) == labels) & (labels != -100)
    vals = land.evaluate([land.theta0], strategy="vmap")
    assert vals["accuracy"][0] == pytest.approx(float(hit.sum() / (labels != -100).sum()))
    assert vals["length"][0] == pytest.approx(sum(LENGTHS) / len(LENGTHS), rel=1e-12)
    totals = land.weight_totals()
    assert totals is not None
    assert totals.tolist() == [56.0, 56.0, 13.0]
    assert land.weight_totals() is totals  # counted once, cached on the data set


def _bad(ret):  # type: ignore[no-untyped-def]
    def loss(model, batch):  # type: ignore[no-untyped-def]
        m = _mean_loss(model, batch)
        return ret(m)

    return loss


@pytest.mark.parametrize(
    ("ret", "error", "needle"),
    [
        (lambda m: (m, 3, 1), TypeError, "(sum, count) pair, got a tuple of 3"),
        (lambda m: (m, -2), ValueError, "count -2.0"),
        (lambda m: (m.reshape(1).repeat(2), 3), ValueError, "both must be scalars"),
        (lambda m: (m, 0), ValueError, "every count the loss returns is 0"),
    ],
)
def test_malformed_returns_are_refused_in_one_line(ret, error, needle) -> None:  # type: ignore[no-untyped-def]
    land = lm.Landscape(_model(), loss=_bad(ret), data=_loader())
    with pytest.raises(error) as e:
        land.loss()
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_a_return_that_changes_form_is_refused() -> None:
    calls = {"n": 0}

    def flip(model, batch):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return token_loss(model, batch) if calls["n"] == 1 else _mean_loss(model, batch)

    land = lm.Landscape(_model(), loss=flip, data=_loader())
    with pytest.raises(TypeError, match="same form on every batch"):
        land.loss()
