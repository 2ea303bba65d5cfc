"""The derivative core against an independent float64 reference, with uneven batches.

The reference never goes through lossmap: the flattened loss over the whole data set in
one forward pass, differentiated by ``torch.func`` (``grad`` and ``hessian``). lossmap
sees the same data as a loader of uneven batches (16, 16, 16, 2 samples), held on the
device or streamed, so every batch weighting and every summation over batches is
checked.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian
from torch.utils.data import DataLoader, TensorDataset

import lossmap as lm
from lossmap import vectors as V
from lossmap.hvp import HessianVectorProduct


class TanhMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class SmallCNN(nn.Module):
    """Conv, eval-mode BatchNorm with non-trivial running statistics, tanh, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


def _problem(kind: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "mlp":
        model: nn.Module = TanhMLP()
        x = torch.randn(50, 5)
    else:
        model = SmallCNN()
        x = torch.randn(50, 2, 6, 6)
    y = torch.randint(0, 3, (50,))
    return model.double().eval(), x.double(), y


def _landscape(
    kind: str, streamed: bool
) -> tuple[lm.Landscape, nn.Module, torch.Tensor, torch.Tensor]:
    model, x, y = _problem(kind)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # 16, 16, 16, 2
    land = lm.Landscape(
        model, nn.CrossEntropyLoss(), data=loader, cache_bytes=0 if streamed else None
    )
    assert land.datasets["train"].in_memory is not streamed
    return land, model, x, y


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, like: V.Vector):
    """The whole-data-set mean loss as a function of the flat parameters (float64)."""
    buffers = dict(model.named_buffers())

    def f(flat: torch.Tensor) -> torch.Tensor:
        params = V.unflatten(flat, like)
        out = functional_call(model, {**params, **buffers}, (x,))
        return nn.functional.cross_entropy(out, y)

    return f


CASES = [(k, s) for k in ("mlp", "cnn") for s in (False, True)]


# The streamed CNN rebuilds its graph per batch for each of its 210 columns: slow, and
# the streamed path is checked on the MLP here and on the CNN by the HVP test below.
@pytest.mark.parametrize(("kind", "streamed"), CASES[:3])
def test_hessian_operator_against_torch_func_hessian(kind: str, streamed: bool) -> None:
    """HessianOperator column by column (lm.hessian.dense) equals torch.func.hessian of
    the flattened loss to 1e-10 of the largest entry."""
    land, model, x, y = _landscape(kind, streamed)
    theta = land.point()
    f = _reference(model, x, y, theta)
    ref = hessian(f)(V.flatten(theta))
    ours = lm.hessian.dense(land)
    scale = float(ref.abs().max())
    assert scale > 1e-3  # a Hessian worth comparing
    assert float((ours - ref).abs().max()) <= 1e-10 * scale


@pytest.mark.parametrize(("kind", "streamed"), CASES)
def test_value_gradient_and_hvp_against_float64_reference(kind: str, streamed: bool) -> None:
    land, model, x, y = _landscape(kind, streamed)
    gen = torch.Generator().manual_seed(1)
    theta = {
        k: t + 0.1 * torch.randn(t.shape, generator=gen, dtype=t.dtype)
        for k, t in land.point().items()
    }
    v = {k: torch.randn(t.shape, generator=gen, dtype=t.dtype) for k, t in theta.items()}
    f = _reference(model, x, y, theta)
    flat = V.flatten(theta)
    value, g = land.value_and_grad(theta)
    assert value == pytest.approx(float(f(flat)), rel=1e-13)
    g_ref = grad(f)(flat)
    assert float((V.flatten(g) - g_ref).abs().max()) <= 1e-12 * float(g_ref.abs().max())
    assert float((V.flatten(land.gradient(theta)) - g_ref).abs().max()) <= 1e-12 * float(
        g_ref.abs().max()
    )
    hv_ref = hessian(f)(flat) @ V.flatten(v)
    hv = V.flatten(land.hvp(theta, v))
    assert float((hv - hv_ref).abs().max()) <= 1e-10 * float(hv_ref.abs().max())
    # The per-batch terms sum to the data-set mean: the uneven last batch has weight 2/50.
    terms = [float(t.detach()) for t, _ in land.gradients(theta)]
    assert len(terms) == 4
    assert sum(terms) == pytest.approx(float(f(flat)), rel=1e-13)


