"""A symmetric operator as a mat-vec callable (private)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.sparse.linalg import LinearOperator

MatVec = Callable[[np.ndarray], np.ndarray]
MatMat = Callable[[np.ndarray], np.ndarray]
"""``X -> A X`` for ``X`` ``[n, p]`` float64 (``p`` products in one call)."""


def as_matvec(op: Any) -> tuple[MatVec, int]:
    """``(x -> op @ x, n)`` for a ``LinearOperator`` or a square array ``[n, n]``.

    >>> mv, n = as_matvec(np.diag([1.0, 2.0]))
    >>> mv(np.ones(2)).tolist(), n
    ([1.0, 2.0], 2)
    """
    if isinstance(op, LinearOperator):
        return (lambda x: np.asarray(op @ x).reshape(-1)), int(op.shape[0])
    if isinstance(op, np.ndarray):
        return (lambda x: op @ x), int(op.shape[0])
    raise TypeError(
        f"expected a LinearOperator or a square array, got {type(op).__name__}; "
        "wrap a matrix with scipy.sparse.linalg.aslinearoperator"
    )


def as_matmat(op: Any) -> tuple[MatMat, int]:
    """``(X -> op @ X, n)`` for ``X`` ``[n, p]``: a ``LinearOperator``'s ``matmat`` (one
    batched call where the operator has one, e.g. the Hessian's batched backward) or a
    square array's product.

    >>> mm, n = as_matmat(np.diag([1.0, 2.0]))
    >>> mm(np.ones((2, 2))).tolist(), n
    ([[1.0, 1.0], [2.0, 2.0]], 2)
    """
    if isinstance(op, LinearOperator):
        return (lambda X: np.asarray(op.matmat(X)).reshape(X.shape)), int(op.shape[0])
    if isinstance(op, np.ndarray):
        return (lambda X: op @ X), int(op.shape[0])
    raise TypeError(
        f"expected a LinearOperator or a square array, got {type(op).__name__}; "
        "wrap a matrix with scipy.sparse.linalg.aslinearoperator"
    )
