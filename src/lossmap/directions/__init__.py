"""Directions in parameter space: random (normalised), between checkpoints, raw axes,
Hessian eigenvectors, and the principal components of a training trajectory.

See :mod:`lossmap.directions._random` (Li et al. 2018's filter normalisation and the
ignore rules) and :mod:`lossmap.directions._pca` (trajectories).
"""

from lossmap.directions._pca import check_checkpoints, pca, project
from lossmap.directions._random import (
    IGNORE_RULES,
    Direction,
    Normalization,
    between,
    coordinate,
    hessian,
    ignored_by_name,
    ignored_names,
    normalize,
    random,
)

__all__ = [
    # directions
    "Direction",
    "between",
    "coordinate",
    "hessian",
    "random",
    # normalisation and ignore rules (Li et al. 2018)
    "IGNORE_RULES",
    "Normalization",
    "ignored_by_name",
    "ignored_names",
    "normalize",
    # trajectories
    "check_checkpoints",
    "pca",
    "project",
]
