"""Argument checks shared by the modules (private)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeVar

E = TypeVar("E", bound=enum.Enum)


def choice(
    value: object, enum_type: type[E], what: str, *, show: Callable[[object], str] = str
) -> E:
    """``enum_type(value)``, or a ``ValueError`` naming ``what`` and the valid choices.

    >>> import enum
    >>> class Kind(str, enum.Enum):
    ...     a = "a"
    >>> choice("b", Kind, "kind")
    Traceback (most recent call last):
    ...
    ValueError: unknown kind 'b'; choose one of a
    """
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(show(m.value) for m in enum_type)
        raise ValueError(f"unknown {what} {value!r}; choose one of {choices}") from None
