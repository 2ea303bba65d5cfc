import pytest
import torch
from conftest import assert_unchanged, ce, state_of
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lossmap as lm
from lossmap import vectors as V


def test_exact_mean_with_uneven_batches(mlp_data) -> None:
    model, x, y = mlp_data
    model.requires_grad_(False)  # plain tensors below (the Landscape itself needs trainable ones)
    full = ce(model, x, y)
    model.requires_grad_(True)
    loader = DataLoader(TensorDataset(x, y), batch_size=7)  # 14 batches of 7, one of 2
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=loader, cache_bytes=0)  # streamed
    assert not land.datasets["train"].in_memory
    assert land.loss() == pytest.approx(full, abs=1e-6)
    held = lm.Landscape(model, nn.CrossEntropyLoss(), data=loader)  # held on the device
    assert held.datasets["train"].in_memory
    assert held.loss() == pytest.approx(full, abs=1e-6)
    # A mean of batch means would be biased by the batch of 2: make sure it differs here.
    with torch.no_grad():
        means = [ce(model, a, b) for a, b in loader]
    assert abs(sum(means) / len(means) - full) > 1e-4


def test_sum_reduction_and_accuracy(mlp_data) -> None:
    model, x, y = mlp_data
    land = lm.Landscape(model, nn.CrossEntropyLoss(reduction="sum"), data=(x, y))
    vals = land.evaluate([land.point()])
    assert vals["loss"][0] == pytest.approx(ce(model, x, y), rel=1e-6)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert vals["train/accuracy"][0] == pytest.approx(acc)


def test_custom_loss_with_dict_batches(mlp_data) -> None:
    model, x, y = mlp_data
    batches = [{"inputs": x[i : i + 30], "labels": y[i : i + 30]} for i in range(0, 100, 30)]

    def loss(m, b):
        return nn.functional.cross_entropy(m(b["inputs"]), b["labels"])

    land = lm.Landscape(model, loss=loss, data=batches)
    assert land.loss() == pytest.approx(ce(model, x, y), abs=1e-6)
    d = lm.directions.random(land, 1, seed=3)[0]
    c = lm.line(land, d, steps=5)
    ref = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y), metrics={})
    c_ref = lm.line(ref, d, steps=5, strategy="loop")
    torch.testing.assert_close(
        torch.tensor(c["loss"]), torch.tensor(c_ref["loss"]), rtol=1e-5, atol=1e-6
    )


def test_several_datasets(mlp_data) -> None:
    model, x, y = mlp_data
    land = lm.Landscape(
        model, nn.CrossEntropyLoss(), data={"train": (x[:70], y[:70]), "test": (x[70:], y[70:])}
    )
    vals = land.evaluate([land.point()])
    assert set(vals) >= {"train/loss", "train/accuracy", "test/loss", "test/accuracy", "loss"}
    assert vals["test/loss"][0] == pytest.approx(ce(model, x[70:], y[70:]), rel=1e-6)
    assert vals["loss"][0] == vals["train/loss"][0]


def test_eval_mode_by_default_and_model_untouched(cnn_data) -> None:
    model, x, y = cnn_data
    model.train()  # the user's model is in training mode: it must stay so
    before = state_of(model)
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    val = land.loss()
    assert_unchanged(model, before)
    model.eval()
    expected = ce(model, x, y)
    model.train()
    assert val == pytest.approx(expected, rel=1e-6)
    train = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y), train_mode=True)
    assert abs(train.loss() - val) > 1e-4  # batch statistics differ from running ones
    assert_unchanged(model, before)


def test_model_bit_identical_after_plane_and_after_an_exception(cnn_data) -> None:
    model, x, y = cnn_data
    before = state_of(model)
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    d1, d2 = lm.directions.random(land, 2, seed=0)
    lm.plane(land, d1, d2, steps=5)
    lm.line(land, d1, steps=7, strategy="loop")
    assert_unchanged(model, before)

    def boom(done: int, total: int) -> None:
        raise RuntimeError("interrupted mid-grid")

    for strategy in ("loop", "vmap", "affine"):
        with pytest.raises(RuntimeError, match="mid-grid"):
            lm.plane(land, d1, d2, steps=(9, 9), strategy=strategy, progress=boom)
        assert_unchanged(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_at_checkpoint_validation(mlp_data) -> None:
    model, x, y = mlp_data
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))
    sd = {k: v * 2 for k, v in model.state_dict().items()}
    moved = land.at(sd)
    assert float(V.norm(moved.point())) == pytest.approx(2 * float(V.norm(land.point())), rel=1e-6)
    assert float(V.norm(land.point())) == pytest.approx(
        float(V.norm(dict(model.named_parameters())))
    )
    with pytest.raises(ValueError, match=r"missing 2.bias"):
        land.at({k: v for k, v in sd.items() if k != "2.bias"})
    with pytest.raises(ValueError, match=r"shape 0.weight: \(8, 4\) vs expected \(8, 5\)"):
        land.at({**sd, "0.weight": torch.zeros(8, 4)})
    with pytest.raises(ValueError, match="non-finite"):
        land.at({**sd, "0.bias": torch.full((8,), float("nan"))})


def test_gradient_and_hvp_match_autograd(mlp_data) -> None:
    model, x, y = mlp_data
    model = model.double()
    x = x.double()
    loader = DataLoader(TensorDataset(x, y), batch_size=33)
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=loader)
    names = list(land.point())
    theta = land.point()

    def f(*flat):
        params = dict(zip(names, flat, strict=True))
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    g_ref = torch.func.grad(
        lambda p: nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), y)
    )(theta)
    g = land.gradient()
    for k in names:
        torch.testing.assert_close(g[k], g_ref[k], rtol=1e-10, atol=1e-12)
    v = lm.directions.random(land, 1, normalization="none", ignore=(), seed=1)[0]
    H = torch.autograd.functional.hessian(
        lambda w: f(*V.unflatten(w, theta).values()), V.flatten(theta)
    )
    hv = V.flatten(land.hvp(None, v))
    torch.testing.assert_close(hv, H @ V.flatten(v), rtol=1e-8, atol=1e-10)


def test_bad_input_errors(mlp_data) -> None:
    model, x, y = mlp_data
    with pytest.raises(ValueError, match="empty"):
        lm.Landscape(model, nn.CrossEntropyLoss(), data=(x[:0], y[:0]))
    with pytest.raises(ValueError, match="empty"):
        lm.Landscape(model, nn.CrossEntropyLoss(), data=[])
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        lm.Landscape(frozen, nn.MSELoss(), data=(x, y))
    with pytest.raises(ValueError, match="exactly one of criterion"):
        lm.Landscape(model, data=(x, y))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        lm.Landscape("model", nn.MSELoss(), data=(x, y))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share their first dimension"):
        lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y[:5]))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cpu'"):
            lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y), device="cuda")
