"""Figures of results: curves, contours, heatmaps and 3-D surfaces (matplotlib).

Every drawing function takes ``ax=`` (a new figure when omitted) and returns the
:class:`~matplotlib.figure.Figure`; nothing is saved, shown or closed, and no backend
is chosen. :func:`save` writes the files and :func:`figures` draws the standard set.

A :class:`~lossmap.results.Surface` stores ``values[k]`` as ``[len(alpha), len(beta)]``
with ``indexing="ij"``; figures put ``alpha`` on the x axis and ``beta`` on the y axis
(matplotlib takes ``Z[y, x]``, so the values are transposed). Non-finite values (NaN)
are masked, and so are values ``<= 0`` on a log scale; titles give the counts.

``log=None`` (the default of the plane figures and of :func:`figures`) picks the scale
of a loss from its values: logarithmic when they are all positive, span at least a
decade, and their median sits nearer the middle of the colour range on a log scale
than on a linear one. A basin far below the rim then still shows its contours, while a
quadratic bowl stays linear; other statistics stay linear. ``True`` / ``False`` force
the scale. The decision is taken once per quantity: :func:`figures` pools every data
set of a result, and :func:`log_scales` pools every result of a run (the command line
passes it to each result's figures), so a run's line, contour, heatmap and 3-D surface
never disagree on the loss's scale.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> import lossmap as lm
>>> from lossmap import plot
>>> land = lm.examples.linear_regression()
>>> s = lm.plane(land, "weight", "bias", span=[(0, 6), (-1, 5)], steps=(21, 31))
>>> fig = plot.contour(s)
>>> [float(v) for v in (*fig.axes[0].get_xlim(), *fig.axes[0].get_ylim())]
[0.0, 6.0, -1.0, 5.0]
>>> import matplotlib.pyplot as plt
>>> plt.close(fig)
"""

from lossmap.plot._style import COLORMAP, auto_log, log_scales
from lossmap.plot._style import LOG_DECADES as LOG_DECADES  # the old module attribute
from lossmap.plot.curves import compare, curve, spectrum
from lossmap.plot.files import figures, save
from lossmap.plot.paths import sharpness_history, trajectory
from lossmap.plot.planes import contour, heatmap, surface3d

__all__ = [
    # the shared style
    "COLORMAP",
    # a plane
    "contour",
    "heatmap",
    "surface3d",
    # values against one coordinate
    "compare",
    "curve",
    "spectrum",
    # optimisation paths
    "sharpness_history",
    "trajectory",
    # files
    "figures",
    "save",
    # one scale per quantity (shared with the run's HTML report)
    "auto_log",
    "log_scales",
]
