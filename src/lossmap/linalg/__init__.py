"""Curvature algorithms over any symmetric mat-vec (a low layer).

Everything here takes a ``scipy.sparse.linalg.LinearOperator``, a square array or a
mat-vec callable ``x -> A x`` on float64 vectors, and knows nothing of models: the
Hessian (:class:`lossmap.hessian.HessianOperator`) is one such operator, a GGN, a
Fisher or a layer block are others. Imports numpy and scipy only.

- :mod:`~lossmap.linalg.block`: :func:`block_lanczos`, the eigen-solver that a
  cluster of close eigenvalues cannot fool (a random block start).
- :mod:`~lossmap.linalg.lanczos`: one Lanczos step, the single-vector eigen-solver
  :func:`lanczos` and the Gauss quadrature of stochastic Lanczos quadrature.
- :mod:`~lossmap.linalg.power`: :func:`power_iteration` with deflation.
- :mod:`~lossmap.linalg.trace`: :func:`hutchinson`, :func:`hutchpp`, :func:`xtrace`.
"""

from lossmap.linalg._blas import single_blas_thread
from lossmap.linalg._operator import MatMat, MatVec, as_matmat, as_matvec
from lossmap.linalg.block import BlockResult, block_lanczos, block_size
from lossmap.linalg.lanczos import lanczos, lanczos_quadrature, lanczos_step, tridiagonal_eigh
from lossmap.linalg.power import power_iteration
from lossmap.linalg.trace import Trace, hutchinson, hutchpp, xtrace

__all__ = [
    # eigenvalues
    "BlockResult",
    "block_lanczos",
    "lanczos",
    "power_iteration",
    # spectral density
    "lanczos_quadrature",
    # trace
    "Trace",
    "hutchinson",
    "hutchpp",
    "xtrace",
    # building blocks
    "MatMat",
    "MatVec",
    "as_matmat",
    "as_matvec",
    "block_size",
    "lanczos_step",
    "single_blas_thread",
    "tridiagonal_eigh",
]
