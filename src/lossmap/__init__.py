"""lossmap: loss landscape analysis for PyTorch models.

>>> import lossmap as lm
>>> land = lm.examples.linear_regression()
>>> curve = lm.line(land, "bias", span=(1, 3), steps=5)
>>> curve["loss"].shape
(5,)
"""

from lossmap import (
    connect,
    directions,
    distributed,
    examples,
    ggn,
    hessian,
    sharpness,
    store,
    track,
    trajectory,
    vectors,
    zoo,
)
from lossmap._version import __version__
from lossmap.landscape import Landscape
from lossmap.results import Curve, Surface, load
from lossmap.slices import interpolate, line, plane

__all__ = [
    # the landscape
    "Landscape",
    # views
    "interpolate",
    "line",
    "plane",
    # results
    "Curve",
    "Surface",
    "load",
    # modules
    "connect",
    "directions",
    "distributed",
    "examples",
    "ggn",
    "hessian",
    "sharpness",
    "store",
    "track",
    "trajectory",
    "vectors",
    "zoo",
    "__version__",
]
