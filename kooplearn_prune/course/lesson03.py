"""Checks for the exercises of notebook 03 (the KMD on systems solved by hand)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_numpy
from ..koopman import KMD
from .verdict import as_float_array, is_missing, missing, right, wrong

__all__ = ["chosen_spectrum", "largest_stable_lr", "half_life", "TARGET_EIGENVALUES"]

TARGET_EIGENVALUES = (1.0, 0.8, -0.5)


def chosen_spectrum(W: Any, *, strict: bool | None = None) -> Any:
    """03.1: snapshots (as rows) of a linear system whose KMD eigenvalues are 1, 0.8 and −0.5."""
    ex = "03.1"
    if is_missing(W):
        return missing(ex, "W", "simulate z_{t+1} = diag(1, 0.8, -0.5) z_t, then θ_t = Q z_t",
                       strict=strict)
    W = as_float_array(W)
    if W is None or W.ndim != 2:
        return wrong(ex, "W must be a 2-D array of snapshots.", "stack θ_0 … θ_m as rows",
                     strict=strict)
    if W.shape[0] > W.shape[1]:
        return wrong(ex, f"W has shape {W.shape}: more rows (time) than columns (parameters).",
                     "snapshots are ROWS: shape (m+1, n) with n large, e.g. (21, 50); "
                     "transpose if you stacked them as columns", strict=strict)
    found = np.sort_complex(KMD(rank=None).fit(W).eigenvalues_)
    want = np.sort(np.array(TARGET_EIGENVALUES))
    if found.size == want.size and np.allclose(found, want, atol=1e-8):
        return right(ex, f"the KMD finds exactly {np.round(found.real, 8)}.", strict=strict)
    text = np.array2string(np.round(found, 4), separator=", ")
    if found.size < want.size:
        hint = ("every eigenvalue needs a direction that the start excites: give z_0 a "
                "non-zero entry in each coordinate (and λ = 1 is a coordinate that never changes)")
    else:
        hint = "use a diagonal A_small = diag(1, 0.8, -0.5) and an n × 3 orthonormal Q"
    return wrong(ex, f"the KMD of your W has eigenvalues {text}, not 1, 0.8, −0.5.", hint,
                 strict=strict)


def largest_stable_lr(answer: Any, curvatures: Any, *, strict: bool | None = None) -> Any:
    """03.2: the learning rate above which gradient descent on the quadratic diverges."""
    ex = "03.2"
    if is_missing(answer):
        return missing(ex, "eta_max", "GD converges when every |1 − η h_k| < 1", strict=strict)
    h_max = float(np.max(as_float_array(curvatures)))
    want, got = 2.0 / h_max, float(as_float_array(answer))
    if np.isclose(got, want, rtol=1e-6):
        return right(ex, f"η_max = 2 / h_max = {want:.6g}.", strict=strict)
    if np.isclose(got, 1.0 / h_max, rtol=1e-6):
        hint = ("at η = 1/h_max the eigenvalue 1 − η h_max reaches 0, and beyond it turns "
                "negative: that component flips sign but still shrinks until |1 − η h| = 1")
    elif np.isclose(got, 2.0 / float(np.min(as_float_array(curvatures))), rtol=1e-6):
        hint = "the most curved direction (largest h_k) is the first to diverge"
    else:
        hint = "solve 1 − η h_max = −1 for η"
    return wrong(ex, f"got {got:.6g}.", hint, strict=strict)


def half_life(answer: Any, kmd: Any, *, strict: bool | None = None) -> Any:
    """03.3: the half-life, in steps, of the slowest transient of a fitted KMD."""
    ex = "03.3"
    if is_missing(answer):
        return missing(ex, "half_life", "the slowest transient has the largest |λ| below 1; "
                       "|λ|^t = 1/2", strict=strict)
    lam = np.asarray(to_numpy(kmd.eigenvalues_))
    others = np.delete(np.abs(lam), kmd.fixed_point_info_.index)
    slowest = float(np.max(others))
    want, got = np.log(2) / -np.log(slowest), float(as_float_array(answer))
    if np.isclose(got, want, rtol=1e-6):
        return right(ex, f"|λ| = {slowest:.6g} halves its mode every {want:.4g} steps.",
                     strict=strict)
    if np.isinf(got):
        hint = "that is the stationary mode (λ = 1), which never decays; leave it out"
    elif np.isclose(got, -1.0 / np.log(slowest), rtol=1e-6):
        hint = ("that is the time to shrink by e, not by 2: solve |λ|^t = 1/2, "
                "t = ln 2 / (−ln |λ|)")
    else:
        hint = (f"use the transient with the LARGEST |λ| below 1 (here |λ| = {slowest:.4g}); "
                "t = ln 2 / (−ln |λ|)")
    return wrong(ex, f"got {got:.4g} steps.", hint, strict=strict)
