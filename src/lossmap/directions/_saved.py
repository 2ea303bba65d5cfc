"""Directions saved with a line or a plane, read back to make the same slice again.

:func:`lossmap.line` and :func:`lossmap.plane` keep their direction tensors in the
result (``Result.directions``) and its HDF5 file; :func:`load` turns them back into
:class:`Direction` objects (with the metadata they were made with), checked against a
landscape's parameters when one is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap.directions._random import Direction
from lossmap.landscape import Landscape
from lossmap.results import Result
from lossmap.results import load as load_result

__all__ = ["load", "to_arrays"]


def to_arrays(direction: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """A direction's tensors as CPU numpy arrays of the same dtype (bfloat16, which numpy
    lacks, as float32: exact), for ``Result.directions``."""
    out = {}
    for k, t in direction.items():
        t = t.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        out[k] = t.cpu().numpy().copy()
    return out


def load(source: str | os.PathLike[str] | Result, land: Landscape | None = None) -> list[Direction]:
    """The directions of a saved line or plane, to reuse (``lossmap.plane(land, *dirs)``).

    Args:
        source: a result file written by ``Curve.save`` / ``Surface.save`` (or the
            :class:`~lossmap.results.Result` itself).
        land: when given, the directions must have its parameters' names and shapes
            (else a one-line ``ValueError``), and come on its device in its dtype.

    Returns:
        One :class:`Direction` per axis, its ``meta`` the one the result recorded
        (``kind``, ``normalization``, ``seed``...) plus ``loaded_from``.

    Raises:
        ValueError: the result holds no direction tensors (a path, or a file written
            before lossmap kept them), or they do not fit ``land``.
    """
    result = source if isinstance(source, Result) else load_result(source)
    where = "the result" if isinstance(source, Result) else str(source)
    if not isinstance(result, Result) or result.directions is None:
        raise ValueError(
            f"{where} holds no direction tensors (only lines and planes made by lossmap "
            "line/plane keep them); make the slice again to save them"
        )
    metas = result.meta.get("directions")
    metas = metas if isinstance(metas, list) else []
    like = land.theta0 if land is not None else None
    out = []
    for i, arrays in enumerate(result.directions):
        tensors = {k: torch.from_numpy(np.array(a)) for k, a in arrays.items()}
        if like is not None:
            problems = V.mismatches(tensors, like)
            if problems:
                raise ValueError(
                    f"the directions in {where} do not fit the model's parameters "
                    f"({'; '.join(problems)}); were they saved for another model?"
                )
            tensors = {
                k: t.to(device=like[k].device, dtype=like[k].dtype) for k, t in tensors.items()
            }
        meta = dict(metas[i]) if i < len(metas) and isinstance(metas[i], dict) else {}
        meta.setdefault("kind", "custom")
        meta["loaded_from"] = where
        out.append(Direction(tensors, **meta))
    return out
