"""A symmetric operator as a mat-vec callable (private)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.sparse.linalg import LinearOperator

MatVec = Callable[[np.ndarray], np.ndarray]


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
