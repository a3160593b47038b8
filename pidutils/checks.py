"""Argument checks shared by every public pidutils function.

Each check raises ``ValueError`` naming the parameter and its allowed range *before* any work is
done, so that bad input never turns into a silent wrong answer (see the book's "How to run" page).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_int(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` if it is an integer in ``[low, high]``; raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer in {_range(low, high)}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be in {_range(low, high)}, got {value}")
    return value


def check_float(name: str, value: Any, low: float = 0.0, high: float | None = None,
                low_inclusive: bool = True) -> float:
    """Return ``value`` as a float if it lies in the given range; raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    too_low = value < low if low_inclusive else value <= low
    if too_low or (high is not None and value > high):
        left = "[" if low_inclusive else "("
        right = f"{high}]" if high is not None else "inf)"
        raise ValueError(f"{name} must be in {left}{low}, {right}, got {value}")
    return float(value)


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``; raise ``ValueError`` listing them otherwise."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def _range(low: int, high: int | None) -> str:
    return f"[{low}, {high}]" if high is not None else f"[{low}, inf)"
