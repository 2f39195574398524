"""Checks shared by the experiment file's sections: each names ``[section] key`` and the fix.

``ConfigError`` is what every check raises; ``experiment_config`` and
``experiment_torch_config`` read their keys through these functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ConfigError", "where", "is_int", "is_number", "int_value", "float_value", "choice",
           "list_of", "items", "table"]


class ConfigError(ValueError):
    """The experiment file is missing, not TOML, or has a key with a bad name, type or value."""


def where(section: str, key: str) -> str:
    """``[section] key``, as every message names a key."""
    return f"[{section}] {key}"


def is_int(v: Any) -> bool:
    """An integer that is not a bool (TOML ``true`` is no number)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite integer or float."""
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def int_value(section: str, key: str, v: Any, minimum: int) -> int:
    """``v`` as an integer ``>= minimum``."""
    if not is_int(v):
        raise ConfigError(f"{where(section, key)} must be an integer, got {v!r}")
    if v < minimum:
        raise ConfigError(f"{where(section, key)} must be >= {minimum}, got {v}")
    return int(v)


def float_value(section: str, key: str, v: Any, lo: float, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False, hint: str = "") -> float:
    """``v`` as a float in the interval from ``lo`` to ``hi`` (open ends as flagged)."""
    if not is_number(v):
        raise ConfigError(f"{where(section, key)} must be a number, got {v!r}")
    ok_lo = v > lo if lo_open else v >= lo
    ok_hi = hi is None or (v < hi if hi_open else v <= hi)
    if not (ok_lo and ok_hi):
        low = f"{'(' if lo_open else '['}{lo}"
        high = "inf)" if hi is None else f"{hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{where(section, key)} must lie in {low}, {high}, got {v}{hint}")
    return float(v)


def choice(section: str, key: str, v: Any, choices: tuple[str, ...]) -> str:
    """``v``, one of ``choices``."""
    if not isinstance(v, str) or v not in choices:
        raise ConfigError(f"{where(section, key)} = {v!r} is unknown; choose one of "
                          f"{', '.join(repr(c) for c in choices)}")
    return v


def list_of(section: str, key: str, v: Any, item: Callable[[Any], Any], what: str, *,
            allow_empty: bool = False, unique: bool = True) -> tuple[Any, ...]:
    """``v``, a list of ``what``, each item checked by ``item``; a tuple."""
    if not isinstance(v, list):
        raise ConfigError(f"{where(section, key)} must be a list of {what}, got {v!r}")
    if not v and not allow_empty:
        raise ConfigError(f"{where(section, key)} must list at least one of {what}")
    values = tuple(item(x) for x in v)
    if unique and len(set(values)) != len(values):
        raise ConfigError(f"{where(section, key)} lists a value twice: {v}")
    return values


def items(section: str, key: str, checker: Callable[[str, str, Any], Any]) -> Callable:
    """``checker`` for one item of a list, its message saying which list."""
    def check(x: Any) -> Any:
        try:
            return checker(section, key, x)
        except ConfigError as err:
            raise ConfigError(f"{err} (in the list {where(section, key)})") from None
    return check


def table(raw: Mapping[str, Any], section: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """Section ``section`` of ``raw`` (empty when absent); unknown keys are refused by name."""
    value = raw.get(section, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{section}] must be a table (a [{section}] header), got {value!r}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in [{section}]; allowed keys: "
                          f"{', '.join(allowed)}")
    return dict(value)
