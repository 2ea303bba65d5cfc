"""Training trajectories: the PCA view of an optimisation path, and sharpness during training.

- :func:`pca_plane`: Li et al. 2018 (§7, "Visualizing optimization paths"): the loss on
  the plane of the top two principal directions of the checkpoints θ_0..θ_n, centred
  on the final point, with the path projected onto it. Draw it with
  :func:`lossmap.plot.trajectory`.
- :func:`gradient_descent`: full-batch gradient descent on a landscape's exact loss,
  recording the loss every step, the sharpness λ_max (top Hessian eigenvalue, block
  Lanczos) every few steps, and checkpoints: the measurement behind Cohen et al. 2021, "Gradient
  Descent on Neural Networks Typically Occurs at the Edge of Stability" (ICLR), where
  λ_max rises until it hovers at 2/η. Draw it with :func:`lossmap.plot.sharpness_history`.
- :func:`snapshot`: a detached copy of a model's trainable parameters (a checkpoint).

The caller's model is never touched: :func:`gradient_descent` moves a point through
the landscape's functional loss, not the module's parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor, nn

from lossmap import vectors as V
from lossmap.directions import check_checkpoints, pca, project
from lossmap.evaluate import Progress
from lossmap.hessian import Eigen, eigenvalues
from lossmap.landscape import Landscape
from lossmap.results import Surface
from lossmap.slices import plane

if TYPE_CHECKING:
    from lossmap.store import Journal

__all__ = [
    "SharpnessHistory",
    "auto_span",
    "checkpoint_values",
    "gradient_descent",
    "pca_plane",
    "snapshot",
    "warm_lambda_max",
]


def snapshot(model: nn.Module) -> V.Vector:
    """A detached copy of ``model``'s trainable parameters, keyed like ``named_parameters()``."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def auto_span(
    coords: np.ndarray, *, margin: float = 0.25, min_ratio: float = 0.25
) -> list[tuple[float, float]]:
    """Per-axis ``(lo, hi)`` covering the projected path with a margin.

    Each axis gets ``[min - margin w, max + margin w]`` with ``w`` its extent, widened
    to at least ``min_ratio`` times the widest axis (a path that barely leaves PC1
    still gets a readable second axis). 0 (the final point) is always inside.

    >>> auto_span(np.array([[4.0, 2.0], [0.0, 0.0]]), margin=0.25)
    [(-1.0, 5.0), (-0.5, 2.5)]
    >>> auto_span(np.array([[4.0, 0.0], [0.0, 0.0]]), margin=0.25)
    [(-1.0, 5.0), (-0.75, 0.75)]
    """
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 1 or not np.all(np.isfinite(c)):
        raise ValueError(f"coords must be a finite [n_points, n_axes] array, got shape {c.shape}")
    lo = np.minimum(c.min(axis=0), 0.0)
    hi = np.maximum(c.max(axis=0), 0.0)
    width = hi - lo
    floor = min_ratio * float(width.max()) if width.max() > 0 else 1.0
    out = []
    for a, b, w in zip(lo, hi, width, strict=True):
        if w < floor:
            mid = 0.5 * (a + b)
            a, b, w = mid - floor / 2, mid + floor / 2, floor
        out.append((float(a - margin * w), float(b + margin * w)))
    return out


