"""The verdict of an exercise check: right or wrong, why, and a hint.

A check never raises on a wrong answer: it returns a ``Verdict`` that a notebook displays as one
readable line (and ``bool(verdict)`` is whether the answer is right). Pass ``strict=True`` to a
check, or set the environment variable ``KOOPLEARN_PRUNE_EXERCISES_STRICT=1``, to make a wrong or
missing answer raise ``ExerciseError`` instead (the test suite runs the notebooks that way, with
the worked solutions of ``tutorials/solutions/`` filled in).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Verdict", "ExerciseError", "STRICT_ENV", "right", "wrong", "missing", "is_missing"]

STRICT_ENV = "KOOPLEARN_PRUNE_EXERCISES_STRICT"


class ExerciseError(AssertionError):
    """A wrong or missing answer, raised only in strict mode."""


@dataclass(frozen=True)
class Verdict:
    """``exercise``: its number ("01.2"); ``status``: "right", "wrong" or "missing"."""

    exercise: str
    status: str
    message: str
    hint: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "right"

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        head = {"right": "✓ right", "wrong": "✗ not yet", "missing": "… not attempted yet"}
        text = f"Exercise {self.exercise}: {head[self.status]}. {self.message}"
        if self.hint and not self.passed:
            text += f"\n  Hint: {self.hint}"
        return text

    __repr__ = __str__


def _finish(verdict: Verdict, strict: bool | None) -> Verdict:
    if strict is None:
        strict = os.environ.get(STRICT_ENV, "") not in ("", "0")
    if strict and not verdict.passed:
        raise ExerciseError(str(verdict))
    return verdict


def right(exercise: str, message: str, *, strict: bool | None = None) -> Verdict:
    return _finish(Verdict(exercise, "right", message), strict)


def wrong(exercise: str, message: str, hint: str, *, strict: bool | None = None) -> Verdict:
    return _finish(Verdict(exercise, "wrong", message, hint), strict)


def missing(exercise: str, what: str, hint: str, *, strict: bool | None = None) -> Verdict:
    return _finish(Verdict(exercise, "missing", f"{what} is still the placeholder.", hint),
                   strict)


def is_missing(answer: Any) -> bool:
    """``None`` or ``...``: the placeholder a notebook starts with."""
    return answer is None or answer is Ellipsis


def as_float_array(answer: Any) -> np.ndarray | None:
    """The answer as a float64 NumPy array, or None when it cannot be one."""
    try:
        from ..backend import to_numpy

        return np.asarray(to_numpy(answer) if hasattr(answer, "shape") else answer,
                          dtype=np.float64)
    except (TypeError, ValueError):
        return None
