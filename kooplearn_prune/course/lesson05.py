"""Checks for the exercises of notebook 05 (KGP reduces to gradient pruning)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_numpy
from ..koopman import koopman_gradient
from .verdict import as_float_array, is_missing, missing, right, wrong

__all__ = ["gradient_by_hand", "eta_from_spectrum", "strided_eigenvalues"]


def gradient_by_hand(answer: Any, kmd: Any, j: int, *, strict: bool | None = None) -> Any:
    """05.1: ``ĝ_j = −(θ̂_{j+1} − θ̂_j)`` from ``kmd.predict``, without ``koopman_gradient``."""
    ex = "05.1"
    if is_missing(answer):
        return missing(ex, "g_hat", "use kmd.predict(j) and kmd.predict(j + 1)", strict=strict)
    got = as_float_array(answer)
    want = np.asarray(to_numpy(koopman_gradient(kmd, at=j)), dtype=np.float64)
    scale = np.linalg.norm(want)
    if got is not None and got.shape == want.shape and np.linalg.norm(got - want) <= 1e-8 * scale:
        return right(ex, f"‖ĝ_{j}‖ = {scale:.4g}, equal to koopman_gradient(kmd, at={j}).",
                     strict=strict)
    if got is not None and got.shape == want.shape and np.linalg.norm(got + want) <= 1e-8 * scale:
        hint = "gradient descent moves AGAINST the gradient: ĝ_j = −(θ̂_{j+1} − θ̂_j)"
    else:
        hint = "the difference of two KMD predictions, one step apart, with a minus sign"
    return wrong(ex, "this is not the Koopman gradient.", hint, strict=strict)


def _transients(kmd: Any) -> np.ndarray:
    lam = np.asarray(to_numpy(kmd.eigenvalues_))
    return np.sort(np.delete(lam, kmd.fixed_point_info_.index).real)


def eta_from_spectrum(answer: Any, kmd: Any, curvatures: Any, *,
                      strict: bool | None = None) -> Any:
    """05.2: η recovered from the transient eigenvalues ``1 − η h_k`` and known curvatures."""
    ex = "05.2"
    if is_missing(answer):
        return missing(ex, "eta", "each transient eigenvalue is λ_k = 1 − η h_k", strict=strict)
    h = np.sort(as_float_array(curvatures))[::-1]           # largest h: smallest λ
    lam = _transients(kmd)
    want = float(np.mean((1.0 - lam) / h))
    got = float(as_float_array(answer))
    if np.isclose(got, want, rtol=1e-6):
        return right(ex, f"η = (1 − λ_k)/h_k = {want:.6g} for every excited direction.",
                     strict=strict)
    if np.isclose(got, -want, rtol=1e-6):
        hint = "λ = 1 − η h, so η = (1 − λ)/h, which is positive for 0 < λ < 1"
    else:
        hint = ("pair the smallest eigenvalue with the largest curvature (λ = 1 − η h "
                "decreases with h), leave out the stationary λ = 1, and average (1 − λ)/h")
    return wrong(ex, f"got {got:.6g}.", hint, strict=strict)


def strided_eigenvalues(answer: Any, eta: float, curvatures: Any, stride: int, *,
                        strict: bool | None = None) -> Any:
    """05.3: the KMD eigenvalues predicted for one snapshot every ``stride`` GD steps."""
    ex = "05.3"
    if is_missing(answer):
        return missing(ex, "predicted", "Δ steps apply the map θ ↦ (I − ηH)θ + ηb Δ times",
                       strict=strict)
    h = as_float_array(curvatures)
    want = np.sort(np.concatenate([[1.0], (1.0 - eta * h) ** stride]))
    got = np.sort(np.asarray(answer, dtype=np.float64).ravel())
    if got.shape == want.shape and np.allclose(got, want, rtol=1e-9, atol=1e-12):
        return right(ex, f"(1 − η h_k)^{stride} and 1: {np.round(want, 6)}.", strict=strict)
    linear = np.sort(np.concatenate([[1.0], 1.0 - stride * eta * h]))
    if got.shape == linear.shape and np.allclose(got, linear):
        hint = "Δ steps compose the map Δ times: powers (1 − ηh)^Δ, not 1 − Δηh"
    elif got.size == want.size - 1:
        hint = "the stationary eigenvalue 1 stays: 1^Δ = 1"
    else:
        hint = "one eigenvalue per excited direction, (1 − η h_k)^Δ, plus the stationary 1"
    return wrong(ex, f"got {np.round(got, 6)}.", hint, strict=strict)
