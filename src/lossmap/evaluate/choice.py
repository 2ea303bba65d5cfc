"""``auto``'s choice of strategy: a fixed rule of the model, the points and the data.

No timing and no free memory: the inputs are the model's structure and mode, the kind
of point set, the device type and the data's sizes, so the same command picks the same
strategy on every run, whatever the machine's load.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from lossmap._checks import choice
from lossmap.devices import Precision
from lossmap.evaluate.kernels import FLAT_NDIM, affine_plan
from lossmap.evaluate.memory import batch_and_param_bytes, output_sizes
from lossmap.evaluate.points import PointSet, Span
from lossmap.evaluate.strategies import AFFINE, LOW_PRECISION_STRATEGIES, Evaluator
from lossmap.objective import Objective

__all__ = ["choose", "choose_and_probe", "eligible", "forward_bytes"]

# CPU: a batch whose forward pass writes at most this many bytes of activations (all
# module outputs) is overhead-bound, and a chunk of points per call (vmap) beats one
# point per call; above it the batched products run slower than one point's (measured
# on 2 cores: vmap/loop 0.1-0.3x at 0.03-0.08 MB, 0.8-1.2x at 0.3-0.5 MB, 1.6-2.4x at
# 0.6-2.4 MB). Elsewhere (a GPU), where a call costs kernel launches, the bound is
# higher; it has not been measured there.
_SMALL_FORWARD_BYTES = {"cpu": 1 << 18}
_SMALL_FORWARD_BYTES_OTHER = 1 << 26

_PROBE_POINTS = 2
"""Points a many-points strategy is tried on before ``auto`` picks it."""

_REASON_CHARS = 120
"""How much of a probe's error message a reason quotes."""

_NO_BATCHING_RULE = re.compile(r"not yet implemented the batching rule for (\S+?)\.? ")
"""torch.vmap's warning where an operator has no batching rule and runs once per point
(e.g. ``scaled_dot_product_attention`` on CPU): the op is the group's capture."""


def eligible(land: Objective, points: PointSet, precision: str = "float32") -> list[str]:
    """The strategies that can run these points at ``precision``, in the order they are
    listed."""
    if precision != "float32":
        return list(LOW_PRECISION_STRATEGIES)
    out = ["loop"]
    if not land.train_mode:
        out.append("vmap")
        if isinstance(points, Span) and affine_plan(land) is not None:
            out += list(AFFINE)
    return out


def forward_bytes(land: Objective) -> int | None:
    """Bytes of activations one forward pass over the largest batch writes, or ``None``
    where unknown (data streamed from a loader)."""
    sizes = output_sizes(land)
    if sizes is None:
        return None
    biggest, _ = batch_and_param_bytes(land)
    return sizes.activation_bytes * biggest


def _probe(
    land: Objective, points: PointSet, strategy: str, dsets: Sequence[str]
) -> tuple[str, Evaluator | None]:
    """Run ``strategy`` on the first two points and the first batch: ``("", evaluator)``
    if it runs batched (the run goes on with that evaluator and its per-batch caches),
    else ``(why not, None)``: it raised, or ``torch.vmap`` ran an operator once per
    point (no batching rule; it warns), which makes it a slower loop. Whether a model
    runs under vmap is a property of its code, not of timing: the probe's answer is the
    same on every run. Other warnings the probe raises are passed on as they were."""
    ds = land.datasets[dsets[0]]
    batch = next(iter(ds))
    idx = np.arange(min(len(points), _PROBE_POINTS))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ev = Evaluator(land, points, strategy)
            ev(points.stacked(idx, ev.keys), idx, batch, cache=ds.in_memory)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:_REASON_CHARS]}", None
    slow = [m for w in caught if (m := _NO_BATCHING_RULE.search(str(w.message)))]
    for w in caught:
        if not _NO_BATCHING_RULE.search(str(w.message)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if slow:
        ops = ", ".join(dict.fromkeys(m.group(1) for m in slow))
        return f"torch.vmap has no batching rule for {ops}: it would run point by point", None
    return "", ev


def choose(
    land: Objective,
    points: PointSet,
    datasets: Sequence[str] | None = None,
    *,
    precision: str = "float32",
) -> tuple[str, str]:
    """``auto``'s strategy for these points, and the reason: a fixed rule, no timing.

    1. Training mode: ``loop`` (batch statistics and dropout are per call); a precision
       below float32: ``loop`` (autocast reaches only the model's own forward pass).
    2. A line/plane/path of an ``nn.Sequential`` whose first layer is ``Linear`` on
       ``[N, features]`` inputs and whose rest is linear layers and elementwise
       activations (an MLP): ``affine-vmap``, the features-first batched path; it does
       the work of ``affine`` as few large products (1.2-12x faster where measured).
    3. Otherwise a many-points-per-call strategy (``affine-vmap`` along a span of an
       affine-eligible ``nn.Sequential``, else ``vmap``) when one forward pass over the
       largest batch writes at most 256 KiB of activations on CPU (64 MiB elsewhere):
       the per-call overhead then dominates. Above that, or where the data are
       streamed (size unknown), a one-point strategy (``affine``, else ``loop``): the
       batched products of vmap run slower than one point's.
    4. A many-points strategy that cannot run the model (a probe on two points raised,
       or vmap ran one of its operators point by point, e.g. the fused attention of
       ``scaled_dot_product_attention`` on CPU) falls back to the one-point strategy.

    The inputs are the model's structure and mode, the kind of point set, the device
    type and the data's sizes (and the precision): the same command picks the same
    strategy on every run.

    Returns:
        ``(strategy, reason)``.
    """
    precision = choice(precision, Precision, "precision").value
    with land.mode(), torch.inference_mode():
        strategy, reason, _ = choose_and_probe(land, points, datasets, precision=precision)
    return strategy, reason


def choose_and_probe(
    land: Objective,
    points: PointSet,
    datasets: Sequence[str] | None,
    precision: str = "float32",
) -> tuple[str, str, Evaluator | None]:
    """:func:`choose` (call it inside ``land.mode()`` and inference mode), plus the
    probe's evaluator where the pick was probed: the run goes on with it."""
    dsets = list(datasets) if datasets is not None else list(land.datasets)
    can = eligible(land, points, precision)
    if precision != "float32":
        return "loop", f"precision {precision}: autocast reaches only the model's forward", None
    if can == ["loop"]:
        return "loop", "training mode: only loop runs it", None
    span = "affine" in can
    many, one = ("affine-vmap", "affine") if span else ("vmap", "loop")
    plan = affine_plan(land) if span else None
    sizes = output_sizes(land)
    if plan is not None and plan.batched and (sizes is None or sizes.first_ndim == FLAT_NDIM):
        reason = "an MLP along a span: the batched features-first path"
        err, ev = _probe(land, points, many, dsets)
        return (one, f"{reason} cannot batch it ({err})", None) if err else (many, reason, ev)
    act = forward_bytes(land)
    if act is None:
        why = "activation size unknown (data streamed from a loader): one point per call"
        return one, why, None
    bound = _SMALL_FORWARD_BYTES.get(land.device.type, _SMALL_FORWARD_BYTES_OTHER)
    what = f"{act / 2**20:.3g} MiB of activations per forward pass"
    if act > bound:
        return one, f"{what} > {bound / 2**20:.3g} MiB: compute-bound, one point per call", None
    err, ev = _probe(land, points, many, dsets)
    if err:
        return one, f"{what}: overhead-bound, but {many} cannot batch it ({err})", None
    return many, f"{what} ≤ {bound / 2**20:.3g} MiB: overhead-bound, many points per call", ev
