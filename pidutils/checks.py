"""Argument checks shared by every public pidutils function.

Each check raises ``ValueError`` naming the parameter and its allowed range *before* any work is
done, so that bad input never turns into a silent wrong answer (see the book's "How to run" page).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch


def check_int(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` if it is an integer in ``[low, high]``; raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer in {_range(low, high)}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be in {_range(low, high)}, got {value}")
    return value


def check_float(name: str, value: Any, low: float = 0.0, high: float | None = None,
                low_inclusive: bool = True) -> float:
    """Return ``value`` as a float if it lies in the given range; raise ``ValueError`` otherwise.

    NaN and ±inf are refused: no caller has a meaning for them, and NaN passes every comparison.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
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


def check_device(name: str, value: Any) -> torch.device:
    """Return ``value`` as a ``torch.device`` this machine has: ``"cpu"``, or ``"cuda"`` / ``"cuda:N"``
    where CUDA is available; raise ``ValueError`` naming what is allowed here otherwise."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    allowed = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(count)] if count else [])
    try:
        device = torch.device(value) if isinstance(value, (str, torch.device)) else None
    except RuntimeError:  # an unknown device string
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cuda" and (device.index or 0) >= count):
        reason = "" if count or device is None or device.type != "cuda" else " (no CUDA device is available here)"
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}{reason}; got {value!r}")
    return device


def _range(low: int, high: int | None) -> str:
    return f"[{low}, {high}]" if high is not None else f"[{low}, inf)"


def check_text(name: str, value: Any) -> str:
    """Return ``value`` if it is a string that is not blank; raise ``ValueError`` otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {_kind(value)}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


def check_documents(documents: Any) -> None:
    """``documents`` must be a list of strings, one per document, with at least one."""
    if not _is_list(documents):
        raise ValueError(f"documents must be a list of strings, one per document; got {_kind(documents)}")
    if not documents:
        raise ValueError("documents must hold at least one document")
    for i, document in enumerate(documents):
        check_text(f"documents[{i}]", document)


def check_prompt_lists(prompts: Any) -> None:
    """``prompts`` must be a list of lists of strings: the U >= 1 prompts of each document.

    A flat list of strings is refused rather than read as one prompt per character.
    """
    if not _is_list(prompts):
        raise ValueError(f"prompts must be a list of prompt lists, one list of strings per document; "
                         f"got {_kind(prompts)}")
    for i, row in enumerate(prompts):
        if not _is_list(row):
            raise ValueError(f"prompts[{i}] must be a list of strings (the prompts of documents[{i}]), got "
                             f"{_kind(row)}; for one document with one prompt, pass [['hotel-area']]")
        if not row:
            raise ValueError(f"U (the number of prompts of documents[{i}]) must be in [1, inf), got 0")
        for j, prompt in enumerate(row):
            check_text(f"prompts[{i}][{j}]", prompt)


def check_prompts(documents: Any, prompts: Any) -> None:
    """``documents`` a list of strings and ``prompts`` a list of lists of strings, one list (U >= 1)
    per document, with no empty text (chapters 2 and 3)."""
    check_documents(documents)
    check_prompt_lists(prompts)
    if len(prompts) != len(documents):
        raise ValueError(f"documents and prompts must have the same batch size, got {len(documents)} "
                         f"documents and {len(prompts)} prompt lists")


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _kind(value: Any) -> str:
    return repr(value) if value is None or isinstance(value, str) else f"an object of type {type(value).__name__}"
