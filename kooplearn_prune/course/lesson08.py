"""Checks for the exercises of notebook 08 (array backends: NumPy and CuPy)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import asarray, to_numpy
from .verdict import is_missing, missing, right, wrong

__all__ = ["center_rows", "memory_bytes"]


def center_rows(center: Any, *, strict: bool | None = None) -> Any:
    """08.1: ``center(x)`` subtracts the column means of ``x`` on any array-API backend."""
    ex = "08.1"
    if not callable(center):
        return missing(ex, "center", "get xp = namespace_of(x) and use xp.mean", strict=strict)
    x = np.arange(12.0).reshape(4, 3) ** 1.5
    want = x - x.mean(axis=0)
    out = center(x)
    if is_missing(out):
        return missing(ex, "center(x)", "return x - xp.mean(x, axis=0, keepdims=True)",
                       strict=strict)
    if not np.allclose(to_numpy(out), want):
        return wrong(ex, "on a NumPy array the result is not x minus its column means.",
                     "subtract xp.mean(x, axis=0, keepdims=True): one mean per column",
                     strict=strict)
    try:
        import array_api_strict as strict_xp
    except ImportError:
        return right(ex, "right on NumPy (array_api_strict is not installed, so the other "
                     "backend was not tried).", strict=strict)
    try:
        other = center(asarray(x, xp=strict_xp))
        ok = type(other).__module__.startswith("array_api_strict") and np.allclose(
            to_numpy(other), want)
    except Exception as err:  # a NumPy call on a foreign array fails in many ways
        ok, reason = False, f"{type(err).__name__}: {err}"
    else:
        reason = "the result is not an array of the input's backend"
    if ok:
        return right(ex, "the same function works on NumPy and on array_api_strict.",
                     strict=strict)
    return wrong(ex, f"on array_api_strict it failed ({reason}).",
                 "never call np.* on the input: xp = kooplearn_prune.backend.namespace_of(x), "
                 "then xp.mean(...)", strict=strict)


def memory_bytes(answer: Any, n_snapshots: int, n_params: int, *,
                 strict: bool | None = None) -> Any:
    """08.2: (bytes of the float32 snapshots, bytes of the float64 Gram matrix)."""
    ex = "08.2"
    if is_missing(answer):
        return missing(ex, "(snapshot_bytes, gram_bytes)", "float32 is 4 bytes, float64 8; "
                       "G = W Wᵀ is (m+1) × (m+1)", strict=strict)
    if any(is_missing(v) for v in answer):
        return missing(ex, "snapshot_bytes or gram_bytes", "float32 is 4 bytes, float64 8",
                       strict=strict)
    want = (4 * n_snapshots * n_params, 8 * n_snapshots**2)
    got = tuple(int(v) for v in answer)
    if got == want:
        return right(ex, f"{want[0] / 2**20:.1f} MiB of snapshots, a {want[1]} byte Gram "
                     "matrix: the Gram matrix is tiny, the pass over W is the cost.",
                     strict=strict)
    if got[0] == 8 * n_snapshots * n_params:
        hint = "the snapshots are float32 (4 bytes each); only G is accumulated in float64"
    elif got[1] in (8 * n_params**2, 4 * n_params**2):
        hint = "G = W Wᵀ has one entry per PAIR OF SNAPSHOTS: (m+1) × (m+1), not n × n"
    else:
        hint = "snapshots: 4 · (m+1) · n bytes; Gram matrix: 8 · (m+1)² bytes"
    return wrong(ex, f"got {got}, expected {want}.", hint, strict=strict)
