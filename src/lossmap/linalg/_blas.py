"""Numpy's BLAS on one thread while a Krylov method runs (private)."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])
# True inside a decorated call: a nested one (eigenvalues -> lanczos) skips the limiter,
# which costs about 1.5 ms per entry (threadpoolctl scans the loaded libraries).
_limited: contextvars.ContextVar[bool] = contextvars.ContextVar("single_blas_thread", default=False)


def single_blas_thread(fn: _F) -> _F:
    """Run ``fn`` with numpy's BLAS on one thread.

    The Krylov methods alternate small numpy products (reorthogonalisation) with torch
    HVPs. OpenBLAS threads busy-wait after each product and take the cores from
    torch's threads: on two cores, measured here, a top-1 Lanczos on a 26k-parameter
    MLP took 0.17 s with BLAS threads and 0.025 s without (HVPs 14 -> 2.5 ms). The
    numpy work is tiny; one thread loses nothing. Calls nested inside another
    decorated call run as they are (the limit is already on).

    >>> @single_blas_thread
    ... def f(x: int) -> int:
    ...     return x + 1
    >>> f(1)
    2
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _limited.get():
            return fn(*args, **kwargs)
        from threadpoolctl import threadpool_limits

        token = _limited.set(True)
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                return fn(*args, **kwargs)
        finally:
            _limited.reset(token)

    return wrapper  # type: ignore[return-value]
