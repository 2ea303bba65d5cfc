"""What every sharpness measure shares: argument checks, θ and its mask, seeded streams."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lossmap import vectors as V
from lossmap.directions import ignored_names
from lossmap.landscape import Landscape

KESKAR = (
    "Keskar, Mudigere, Nocedal, Smelyanskiy, Tang 2017, On Large-Batch Training for Deep "
    "Learning: Generalization Gap and Sharp Minima (ICLR)"
)
KWON = (
    "Kwon, Kim, Park, Choi 2021, ASAM: Adaptive Sharpness-Aware Minimization for "
    "Scale-Invariant Learning of Deep Neural Networks (ICML)"
)
ANDRIUSHCHENKO = (
    "Andriushchenko, Croce, Müller, Hein, Flammarion 2023, A Modern Look at the "
    "Relationship between Sharpness and Generalization (ICML)"
)
DINH = "Dinh, Pascanu, Bengio, Bengio 2017, Sharp Minima Can Generalize For Deep Nets (ICML)"


def positive(value: object, name: str, hint: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}; {hint}") from None
    if not (x > 0 and math.isfinite(x)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}; {hint}")
    return x


def count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def setup(
    land: Landscape,
    point: Mapping[str, Tensor] | None,
    dataset: str | None,
    ignore: Sequence[str],
) -> tuple[V.Vector, str, Tensor]:
    """θ (detached), the data set name, and the flat 0/1 mask of moving parameters."""
    theta = V.check_vector(point, land.theta0, name="point") if point is not None else land.point()
    theta = {k: t.detach() for k, t in theta.items()}
    ds = dataset or land.default_dataset
    if ds not in land.datasets:
        raise ValueError(f"unknown data set {ds!r}; this landscape has {list(land.datasets)}")
    ign = ignored_names(land, ignore) if ignore else set()
    if len(ign) == len(theta):
        raise ValueError(
            f"the ignore rules {tuple(ignore)} hold every parameter fixed; drop some of them"
        )
    mask = torch.cat(
        [
            torch.full((t.numel(),), 0.0 if k in ign else 1.0, dtype=t.dtype, device=t.device)
            for k, t in theta.items()
        ]
    )
    return theta, ds, mask


def finite(loss0: float) -> float:
    if not math.isfinite(loss0):
        raise ValueError(
            f"the loss at θ is {loss0}: sharpness is undefined there; check the point "
            "(e.g. a checkpoint from before training diverged) and the data"
        )
    return loss0


def generator(seed: int, *index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, *index)`` (independent streams per index)."""
    words = np.random.SeedSequence([int(seed) % 2**64, *index]).generate_state(2, np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(words[0]) << 32 | int(words[1]))
