"""Known losses reduced by formula over many points at once: the batched loss kernels.

The engine's features-first path (``affine-vmap`` on an MLP) ends with the logits of a
chunk of points, ``[P, *output]``. For known criteria with their default metrics these
functions give every point's per-batch sums ``[P, S]`` in a few large operations, much
faster on CPU than vmapping :meth:`lossmap.objective.Objective.output_stats`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lossmap.objective import Objective, binary_accuracy

__all__ = ["batched_output_stats", "classes_first_ok"]

# Target dtypes that hold class indices.
_CLASS_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

# BCE's softplus switches to the identity above this logit: log(1 + eˣ) = x there to
# double precision.
_SOFTPLUS_THRESHOLD = 50


def classes_first_ok(objective: Objective) -> bool:
    """Whether :func:`batched_output_stats` takes this objective's logits laid out
    ``[P, C, N]`` (classes first)."""
    return objective.fused_cross_entropy


def batched_output_stats(
    objective: Objective,
    out: Tensor,
    target: Tensor,
    n: int,
    *,
    classes_first: bool = False,
    owned: bool = False,
) -> Tensor | None:
    """``objective.output_stats`` for ``out: [P, *output]`` (P points at once), ``[P, S]``.

    Known criteria with their default metrics only (cross-entropy, BCE-with-logits,
    MSE, with mean or sum reduction); ``None`` otherwise (the caller then vmaps
    ``output_stats``, which is much slower for these losses on CPU).

    Args:
        objective: whose criterion and metrics to compute.
        out: the model's outputs at P points.
        target: the batch's targets (shared by every point).
        n: the batch's number of samples.
        classes_first: cross-entropy logits are ``[P, C, N]``; reducing over the class
            dimension then runs along contiguous samples, several times faster on CPU
            when there are few classes.
        owned: ``out`` is a scratch tensor the caller gives up, which cross-entropy
            then overwrites instead of allocating its like.
    """
    crit = objective.criterion
    reduction = getattr(crit, "reduction", None)
    if reduction not in ("mean", "sum"):
        return None
    metrics = objective.metrics
    if (
        objective.fused_cross_entropy
        and target.dtype in _CLASS_INDEX_DTYPES
        and target.ndim == 1
        and out.ndim == 3
    ):
        return _cross_entropy(
            out, target, classes_first=classes_first, owned=owned, with_accuracy=bool(metrics)
        )
    if type(crit) is nn.BCEWithLogitsLoss and crit.weight is None and crit.pos_weight is None:
        if not (metrics == {} or metrics == {"accuracy": binary_accuracy}):
            return None
        return _bce_with_logits(
            out, target, n, mean=reduction == "mean", with_accuracy=bool(metrics)
        )
    if type(crit) is nn.MSELoss and not metrics:
        dims = tuple(range(1, out.ndim))
        sq = (out - target.expand_as(out)) ** 2
        return (sq.mean(dim=dims) * n if reduction == "mean" else sq.sum(dim=dims)).unsqueeze(1)
    return None


def _cross_entropy(
    out: Tensor, target: Tensor, *, classes_first: bool, owned: bool, with_accuracy: bool
) -> Tensor:
    """Summed cross-entropy (and correct arg-max) per point, ``[P, 1 or 2]``."""
    cdim = 1 if classes_first else 2
    p, c = out.shape[0], out.shape[cdim]
    top = out.amax(dim=cdim, keepdim=True)
    onehot = torch.nn.functional.one_hot(target, c).to(out.dtype)  # [N, C]
    if classes_first:
        onehot = onehot.t()
    onehot = onehot.reshape(-1)
    index = target.view(1, 1, -1) if classes_first else target.view(1, -1, 1)
    full = [-1 if d == cdim else s for d, s in enumerate(out.shape)]
    at_target = index.expand(*full)  # gathers each sample's target logit
    # (counted before ``out`` may be overwritten below)
    correct = _correct(out, top, target, onehot, at_target, cdim) if with_accuracy else None
    # With s = out − max (in place when the caller gave ``out`` up), the loss is
    # Σ_n log Σ_c exp s[c, n] − Σ_n s[y_n, n]: two sums of small terms near a
    # minimum (no cancellation), the second one matrix-vector product with the
    # targets' one-hot mask, a fraction of a gather's cost on CPU.
    shifted = out.sub_(top) if owned else out - top
    picked_sum = shifted.reshape(p, -1) @ onehot
    if bool(picked_sum.isnan().any()):
        # 0 · −inf is NaN: a point with a −inf logit outside the targets (its loss
        # may be finite) takes the gather.
        picked_sum = shifted.gather(cdim, at_target).sum(dim=(1, 2))
    lse_sum = shifted.exp_().sum(dim=cdim).log_().sum(dim=-1)
    cols = [lse_sum - picked_sum]
    if correct is not None:
        cols.append(correct)
    return torch.stack(cols, dim=1)


def _correct(
    out: Tensor, top: Tensor, target: Tensor, onehot: Tensor, at_target: Tensor, cdim: int
) -> Tensor:
    """Per point, the samples whose arg-max is the target, ``[P]``.

    Correct iff the target is the arg-max, ties going to the first maximum as argmax
    does. Comparisons against the maximum ``top`` already computed cost a fraction of
    an argmax over the (few) classes, slow on CPU.
    """
    p, c = out.shape[0], out.shape[cdim]
    classes_first = cdim == 1
    ismax = out == top
    if int(ismax.sum(dim=cdim).amax()) <= 1:
        # At most one maximum per sample (no ties): correct iff it is the target's (a
        # sample with NaN logits has none, and is not correct).
        return ismax.reshape(p, -1).to(out.dtype) @ onehot
    # Ties: also no lower class index may reach the maximum.
    picked = out.gather(cdim, at_target)
    classes = torch.arange(c, device=out.device)
    lower = (
        classes.view(1, -1, 1) < target.view(1, 1, -1)
        if classes_first
        else classes.view(1, 1, -1) < target.view(1, -1, 1)
    )
    earlier = (ismax & lower).any(dim=cdim)
    hit = (picked.squeeze(cdim) == top.squeeze(cdim)) & ~earlier
    return hit.to(out.dtype).sum(dim=-1)


def _bce_with_logits(
    out: Tensor, target: Tensor, n: int, *, mean: bool, with_accuracy: bool
) -> Tensor:
    """Summed BCE-with-logits (and binary accuracy) per point, ``[P, 1 or 2]``."""
    dims = tuple(range(1, out.ndim))
    t = target.expand_as(out)
    # BCE(x, t) = softplus(x) − t x: one elementwise pass and a mat-vec for the t x term.
    flat = out.reshape(out.shape[0], -1)
    tvec = t[0].reshape(-1).to(out.dtype)
    sums = (
        torch.nn.functional.softplus(flat, threshold=_SOFTPLUS_THRESHOLD).sum(dim=1) - flat @ tvec
    )
    cols = [sums * (n / flat.shape[1]) if mean else sums]
    if with_accuracy:
        cols.append(((out > 0) == (t > 0.5)).to(out.dtype).mean(dim=dims) * n)
    return torch.stack(cols, dim=1)
