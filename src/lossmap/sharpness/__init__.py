"""Sharpness of a minimum: how much the loss can rise, or rises on average, nearby.

- :func:`epsilon`: the worst loss in a neighbourhood, Keskar et al. 2017 ("On
  Large-Batch Training for Deep Learning: Generalization Gap and Sharp Minima", ICLR):
  the relative box ``|δ_i| ≤ ε(|θ_i| + 1)`` (their eq. (3)-(4), ``A = I_n``), solved with
  L-BFGS-B as they did, or the Euclidean ball ``||δ||₂ ≤ ε``.
- :func:`adaptive`: the worst case in the *adaptive* set ``||δ / (|θ| + η)||_p ≤ ρ``
  (Kwon et al. 2021, "ASAM", ICML; Andriushchenko et al. 2023, "A Modern Look at the
  Relationship between Sharpness and Generalization", ICML). With ``η = 0`` it is
  exactly invariant to the rescalings of ReLU networks that leave the function
  unchanged (Dinh et al. 2017, "Sharp Minima Can Generalize For Deep Nets", ICML),
  which plain ε-sharpness is not.
- :func:`average`: the mean increase under Gaussian noise, ``E_δ[L(θ+δ)] − L(θ)``
  (plain or adaptive), by Monte Carlo with its standard error and a 95 % interval;
  each chunk of samples is one batched call of the evaluation engine, and chunks can
  be journaled for resume.
- :func:`quadratic`: ``½ ε² λ_max`` from the top Hessian eigenvalue, next to the
  increase measured along the top eigenvector.

Every function takes the :class:`~lossmap.landscape.Landscape`, the point ``θ``
(``point=None``: θ0), the data set (``dataset=None``: the first) and ``ignore``
(parameters held fixed). The caller's model is never written to: every loss and
gradient is computed with :func:`torch.func.functional_call` through the landscape.

The worst-case maximisations are non-convex: the values returned are the best loss
*found* (a lower bound on the true maximum), after ``restarts`` extra random starts.

Implementation: ``_worst`` (epsilon, adaptive) over ``_ascent`` (projected ascent and
L-BFGS-B on the loss and gradient from the derivative core), ``_average``,
``_quadratic``, and ``_common`` (checks, θ and its mask, seeded streams).
"""

from lossmap.sharpness._average import Average, average
from lossmap.sharpness._common import ANDRIUSHCHENKO as ANDRIUSHCHENKO
from lossmap.sharpness._common import DINH as DINH
from lossmap.sharpness._common import KESKAR as KESKAR
from lossmap.sharpness._common import KWON as KWON
from lossmap.sharpness._quadratic import Quadratic, quadratic
from lossmap.sharpness._worst import Method, Region, WorstCase, adaptive, epsilon
from lossmap.store import Journal as Journal  # the journal average() resumes from

__all__ = [
    # worst case
    "Method",
    "Region",
    "WorstCase",
    "adaptive",
    "epsilon",
    # average case
    "Average",
    "average",
    # second order
    "Quadratic",
    "quadratic",
]
