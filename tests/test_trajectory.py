"""PCA directions of a trajectory, projections, the PCA plane, and GD sharpness histories."""

from __future__ import annotations

import copy

import matplotlib
import numpy as np
import pytest
import torch
from conftest import assert_unchanged, state_of
from torch import nn

import lossmap as lm
from lossmap import hessian, plot, trajectory
from lossmap import vectors as V
from lossmap.directions import pca, project
from lossmap.trajectory import auto_span, gradient_descent, pca_plane, snapshot

matplotlib.use("Agg")

SHAPES = {"layer.weight": (5, 6), "layer.bias": (5,), "out.weight": (2, 5)}


def _vec(flat: np.ndarray) -> dict[str, torch.Tensor]:
    """A float64 parameter dict shaped like SHAPES from a flat numpy vector."""
    out, i = {}, 0
    for k, s in SHAPES.items():
        n = int(np.prod(s))
        out[k] = torch.tensor(flat[i : i + n].reshape(s), dtype=torch.float64)
        i += n
    return out


def _flat(v: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([v[k].reshape(-1).double().numpy() for k in SHAPES])


P = sum(int(np.prod(s)) for s in SHAPES.values())


def _plane_trajectory(
    coeffs: np.ndarray, seed: int = 0
) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    """θ_i = base + coeffs[i, 0] u + coeffs[i, 1] v with orthonormal u, v (returned [2, P])."""
    rng = np.random.default_rng(seed)
    uv, _ = np.linalg.qr(rng.normal(size=(P, 2)))
    base = rng.normal(size=P)
    cps = [_vec(base + a * uv[:, 0] + b * uv[:, 1]) for a, b in coeffs]
    return cps, uv.T


def _dirs_matrix(dirs: list) -> np.ndarray:
    return np.stack([_flat(d) for d in dirs])


# ------------------------------------------------------------------------ pca: ground truth
def test_pca_exact_axes_when_variances_differ() -> None:
    # Centred, uncorrelated coordinates with variances 25 : 1: the principal axes are u, v.
    rng = np.random.default_rng(1)
    a = rng.normal(size=(12, 2))
    q, _ = np.linalg.qr(a - a.mean(axis=0))
    c = q * np.array([5.0, 1.0])
    cps, uv = _plane_trajectory(c)
    d1, d2 = pca(cps, n=2)
    D = _dirs_matrix([d1, d2])
    assert abs(D[0] @ uv[0]) == pytest.approx(1.0, abs=1e-12)
    assert abs(D[1] @ uv[1]) == pytest.approx(1.0, abs=1e-12)
    ratios = d1.meta["explained_variance_ratios"]
    np.testing.assert_allclose(ratios, [25 / 26, 1 / 26], rtol=1e-12)
    assert d1.meta["kind"] == "pca" and d1.meta["n_checkpoints"] == 12
    assert d1.meta["normalization"] == "unit" and d1.meta["centered"] is True
    # Coordinates relative to the final point: ±(c_i − c_n), signed so θ_0's are >= 0.
    coords = project(cps, [d1, d2], cps[-1])
    expected = c - c[-1]
    expected *= np.sign(expected[0])
    np.testing.assert_allclose(coords, expected, atol=1e-12)
    assert np.all(coords[0] >= 0)


def test_pca_spans_the_plane_and_reproduces_coordinates() -> None:
    rng = np.random.default_rng(2)
    coeffs = np.column_stack([rng.normal(0, 10, 20), rng.normal(0, 1, 20)])
    cps, uv = _plane_trajectory(coeffs, seed=3)
    dirs = pca(cps, n=2)
    D = _dirs_matrix(dirs)
    np.testing.assert_allclose(D @ D.T, np.eye(2), atol=1e-12)  # orthonormal
    # Principal angles between span(d1, d2) and span(u, v): all cosines 1.
    cosines = np.linalg.svd(D @ uv.T, compute_uv=False)
    np.testing.assert_allclose(cosines, [1.0, 1.0], atol=1e-6)
    assert sum(dirs[0].meta["explained_variance_ratios"]) == pytest.approx(1.0, abs=1e-12)
    # The projected path is (a_i, b_i) − (a_n, b_n) up to one orthogonal transform.
    coords = project(cps, dirs, cps[-1])
    target = coeffs - coeffs[-1]
    R, *_ = np.linalg.lstsq(target, coords, rcond=None)
    np.testing.assert_allclose(target @ R, coords, atol=1e-9)
    np.testing.assert_allclose(R.T @ R, np.eye(2), atol=1e-9)
    np.testing.assert_allclose(coords[-1], [0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("center", [True, False])
def test_pca_matches_numpy_svd_on_random_data(center: bool) -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(9, P)) * rng.uniform(0.1, 3.0, size=P)
    cps = [_vec(x) for x in X]
    dirs = pca(cps, n=4, center=center)
    M = X - X[-1]
    if center:
        M = M - M.mean(axis=0)
    _, s, vt = np.linalg.svd(M, full_matrices=False)
    ratios = s**2 / np.sum(s**2)
    np.testing.assert_allclose(dirs[0].meta["explained_variance_ratios"], ratios[:4], rtol=1e-10)
    for j, d in enumerate(dirs):
        assert d.meta["explained_variance_ratio"] == pytest.approx(ratios[j], rel=1e-10)
        assert d.meta["singular_value"] == pytest.approx(s[j], rel=1e-10)
    D = _dirs_matrix(dirs)
    np.testing.assert_allclose(np.abs(np.sum(D * vt[:4], axis=1)), 1.0, atol=1e-9)
    np.testing.assert_allclose(D @ D.T, np.eye(4), atol=1e-12)


def test_pca_independent_of_key_order_and_dtype_kept() -> None:
    rng = np.random.default_rng(5)
    cps = [_vec(x) for x in rng.normal(size=(6, P))]
    rev = [dict(reversed(list(c.items()))) for c in cps]
    a, b = pca(cps, n=2), pca(rev, n=2)
    assert list(b[0]) == list(rev[0])  # keyed like the input
    for da, db in zip(a, b, strict=True):
        for k in SHAPES:
            assert torch.equal(da[k], db[k])
        assert da.meta["explained_variance_ratios"] == db.meta["explained_variance_ratios"]
    f32 = pca([{k: t.float() for k, t in c.items()} for c in cps], n=1)[0]
    assert all(t.dtype == torch.float32 for t in f32.values())
    assert float(V.norm(f32)) == pytest.approx(1.0, abs=1e-6)


def test_pca_final_only_matters_uncentred() -> None:
    rng = np.random.default_rng(6)
    cps = [_vec(x) for x in rng.normal(size=(7, P))]
    other = _vec(rng.normal(size=P))
    a = _dirs_matrix(pca(cps, n=2))
    b = _dirs_matrix(pca(cps, n=2, final=other))
    np.testing.assert_allclose(np.abs(np.sum(a * b, axis=1)), 1.0, atol=1e-10)
    c = _dirs_matrix(pca(cps, n=2, final=other, center=False))
    _, _, vt = np.linalg.svd(np.stack([_flat(x) for x in cps]) - _flat(other))
    np.testing.assert_allclose(np.abs(np.sum(c * vt[:2], axis=1)), 1.0, atol=1e-9)


def test_pca_ignore_rules() -> None:
    rng = np.random.default_rng(7)
    cps = [_vec(x) for x in rng.normal(size=(5, P))]
    d1, d2 = pca(cps, n=2, ignore=("bias",))
    assert torch.count_nonzero(d1["layer.bias"]) == 0 and torch.count_nonzero(d2["layer.bias"]) == 0
    assert d1.meta["ignored"] == ["layer.bias"] and d1.meta["ignore"] == ["bias"]
    # Same as PCA of the checkpoints with the biases removed.
    ref = pca([{k: t for k, t in c.items() if k != "layer.bias"} for c in cps], n=2)
    for d, r in zip((d1, d2), ref, strict=True):
        assert torch.allclose(d["layer.weight"], r["layer.weight"], atol=1e-12)
    (g,) = pca(cps, n=1, ignore=("out.*",))
    assert torch.count_nonzero(g["out.weight"]) == 0


def test_pca_bad_inputs() -> None:
    rng = np.random.default_rng(8)
    cps = [_vec(x) for x in rng.normal(size=(4, P))]
    with pytest.raises(ValueError, match=r"at least 2 checkpoints \(got 1\); pass the training"):
        pca(cps[:1])
    bad = dict(cps[2])
    del bad["out.weight"]
    bad["head.weight"] = torch.zeros(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"checkpoints\[2\] does not match.*missing out.weight"):
        pca([cps[0], cps[1], bad])
    wrong = {**cps[1], "layer.weight": torch.zeros(6, 5, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"layer.weight: \(6, 5\) vs expected \(5, 6\)"):
        pca([cps[0], wrong])
    with pytest.raises(ValueError, match="all 3 checkpoints are identical"):
        pca([cps[0]] * 3)
    with pytest.raises(ValueError, match="span only 1 independent direction"):
        pca(cps[:2], n=2)  # two points, centred: one direction
    with pytest.raises(ValueError, match="'norm' needs the model"):
        pca(cps, ignore=("norm",))
    with pytest.raises(ValueError, match="unknown ignore rule 'conv.*'"):
        pca(cps, ignore=("conv.*",))
    with pytest.raises(TypeError, match="list of dict"):
        pca(cps[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be a positive integer"):
        pca(cps, n=0)


# ------------------------------------------------------------------------------ project
def test_project_is_least_squares() -> None:
    rng = np.random.default_rng(9)
    pts = [_vec(x) for x in rng.normal(size=(5, P))]
    origin = _vec(rng.normal(size=P))
    dirs = [_vec(x) for x in rng.normal(size=(3, P))]  # not orthogonal, not unit
    got = project(pts, dirs, origin)
    A = _dirs_matrix(dirs).T
    B = np.stack([_flat(p) - _flat(origin) for p in pts]).T
    want, *_ = np.linalg.lstsq(A, B, rcond=None)
    np.testing.assert_allclose(got, want.T, rtol=1e-9, atol=1e-12)
    with pytest.raises(TypeError, match=r"project\(\[point\]"):
        project(pts[0], dirs, origin)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="linearly dependent"):
        project(pts, [dirs[0], V.scale(dirs[0], 2.0)], origin)
    with pytest.raises(ValueError, match=r"points\[1\] does not match origin"):
        project([pts[0], {"x": torch.zeros(1)}], dirs, origin)


# ------------------------------------------------------------------- a real trajectory
@pytest.fixture(scope="module")
def digits_run() -> tuple[lm.Landscape, list[dict[str, torch.Tensor]], dict]:
    data = lm.examples.digits_data()
    x, y = data["train"]
    model = lm.examples.make_mlp([64, 16, 10], seed=0)
    crit = nn.CrossEntropyLoss()
    cps = [snapshot(model)]
    for epoch in range(6):
        lm.examples.train(
            model, crit, x, y, epochs=1, batch_size=128, lr=0.1, optimizer="sgd", seed=epoch
        )
        cps.append(snapshot(model))
    land = lm.Landscape(model, crit, data=data)
    return land, cps, state_of(model)


def test_pca_plane_on_digits(digits_run) -> None:
    land, cps, before = digits_run
    surf, coords = pca_plane(land, cps, steps=7, labels=list(range(len(cps))))
    assert_unchanged(land.model, before)
    assert coords.shape == (len(cps), 2)
    np.testing.assert_allclose(coords[-1], [0.0, 0.0], atol=1e-6)
    dist = [float(V.norm(V.sub(c, cps[-1]))) for c in cps]
    # Projection onto orthonormal directions cannot lengthen a displacement.
    assert np.all(np.linalg.norm(coords, axis=1) <= np.asarray(dist) * (1 + 1e-6))
    assert np.linalg.norm(coords[0]) > 0.5 * dist[0]  # most of the path is in the plane
    traj = surf.meta["trajectory"]
    assert traj["coords"] == coords.tolist() and traj["labels"] == list(range(len(cps)))
    ev = traj["explained_variance_ratio"]
    assert ev[0] >= ev[1] > 0 and sum(ev) <= 1 + 1e-12
    assert [d["kind"] for d in surf.meta["directions"]] == ["pca", "pca"]
    # The auto span covers the path; the plane's origin is the final checkpoint.
    assert surf.alpha.min() < coords[:, 0].min() and surf.alpha.max() > coords[:, 0].max()
    assert surf.beta.min() < coords[:, 1].min() and surf.beta.max() > coords[:, 1].max()
    # The checkpoints' own losses: the last equals the loss at the plane's origin point.
    assert traj["values"]["train/loss"][-1] == pytest.approx(land.loss(cps[-1]), rel=1e-5)
    assert traj["values"]["train/loss"][0] > traj["values"]["train/loss"][-1]
    # The figure: path through the projected points, PCA axis labels with percentages.
    fig = plot.trajectory(surf)
    ax = fig.axes[0]
    assert ax.get_xlabel() == f"PC1 ({100 * ev[0]:.1f} %)"
    assert ax.get_ylabel().startswith("PC2 (")
    path = [ln for ln in ax.get_lines() if ln.get_label().startswith("path")]
    assert len(path) == 1
    np.testing.assert_allclose(np.asarray(path[0].get_xydata()), coords)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_pca_plane_accepts_state_dicts(digits_run) -> None:
    land, cps, _ = digits_run
    states = [{**c, "extra.buffer": torch.zeros(3)} for c in cps]
    d_ref = pca(cps, n=2)
    d_sd = pca(states, n=2, land=land)
    for a, b in zip(d_ref, d_sd, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in land.point())
    with pytest.raises(ValueError, match="does not fit the model's parameters: missing"):
        pca([{"0.weight": cps[0]["0.weight"]}, cps[1]], land=land)


def test_auto_span_contains_path_and_origin() -> None:
    c = np.array([[3.0, -0.1], [1.0, 0.2], [0.0, 0.0]])
    (a0, a1), (b0, b1) = auto_span(c, margin=0.1)
    assert a0 < 0 < 3 < a1 and b0 < -0.1 and b1 > 0.2
    assert b1 - b0 >= 0.25 * 3  # widened to a quarter of the widest axis
    with pytest.raises(ValueError, match="finite"):
        auto_span(np.array([[np.nan, 0.0]]))


# ------------------------------------------------------------------ GD and sharpness
def test_gradient_descent_on_a_quadratic() -> None:
    land = lm.examples.linear_regression()
    H = hessian.dense(land).numpy()
    lam = float(np.linalg.eigvalsh(H)[-1])
    before = state_of(land.model)
    start = {k: t + 1.0 for k, t in land.point().items()}  # away from the optimum
    land1 = land.at(start)
    stable = gradient_descent(
        land1, lr=1.8 / lam, steps=30, sharpness_every=10, checkpoint_every=15
    )
    assert_unchanged(land.model, before)
    # Constant Hessian: every λ_max measurement is its top eigenvalue.
    np.testing.assert_allclose(stable.sharpness, lam, rtol=1e-6)
    assert stable.sharpness_steps.tolist() == [0, 10, 20, 30]
    assert stable.checkpoint_steps.tolist() == [0, 15, 30] and len(stable.checkpoints) == 3
    assert stable.loss[0] == pytest.approx(land1.loss(), rel=1e-12)
    assert stable.loss[-1] < stable.loss[0]
    assert stable.threshold == pytest.approx(2 / (1.8 / lam))
    # One GD step by hand.
    g = land1.gradient()
    step1 = {k: start[k] - (1.8 / lam) * g[k] for k in start}
    assert land1.loss(step1) == pytest.approx(stable.loss[1], rel=1e-10)
    # Past 2/η < λ_max the iteration diverges along the top eigenvector.
    unstable = gradient_descent(land1, lr=2.2 / lam, steps=40, sharpness_every=0)
    assert unstable.loss[-1] > 10 * unstable.loss[0] and unstable.sharpness.size == 0
    with pytest.raises(ValueError, match="lr must be a positive number"):
        gradient_descent(land1, lr=0.0, steps=1)


def test_sharpness_history_figure() -> None:
    land = lm.examples.linear_regression()
    h = gradient_descent(
        land.at({k: t + 1 for k, t in land.point().items()}), lr=0.1, steps=20, sharpness_every=5
    )
    steps = np.arange(0, 50, 10)
    fig = plot.sharpness_history(
        {"η = 0.1": h, "tuple": (steps, np.full(5, 3.0), np.linspace(1, 0.1, 5))},
        {"tuple": 4.0},
    )
    top, bottom = fig.axes[:2]
    dashed = sorted(ln.get_ydata()[0] for ln in top.get_lines() if ln.get_linestyle() == "--")
    assert dashed == pytest.approx([4.0, 20.0])
    solid = [ln for ln in top.get_lines() if ln.get_linestyle() == "-"]
    np.testing.assert_allclose(solid[0].get_ydata(), h.sharpness)
    assert bottom.get_yscale() == "log" and len(bottom.get_lines()) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)
    with pytest.raises(ValueError, match="thresholds for unknown runs"):
        plot.sharpness_history({"a": h}, {"b": 1.0})
    with pytest.raises(TypeError, match="SharpnessHistory or a tuple"):
        plot.sharpness_history({"a": 3})


def test_gradient_descent_warm_starts_track_the_dense_top_eigenvalue() -> None:
    """λ_max along GD on a (non-quadratic) tanh MLP: with warm starts and with random
    starts, every measurement is the dense Hessian's top eigenvalue at that iterate,
    and warm starts take fewer HVPs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 5, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(5, 2, generator=g, dtype=torch.float64))
    model = lm.examples.make_mlp([5, 8, 2], activation="tanh", seed=0).double()
    land = lm.Landscape(model, nn.MSELoss(), data=(x, y))
    runs = {
        warm: gradient_descent(
            land, lr=0.5, steps=60, sharpness_every=5, checkpoint_every=5, warm_start=warm
        )
        for warm in (True, False)
    }
    for h in runs.values():
        dense = [
            float(np.linalg.eigvalsh(hessian.dense(land, point=cp).numpy())[-1])
            for cp in h.checkpoints
        ]
        np.testing.assert_allclose(h.sharpness, dense, rtol=1e-4)  # the tolerance asked for
    assert runs[True].meta["warm_start"] and not runs[False].meta["warm_start"]
    assert runs[True].matvecs < runs[False].matvecs


def test_pca_plane_evaluates_each_batchnorm_checkpoint_with_its_own_statistics() -> None:
    """Issue #17, item 2: the loss at each checkpoint of a BatchNorm model uses that
    checkpoint's running statistics (state dicts), not the final model's; it is in
    meta["checkpoint_losses"], one value per checkpoint, in order."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(dim=1)  # learnable labels
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    states = []
    for epoch in range(4):
        model.train()
        for _ in range(10):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.no_grad():  # drifting statistics: each checkpoint has its own
            model(x * (1 + epoch) + epoch)
        states.append({k: t.clone() for k, t in model.state_dict().items()})
    land = lm.Landscape(model, nn.CrossEntropyLoss(), data=(x, y))  # the final statistics
    surf, _ = trajectory.pca_plane(land, states, steps=5)
    expected = []
    for sd in states:
        m = copy.deepcopy(model)
        m.load_state_dict(sd)
        m.eval()
        with torch.no_grad():
            expected.append(float(nn.functional.cross_entropy(m(x), y)))
    got = surf.meta["checkpoint_losses"]["train/loss"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The final model's statistics would give other values for the early checkpoints.
    params_only = trajectory.checkpoint_values(
        land, [{k: s[k] for k in land.theta0} for s in states]
    )
    assert abs(params_only["train/loss"][0] - expected[0]) > 0.05
    assert surf.meta["trajectory"]["values"] == surf.meta["checkpoint_losses"]
