"""The GGN, the Fisher and parameter blocks against ground truth: closed forms,
``torch.func`` Jacobians and per-sample gradients, dense float64 Hessians."""

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap
from torch.utils.data import DataLoader, TensorDataset

import lossmap as lm
from lossmap import hessian as H
from lossmap.ggn import EmpiricalFisherOperator, FisherOperator, GGNOperator


def _mlp(sizes: list[int], seed: int, last_activation: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).double()


def _data(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dense(op) -> np.ndarray:  # type: ignore[no-untyped-def]
    return H.dense(op).numpy()


def _jacobian(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """``∂ f(x) / ∂θ``, ``[n * outputs, parameters]``, by ``torch.func.jacrev``."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    return torch.cat([jac[k].reshape(-1, params[k].numel()) for k in params], dim=1).numpy()


@pytest.fixture(scope="module")
def mlp_ce() -> lm.Landscape:
    """A 4-6-3 tanh MLP on 37 samples in batches of 8 (8, 8, 8, 8, 5), cross-entropy."""
    x = _data(37, 4, 0)
    y = torch.randint(0, 3, (37,), generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    return lm.Landscape(_mlp([4, 6, 3], 0), nn.CrossEntropyLoss(), data=loader)


# ------------------------------------------------------------------ the GGN
def test_logistic_regression_ggn_is_the_hessian_closed_form() -> None:
    """At scikit-learn's optimum, GGN = Hessian = Aᵀ diag(p(1-p)) A / n (A = [x, 1])."""
    from sklearn.linear_model import LogisticRegression

    land = lm.examples.logistic_regression()
    x, y = lm.examples.logistic_regression_data()
    fit = LogisticRegression(C=1.0, tol=1e-10, max_iter=1000).fit(x.numpy(), y.numpy()[:, 0])
    point = {"weight": torch.tensor(fit.coef_), "bias": torch.tensor(fit.intercept_)}
    a = np.hstack([x.numpy(), np.ones((len(x), 1))])
    p = 1 / (1 + np.exp(-(a @ np.concatenate([fit.coef_[0], fit.intercept_]))))
    closed = (a * (p * (1 - p))[:, None]).T @ a / len(x)
    ggn = _dense(GGNOperator(land, point))
    np.testing.assert_allclose(ggn, closed, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ggn, H.dense(land, point).numpy(), rtol=1e-10, atol=1e-14)


def test_mse_ggn_is_jtj_over_n_with_uneven_batches() -> None:
    """MSE (mean over n samples and C = 2 outputs) on an MLP with a linear last layer:
    G = 2 JᵀJ / (n C), J from ``jacrev``; batches of 5 over 23 samples are exact."""
    x, model = _data(23, 3, 2), _mlp([3, 5, 2], 3)
    target = _data(23, 2, 4)
    jac = _jacobian(model, x)
    expected = 2 * jac.T @ jac / (23 * 2)
    for data in ((x, target), DataLoader(TensorDataset(x, target), batch_size=5)):
        for reuse in (True, False):
            land = lm.Landscape(model, nn.MSELoss(), data=data)
            np.testing.assert_allclose(
                _dense(GGNOperator(land, reuse_graph=reuse)), expected, rtol=1e-10, atol=1e-15
            )
    # a single product, not only the batched columns
    op = GGNOperator(lm.Landscape(model, nn.MSELoss(), data=(x, target)))
    v = np.random.default_rng(0).standard_normal(op.shape[0])
    np.testing.assert_allclose(op @ v, expected @ v, rtol=1e-10, atol=1e-15)
    assert op.matvecs == 1


def test_ggn_of_a_linear_model_is_its_hessian_and_the_hessian_differs_otherwise(mlp_ce) -> None:
    """Least squares: G = H exactly; a tanh MLP with cross-entropy: G ≠ H (the
    residual term), and G is positive semi-definite."""
    land = lm.examples.linear_regression()
    np.testing.assert_allclose(_dense(GGNOperator(land)), H.dense(land).numpy(), rtol=1e-12)
    g, h = _dense(GGNOperator(mlp_ce)), H.dense(mlp_ce).numpy()
    assert np.linalg.norm(g - h) > 1e-3 * np.linalg.norm(h)
    assert np.linalg.eigvalsh(g)[0] > -1e-12


# --------------------------------------------------------------- the Fisher
def test_fisher_converges_to_the_ggn_for_cross_entropy(mlp_ce) -> None:
    """E over sampled labels of the Fisher is the GGN for cross-entropy: the relative
    error falls like 1/√S (about 10x from S = 20 to 2,000)."""
    g = _dense(GGNOperator(mlp_ce))
    err = {
        s: np.linalg.norm(_dense(FisherOperator(mlp_ce, mc_samples=s, seed=5)) - g)
        / np.linalg.norm(g)
        for s in (20, 2000)
    }
    assert err[2000] < 0.03
    assert err[2000] < err[20] / 4
    again = _dense(FisherOperator(mlp_ce, mc_samples=20, seed=5))  # seeded: the same matrix
    np.testing.assert_array_equal(again, _dense(FisherOperator(mlp_ce, mc_samples=20, seed=5)))


@pytest.mark.parametrize("criterion", [nn.MSELoss(), nn.MSELoss(reduction="sum")])
def test_fisher_of_squared_error_has_the_loss_scale(criterion) -> None:
    """MSE over C = 3 outputs, y ~ N(f, I/2): E[F] = G for the mean and the sum."""
    x, model = _data(30, 2, 6), _mlp([2, 4, 3], 7)
    land = lm.Landscape(model, criterion, data=(x, _data(30, 3, 8)))
    g = _dense(GGNOperator(land))
    f = _dense(FisherOperator(land, mc_samples=3000, seed=0))
    assert np.linalg.norm(f - g) / np.linalg.norm(g) < 0.03


def test_empirical_fisher_is_the_mean_outer_product_of_per_sample_gradients(mlp_ce) -> None:
    """(1/N) Σ g_i g_iᵀ with g_i from ``vmap(grad)`` over the samples."""
    model = mlp_ce.model
    x, y = (torch.cat(t) for t in zip(*mlp_ce.datasets["train"].batches, strict=True))
    params = {k: p.detach() for k, p in model.named_parameters()}

    def loss(p, xi, yi):  # type: ignore[no-untyped-def]
        return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([g[k].reshape(len(x), -1) for k in params], dim=1).numpy()
    np.testing.assert_allclose(
        _dense(EmpiricalFisherOperator(mlp_ce)), flat.T @ flat / len(x), rtol=1e-10, atol=1e-15
    )


class _Rank:
    """A stand-in for ``distributed.Ranks``: rank ``rank`` of ``world``, whose
    ``all_sum`` leaves this rank's share as it is (the test sums the shares itself)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def all_sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(tensors)


def test_shares_of_ranks_sum_to_the_whole(mlp_ce) -> None:
    """Under torchrun each rank takes its share of the samples (cut across batch
    borders) with N the whole data set's size: the shares' GGN and empirical Fisher
    sum to the single process's."""
    for cls in (GGNOperator, EmpiricalFisherOperator):
        whole = _dense(cls(mlp_ce))
        parts = [_dense(cls(mlp_ce.distribute(_Rank(r, 3)))) for r in range(3)]  # type: ignore[arg-type]
        assert np.linalg.norm(parts[0]) > 0.1 * np.linalg.norm(whole)
        np.testing.assert_allclose(sum(parts), whole, rtol=1e-10, atol=1e-15)


# ------------------------------------------------------------------- blocks
def test_blocks_are_blocks_of_the_dense_matrices(mlp_ce) -> None:
    """A block's dense matrix is the block of the full dense Hessian (and GGN);
    eigenvectors of a block come back as dicts over the block alone."""
    full_h, full_g = H.dense(mlp_ce).numpy(), _dense(GGNOperator(mlp_ce))
    names = list(mlp_ce.theta0)
    sizes = np.cumsum([0] + [t.numel() for t in mlp_ce.theta0.values()])
    sel = np.r_[sizes[2] : sizes[4]]  # "2.weight", "2.bias"
    np.testing.assert_allclose(
        H.dense(mlp_ce, params=["2.*"]).numpy(), full_h[np.ix_(sel, sel)], rtol=1e-10, atol=1e-15
    )
    op = GGNOperator(mlp_ce, params="2.*")
    assert op.shape == (len(sel), len(sel)) and list(op.point) == names[2:]
    np.testing.assert_allclose(_dense(op), full_g[np.ix_(sel, sel)], rtol=1e-10, atol=1e-15)
    e = H.eigenvalues(H.HessianOperator(mlp_ce, params=["0.weight", "2.bias"]), 2, tol=1e-10)
    idx = np.r_[sizes[0] : sizes[1], sizes[3] : sizes[4]]
    np.testing.assert_allclose(
        e.values, np.linalg.eigvalsh(full_h[np.ix_(idx, idx)])[::-1][:2], rtol=1e-8
    )
    assert list(e.vectors[0]) == ["0.weight", "2.bias"]


def test_curvature_functions_run_unchanged_on_the_operators(mlp_ce) -> None:
    """eigenvalues, trace and spectral_density take the GGN and Fisher operators."""
    for op in (GGNOperator(mlp_ce), FisherOperator(mlp_ce, mc_samples=2, seed=1)):
        exact = np.linalg.eigvalsh(_dense(op))
        e = H.eigenvalues(op, 3)
        np.testing.assert_allclose(e.values, exact[::-1][:3], rtol=1e-7)
        assert set(e.vectors[0]) == set(mlp_ce.theta0)
        assert H.trace(op, matvecs=op.shape[0]).value == pytest.approx(exact.sum(), rel=1e-10)
        sd = H.spectral_density(op, steps=op.shape[0], deflate=False)
        # n Lanczos steps from one probe: the nodes are the eigenvalues, the weights sum to 1
        assert sd.nodes.max() == pytest.approx(exact[-1], rel=1e-8)
        assert sd.weights.sum() == pytest.approx(1.0, rel=1e-10)


def test_bad_input_is_one_line() -> None:
    land = lm.examples.linear_regression()
    with pytest.raises(ValueError, match=r"matches no parameter; the names are: weight, bias"):
        H.HessianOperator(land, params=["layer3.*"])
    quad = lm.examples.quadratic(np.diag([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"Landscape\(model, criterion, data=...\)"):
        GGNOperator(quad)
    x = _data(5, 2, 0)
    l1 = lm.Landscape(nn.Linear(2, 1).double(), nn.L1Loss(), data=(x, x[:, :1]))
    with pytest.raises(ValueError, match="negative log-likelihood.*use GGNOperator"):
        FisherOperator(l1) @ np.ones(3)
    with pytest.raises(ValueError, match="mc_samples"):
        FisherOperator(land, mc_samples=0)


# ---------------------------------------------------------------------- CLI
def test_cli_matrix_ggn_on_least_squares(tmp_path: Path, capsys) -> None:
    """`lossmap hessian --matrix ggn` on the linear example: G = H = 2 AᵀA / n."""
    out = tmp_path / "g"
    code, stdout, err = run_cli(
        ["hessian", "--example", "linear", "--k", "2", "--matrix", "ggn", "--out", str(out)], capsys
    )
    assert code == 0, err
    x, _ = lm.examples.linear_regression_data()
    a = np.hstack([x.numpy(), np.ones((200, 1))])
    exact = np.linalg.eigvalsh(2 * a.T @ a / 200)
    with open(out / "eigenvalues.csv") as f:
        top = [float(r["eigenvalue"]) for r in csv.DictReader(f) if r["which"] == "largest"]
    np.testing.assert_allclose(top, exact[::-1], rtol=1e-8)
    assert "curvature (ggn, train" in stdout


def test_cli_per_layer_matches_dense_blocks(tmp_path: Path, factories: str, capsys) -> None:
    """`--per-layer` on a 4-6-3 MLP: one row per layer (weight and bias together), the
    top eigenvalue and the exact trace of each diagonal block of the dense Hessian."""
    import userfactories  # type: ignore[import-not-found]

    out = tmp_path / "p"
    code, stdout, err = run_cli(
        ["hessian", "--model", f"{factories}:good", "--per-layer", "--out", str(out)], capsys
    )
    assert code == 0, err
    net, crit, data = userfactories.good()
    full = H.dense(lm.Landscape(net, crit, data=data)).numpy()
    with open(out / "per_layer.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["layer"], int(r["parameters"])) for r in rows] == [("0", 30), ("2", 21)]
    for r, sel in zip(rows, (np.r_[0:30], np.r_[30:51]), strict=True):
        block = full[np.ix_(sel, sel)]
        assert float(r["top_eigenvalue"]) == pytest.approx(np.linalg.eigvalsh(block)[-1], rel=1e-5)
        assert float(r["trace"]) == pytest.approx(np.trace(block), rel=1e-5)
        assert r["trace_method"] == "exact"
    assert (out / "per_layer.png").stat().st_size > 0
    assert "diagonal block of each layer" in stdout and " 2 " in stdout