def pca_plane(
    land: Landscape,
    checkpoints: Sequence[Mapping[str, Tensor]],
    *,
    span: object = None,
    margin: float = 0.25,
    steps: int | tuple[int, int] = 41,
    ignore: Sequence[str] = (),
    center: bool = True,
    labels: Sequence[float] | None = None,
    datasets: Sequence[str] | None = None,
    strategy: str = "auto",
    progress: Progress | None = None,
    journal: Journal | None = None,
) -> tuple[Surface, np.ndarray]:
    """The loss on the PCA plane of a training trajectory, and the path projected onto it.

    The plane is ``θ_n + α d1 + β d2`` with θ_n = ``checkpoints[-1]`` and d1, d2 the
    top principal directions of the checkpoints (:func:`lossmap.directions.pca`: unit
    norm, so α, β are distances in parameter space); the path's coordinates are
    ``c_i = (⟨θ_i − θ_n, d1⟩, ⟨θ_i − θ_n, d2⟩)`` (:func:`lossmap.directions.project`),
    so the final point sits at (0, 0). The checkpoints themselves generally lie off
    the plane: the loss drawn under a projected point is not the checkpoint's loss.
    That one is in ``meta["checkpoint_losses"]`` (also ``meta["trajectory"]["values"]``),
    evaluated with each checkpoint's own buffers when it holds them (BatchNorm running
    statistics: pass state dicts), see :func:`checkpoint_values`.

    Args:
        land: the landscape (model, loss, data).
        checkpoints: parameter dicts or state dicts θ_0..θ_n in training order.
        span: ``r``, ``(lo, hi)`` or one pair per axis; default (``None``): cover the
            projected path with a ``margin`` (see :func:`auto_span`).
        margin: extra room around the path, as a fraction of its extent per axis.
        steps: grid points per axis (an int or a pair).
        ignore: parameters left out of the PCA (see :func:`lossmap.directions.pca`).
        center: centre the checkpoints before the SVD (Li et al.'s code does).
        labels: one number per checkpoint (epoch, step) stored with the path.
        datasets, strategy, progress, journal: as in :func:`lossmap.plane`.

    Returns:
        ``(surface, coords)``: the :class:`~lossmap.results.Surface` (its
        ``meta["trajectory"]`` holds ``coords``, ``labels``, ``explained_variance_ratio``,
        ``n_checkpoints`` and the loss/metrics ``values`` at the checkpoints), and
        ``coords`` as an array ``[n_checkpoints, 2]``.
    """
    cps = check_checkpoints(checkpoints, land)
    if labels is not None and len(labels) != len(cps):
        raise ValueError(f"labels has {len(labels)} entries for {len(cps)} checkpoints")
    final = cps[-1]
    d1, d2 = pca(cps, n=2, ignore=ignore, center=center, land=land)
    coords = project(cps, [d1, d2], final)
    if span is None:
        span = auto_span(coords, margin=margin)
    surf = plane(
        land,
        d1,
        d2,
        span=span,
        steps=steps,
        origin=final,
        datasets=datasets,
        strategy=strategy,
        progress=progress,
        journal=journal,
    )
    values = checkpoint_values(land, checkpoints, datasets=datasets, strategy=strategy)
    surf.meta["checkpoint_losses"] = values
    surf.meta["trajectory"] = {
        "coords": coords.tolist(),
        "labels": None if labels is None else [float(x) for x in labels],
        "explained_variance_ratio": list(d1.meta["explained_variance_ratios"]),  # type: ignore[call-overload]
        "n_checkpoints": len(cps),
        "centered": bool(center),
        "distance_to_final": [float(V.norm(V.sub(c, final))) for c in cps],
        "values": values,
    }
    return surf, coords


def checkpoint_values(
    land: Landscape,
    checkpoints: Sequence[Mapping[str, Tensor]],
    *,
    datasets: Sequence[str] | None = None,
    strategy: str = "auto",
) -> dict[str, list[float]]:
    """Loss and metrics at each checkpoint: ``{"<data set>/<stat>": [one per checkpoint]}``.

    A checkpoint that holds buffers (a state dict of a BatchNorm model) is evaluated
    with its own running statistics, not with those of ``land``; parameter dicts use
    ``land``'s buffers.
    """
    cps = check_checkpoints(checkpoints, land)
    own = [any(k in c for k in land.fixed) for c in checkpoints]
    if not any(own):
        vals = land.evaluate(cps, datasets=datasets, strategy=strategy)
        return {k: np.asarray(v).tolist() for k, v in vals.items() if "/" in k}
    out: dict[str, list[float]] = {}
    for c, p, has_buffers in zip(checkpoints, cps, own, strict=True):
        at = land.at(c, strict=False) if has_buffers else land
        for k, v in at.evaluate([p], datasets=datasets, strategy=strategy).items():
            if "/" in k:
                out.setdefault(k, []).append(float(v[0]))
    return out


