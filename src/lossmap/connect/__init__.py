"""Mode connectivity: the loss along paths between two minima, and the barrier on them.

- :func:`barrier`: the height of the bump on a path ``L(t)``, ``t ∈ [0, 1]``, in the two
  forms used in the literature (above the chord, Entezari et al. 2022; above the mean of
  the endpoints, Frankle et al. 2020).
- :func:`linear`: the straight path ``θ(t) = (1 - t) a + t b`` with its barriers, and
  optionally BatchNorm statistics recomputed at every ``t`` (Garipov et al. 2018;
  Frankle et al. 2020), since running statistics of ``a``, ``b`` or their average are
  wrong in between.
- :func:`curve`: a low-loss curve between ``a`` and ``b`` fitted by SGD (Garipov et al.
  2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs", NeurIPS): a
  quadratic Bézier curve or a polygonal chain through one trained bend ``θ``.
- :func:`plane3`: the plane through three points (``a``, ``b`` and the bend), with
  orthonormal axes, as in Garipov et al.'s figures.

The caller's model is never written to: paths are evaluated with
:func:`torch.func.functional_call` through the :class:`~lossmap.landscape.Landscape`,
and BatchNorm statistics are recomputed on a deep copy.

Implementation, one concept per private module: ``_barrier`` (pure numpy), ``_points``
(endpoint checks), ``_batchnorm`` (recomputed statistics and the one per-point
evaluator), ``_linear``, ``_curve`` (the curve families), ``_fit`` (SGD on the bend
through the derivative core, journaled) and ``_plane``.
"""

from lossmap.connect._barrier import Barrier, barrier
from lossmap.connect._batchnorm import recompute_bn
from lossmap.connect._curve import CurveFit, CurveKind, coefficients
from lossmap.connect._fit import curve
from lossmap.connect._linear import default_span, linear
from lossmap.connect._plane import plane3

__all__ = [
    # barriers
    "Barrier",
    "barrier",
    # paths
    "default_span",
    "linear",
    "plane3",
    "recompute_bn",
    # curves
    "CurveFit",
    "CurveKind",
    "coefficients",
    "curve",
]
