"""Directions in parameter space: random (normalised), between checkpoints, raw axes,
Hessian eigenvectors, the principal components of a training trajectory, and the
directions a saved line or plane was made with (:func:`load`).

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
from lossmap.directions._saved import load, to_arrays

__all__ = [
    # directions
    "Direction",
    "between",
    "coordinate",
    "hessian",
    "random",
    # saved with a line or a plane
    "load",
    "to_arrays",
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