# ------------------------------------------------------------------ sharpness during GD
@dataclass
class SharpnessHistory:
    """What :func:`gradient_descent` recorded.

    ``loss[t]`` is the full-batch loss at step ``t`` (``t = 0..steps``, before the
    update of step ``t``); ``sharpness[j]`` is λ_max at step ``sharpness_steps[j]``;
    ``checkpoints[j]`` the parameters at ``checkpoint_steps[j]``.
    """

    lr: float
    loss: np.ndarray
    sharpness_steps: np.ndarray
    sharpness: np.ndarray
    matvecs: int
    seconds: float
    checkpoint_steps: np.ndarray
    checkpoints: list[V.Vector] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        """``2/η``: the stability limit of GD on a quadratic with curvature λ_max."""
        return 2.0 / self.lr

    @property
    def steps(self) -> np.ndarray:
        """``0..len(loss)-1``: the step index of each loss value."""
        return np.arange(len(self.loss))


def _loss_and_grad(land: Landscape, point: V.Vector) -> tuple[float, V.Vector]:
    """The data-set mean loss at ``point`` and its gradient (the derivative core)."""
    value, grad = land.value_and_grad(point)
    return value, {k: g.detach() for k, g in grad.items()}


def _check_gd_arguments(
    lr: object, steps: object, sharpness_every: object, checkpoint_every: object, method: object
) -> None:
    if method not in ("block", "lanczos"):
        raise ValueError(f"method must be 'block' or 'lanczos', got {method!r}")
    if not (isinstance(lr, int | float) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not isinstance(sharpness_every, int) or sharpness_every < 0:
        raise ValueError(f"sharpness_every must be an integer >= 0, got {sharpness_every!r}")
    if checkpoint_every is not None and (
        not isinstance(checkpoint_every, int) or checkpoint_every < 1
    ):
        raise ValueError(
            f"checkpoint_every must be a positive integer or None, got {checkpoint_every!r}"
        )


def warm_lambda_max(
    land: Landscape,
    prev: np.ndarray | None,
    *,
    tol: float,
    seed: int,
    step: int,
    method: str = "block",
    point: V.Vector | None = None,
    max_iter: int | None = None,
) -> Eigen:
    """λ_max at ``point`` (θ0 when ``None``) by :func:`lossmap.hessian.eigenvalues`,
    warm-started from the previous top eigenvector ``prev`` (flat, or ``None`` for a cold
    start); the random part is seeded by ``(seed, step)``. The warm start of
    :func:`gradient_descent` and of :class:`lossmap.track.Tracker`.

    ``"block"``: ``prev`` is one column of the block, the others are random.
    ``"lanczos"``: the start is ``prev`` plus an equally weighted random unit vector."""
    rng_seed = int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
    v0, start_seed = prev, rng_seed
    if method != "block" and prev is not None:
        rnd = np.random.default_rng(rng_seed).standard_normal(prev.shape[0])
        v0, start_seed = prev / np.linalg.norm(prev) + rnd / np.linalg.norm(rnd), seed
    return eigenvalues(
        land, 1, tol=tol, seed=start_seed, point=point, v0=v0, max_iter=max_iter, method=method
    )


def gradient_descent(
    land: Landscape,
    *,
    lr: float,
    steps: int,
    sharpness_every: int = 10,
    checkpoint_every: int | None = None,
    tol: float = 1e-4,
    seed: int = 0,
    stop_loss: float | None = None,
    callback: Callable[[int, float, float | None], None] | None = None,
    warm_start: bool = True,
    method: str = "block",
) -> SharpnessHistory:
    """Full-batch gradient descent from θ0, recording the loss and the sharpness λ_max.

    ``θ_{t+1} = θ_t − η ∇L(θ_t)`` on the landscape's exact data-set mean loss (its
    default data set), with λ_max(θ_t) = the top Hessian eigenvalue by block Lanczos
    (:func:`lossmap.hessian.eigenvalues`, ``tol`` relative) every ``sharpness_every``
    steps and at the last step. GD on a quadratic with curvature λ diverges along that
    eigenvector when λ > 2/η; Cohen et al. 2021 observe that on neural networks λ_max
    first rises ("progressive sharpening") and then hovers just above 2/η while the
    loss keeps falling, non-monotonically ("edge of stability").

    Args:
        land: the landscape; training starts from its θ0 (``land.point()``); the model
            is not modified.
        lr: the step size η.
        steps: number of GD updates.
        sharpness_every: measure λ_max every this many steps (0: never).
        checkpoint_every: keep θ_t every this many steps (and the last); ``None``: none.
        tol: relative accuracy of each λ_max.
        seed: seeds the random start vectors.
        stop_loss: stop early once the loss is below this value (or is not finite).
        callback: ``callback(step, loss, lambda_max or None)`` after each step's
            measurements (e.g. progress printing).
        warm_start: start each measurement after the first from the previous top
            eigenvector: one column of the block, the others random (seeded by
            ``seed`` and the step). Fewer HVPs than random blocks; the random columns
            keep the top eigenvalue within reach when the top two swap.
        method: ``"block"`` (the default) or ``"lanczos"`` (single-vector, from the
            previous top vector plus an equally weighted random one; for comparison:
            it can return the second of a cluster, :func:`lossmap.hessian.eigenvalues`).

    Returns:
        :class:`SharpnessHistory`.
    """
    _check_gd_arguments(lr, steps, sharpness_every, checkpoint_every, method)
    theta = land.point()
    losses: list[float] = []
    lam_steps: list[int] = []
    lams: list[float] = []
    cp_steps: list[int] = []
    cps: list[V.Vector] = []
    matvecs = 0
    prev: np.ndarray | None = None  # the last top eigenvector (warm starts)
    t0 = time.perf_counter()
    for t in range(steps + 1):
        loss, g = _loss_and_grad(land, theta)
        losses.append(loss)
        last = t == steps or not np.isfinite(loss) or (stop_loss is not None and loss < stop_loss)
        lam: float | None = None
        if sharpness_every and (t % sharpness_every == 0 or last) and np.isfinite(loss):
            start = prev if warm_start else None
            eig = warm_lambda_max(
                land, start, tol=tol, seed=seed, step=t, method=method, point=theta
            )
            if eig.vectors:
                prev = V.flatten(eig.vectors[0]).double().cpu().numpy()
            lam = float(eig.values[0])
            matvecs += eig.matvecs
            lam_steps.append(t)
            lams.append(lam)
        if checkpoint_every and (t % checkpoint_every == 0 or last):
            cp_steps.append(t)
            cps.append(V.clone(theta))
        if callback is not None:
            callback(t, loss, lam)
        if last:
            break
        theta = {k: theta[k] - lr * g[k] for k in theta}
    return SharpnessHistory(
        lr=float(lr),
        loss=np.asarray(losses),
        sharpness_steps=np.asarray(lam_steps, dtype=np.int64),
        sharpness=np.asarray(lams),
        matvecs=matvecs,
        seconds=time.perf_counter() - t0,
        checkpoint_steps=np.asarray(cp_steps, dtype=np.int64),
        checkpoints=cps,
        meta={
            "tol": tol,
            "seed": seed,
            "sharpness_every": sharpness_every,
            "warm_start": warm_start,
            "method": method,
        },
    )
