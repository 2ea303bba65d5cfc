"""The endpoints of a path: checked against the landscape's model, with a finite loss."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from lossmap import vectors as V
from lossmap.landscape import Landscape


def check_pair(land: Landscape, pts: Mapping[str, object]) -> dict[str, V.Vector]:
    """Check that the points fit the landscape's parameters; cast to their dtype/device."""
    out: dict[str, V.Vector] = {}
    first: tuple[str, V.Vector] | None = None
    for name, p in pts.items():
        v = V.check_vector(p, name=name)
        if first is not None:
            problems = V.mismatches(v, first[1])
            if problems:
                raise ValueError(
                    f"{first[0]} and {name} come from different architectures: "
                    + "; ".join(problems)
                    + ". Pass parameters of the same model (e.g. dict(model.named_parameters()))"
                )
        problems = V.mismatches(v, land.theta0)
        if problems:
            raise ValueError(
                f"{name} does not fit the landscape's model: "
                + "; ".join(problems)
                + ". Build the Landscape on a model of the same architecture"
            )
        bad = [k for k, t in v.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise ValueError(
                f"{name} holds non-finite values (NaN/Inf) in {bad[:5]}; "
                "use a checkpoint from before training diverged"
            )
        like = land.theta0
        v = {k: v[k].detach().to(like[k].device, like[k].dtype) for k in like}
        out[name] = v
        if first is None:
            first = (name, v)
    return out


def check_endpoints(land: Landscape, a: V.Vector, b: V.Vector) -> dict[str, float]:
    """The default data set's loss at ``a`` and ``b``; an error if either is not finite."""
    ds = land.default_dataset
    vals = land.evaluate([a, b], datasets=[ds])[f"{ds}/loss"]
    for name, v in zip("ab", vals, strict=True):
        if not math.isfinite(float(v)):
            raise ValueError(
                f"the loss at endpoint {name} is {float(v)} on {ds!r}: both endpoints must be "
                "trained points with a finite loss"
            )
    return {"a": float(vals[0]), "b": float(vals[1])}
