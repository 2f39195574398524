"""Baseline pruning scores that need nothing but the parameters (docs/theory.md §8).

A score ``s_i`` ranks parameter ``i``: the masks in ``masks.py`` remove the smallest. The
Koopman scores (KMP, KGP) are compared against these baselines:

* ``magnitude_scores``: ``s_i = |θ_i|`` (global magnitude pruning, GMP; KMP reduces to it);
* ``random_scores``: uniform random ranks, the floor any method must beat.

Scores are float64 vectors on the parameters' backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import asarray, backend_namespace, host_rng, namespace_of
from ..layout import ParamLayout

__all__ = ["magnitude_scores", "random_scores"]


def magnitude_scores(theta: Any) -> Any:
    """Magnitude scores ``s_i = |θ_i|`` in float64 (docs/theory.md §9, GMP).

    ``theta``: real array, usually the flat parameter vector of shape ``(n,)``; the scores have
    its shape and backend, and ``theta`` is not modified.
    """
    if isinstance(theta, (list, tuple)):
        theta = np.asarray(theta)
    if not hasattr(theta, "shape") or not hasattr(theta, "dtype"):
        raise TypeError(f"theta must be an array of parameters, got {type(theta).__name__}")
    xp = namespace_of(theta)
    if not (xp.isdtype(theta.dtype, "real floating") or xp.isdtype(theta.dtype, "integral")):
        raise TypeError(
            f"theta must be real, got dtype {theta.dtype}; for a complex Koopman mode ξ use the "
            f"Koopman scores (KMP takes |Re ξ|)"
        )
    # widen first: |θ| of float32 is exact either way, but downstream sums want float64
    return xp.abs(xp.astype(theta, xp.float64))


def random_scores(n_or_like: int | Any, seed: int | np.random.Generator | None) -> Any:
    """Uniform random scores in ``[0, 1)``, float64, shape ``(n,)`` (the random baseline).

    ``n_or_like``: the number of parameters ``n`` (scores go to the current backend), a
    ``ParamLayout`` (``n = layout.size``, current backend), or an array such as θ (``n`` = its
    length, scores on its backend). The numbers come from ``backend.host_rng(seed)`` and are then
    moved to the backend, so one seed gives the same scores - and the same mask - on NumPy,
    CuPy and array_api_strict.
    """
    if isinstance(n_or_like, ParamLayout):
        n, xp = n_or_like.size, backend_namespace()
    elif isinstance(n_or_like, (int, np.integer)) and not isinstance(n_or_like, bool):
        n, xp = int(n_or_like), backend_namespace()
        if n < 0:
            raise ValueError(f"n_or_like={n} must be a non-negative number of parameters")
    elif hasattr(n_or_like, "shape"):
        if len(n_or_like.shape) != 1:
            raise ValueError(
                f"n_or_like must be a flat vector of shape (n,), got shape "
                f"{tuple(n_or_like.shape)}"
            )
        n, xp = int(n_or_like.shape[0]), namespace_of(n_or_like)
    else:
        raise TypeError(
            f"n_or_like must be an int n, a ParamLayout or a flat array, got "
            f"{type(n_or_like).__name__}"
        )
    return asarray(host_rng(seed).random(n), dtype="float64", xp=xp)
