"""Errors and argument checks shared by every layer of :mod:`pyro_mapa`.

Every check raises a :class:`TypeError` or :class:`ValueError` whose message names the
argument and the fix, so a bad input never becomes a silent NaN downstream.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NonFiniteLossError", "check_count", "check_positive_int"]


class NonFiniteLossError(ValueError):
    """Raised when a loss or bound estimate is NaN or infinite, naming the term that broke."""


def check_count(value: Any, name: str) -> int:
    """Returns ``value`` if it is a non-negative ``int`` (not a ``bool``); raises otherwise.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: ``value`` is negative.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """Like :func:`check_count`, but ``value`` must be at least 1."""
    if check_count(value, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value