def test_reduce_hook_sees_the_sums_and_its_answer_is_returned() -> None:
    """The scale-out hook: it receives [value, *gradient] and what it returns is used
    (here a stand-in for an all-reduce over two identical processes: their sum)."""
    land, *_ = _landscape("mlp", streamed=False)
    seen = []

    def two_processes(parts):
        seen.append([p.clone() for p in parts])
        return [2 * p for p in parts]

    value, g = land.value_and_grad(reduce=two_processes)
    plain_value, plain_g = land.value_and_grad()
    assert len(seen) == 1 and len(seen[0]) == 1 + len(plain_g)
    assert float(seen[0][0]) == plain_value and value == 2 * plain_value
    assert all(torch.equal(g[k], 2 * plain_g[k]) for k in g)
    product = HessianVectorProduct(land, reduce=lambda parts: [3 * p for p in parts])
    plain = HessianVectorProduct(land)
    v = [torch.ones_like(t) for t in land.theta0.values()]
    assert all(torch.equal(a, 3 * b) for a, b in zip(product(v), plain(v), strict=True))


def test_gradient_descent_steps_against_float64_reference() -> None:
    """Two full-batch GD steps (θ ← θ − η∇L) with uneven batches: the recorded losses and
    the parameters after each step equal the reference's."""
    land, model, x, y = _landscape("mlp", streamed=False)
    lr = 0.3
    h = lm.trajectory.gradient_descent(
        land, lr=lr, steps=2, sharpness_every=100, checkpoint_every=1
    )
    f = _reference(model, x, y, land.point())
    flat = V.flatten(land.point())
    for step in range(3):
        assert h.loss[step] == pytest.approx(float(f(flat)), rel=1e-12)
        j = list(h.checkpoint_steps).index(step)
        assert float((V.flatten(h.checkpoints[j]) - flat).abs().max()) <= 1e-12
        flat = flat - lr * grad(f)(flat)


def test_epsilon_sharpness_ascent_against_float64_reference() -> None:
    """The ε-sharpness ascent (Keskar et al. 2017) is driven by the core's gradient: the
    loss it reports at θ + δ is the reference loss there, δ lies in the box, and its
    first step from δ = 0 climbs (the reference directional derivative along δ > 0)."""
    land, model, x, y = _landscape("cnn", streamed=True)
    eps = 1e-2
    res = lm.sharpness.epsilon(land, eps, restarts=0, max_iter=5, seed=0)
    theta = land.point()
    f = _reference(model, x, y, theta)
    flat = V.flatten(theta)
    delta = V.flatten(res.delta)
    assert res.max_loss == pytest.approx(float(f(flat + delta)), rel=1e-12)
    assert res.loss == pytest.approx(float(f(flat)), rel=1e-13)
    # The box is elementwise ε (|θ_i| + 1) (Keskar et al.'s A = I_n scaled by |θ|).
    bound = eps * (flat.abs() + 1)
    assert bool((delta.abs() <= bound * (1 + 1e-9)).all())
    assert res.max_loss > res.loss
    assert float(grad(f)(flat) @ delta) > 0


@pytest.mark.parametrize("streamed", [False, True])
def test_dense_batches_its_columns_and_equals_one_product_per_column(
    streamed: bool, monkeypatch
) -> None:
    """Issue #17, item 7: dense() takes its columns in blocks (one batched backward per
    block), equal to one product per column; progress is reported per block; where
    the batched backward cannot run, the products are taken one by one."""
    land, *_ = _landscape("mlp", streamed)
    op = lm.hessian.HessianOperator(land)
    n = land.num_parameters
    eye = torch.eye(n, dtype=torch.float64)
    one_by_one = torch.stack([op.hvp(eye[i]) for i in range(n)], dim=1)
    seen = []
    H = lm.hessian.dense(land, columns=16, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(min(n, s), n) for s in range(16, n + 16, 16)]
    assert float((H - 0.5 * (one_by_one + one_by_one.T)).abs().max()) <= 1e-14 * float(
        H.abs().max()
    )
    X = np.random.default_rng(0).standard_normal((n, 3))
    assert np.allclose(op @ X, one_by_one.numpy() @ X, rtol=1e-12, atol=1e-14)

    from lossmap import hvp

    real = hvp._second_backward

    refused = []

    def no_batching(*args, batched=False, **kw):
        if batched:
            refused.append(1)
            raise hvp._BatchedBackwardError("vmap cannot run this backward")
        return real(*args, **kw)

    monkeypatch.setattr(hvp, "_second_backward", no_batching)
    fallback = lm.hessian.dense(land, columns=16)
    assert refused and float((fallback - H).abs().max()) <= 1e-14 * float(H.abs().max())


def test_dense_refuses_a_large_model_with_its_memory_and_time() -> None:
    land, *_ = _landscape("mlp", False)
    with pytest.raises(
        ValueError, match=r"GiB in float64\) and about .* h of Hessian-vector products.*limit="
    ):
        lm.hessian.dense(land, limit=10)
