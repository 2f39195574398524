"""Checks for the exercises of notebook 04 (KMP reduces to magnitude pruning)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..koopman import horizon_scores, kmp_scores
from ..pruning import global_mask
from .verdict import as_float_array, is_missing, missing, right, wrong

__all__ = ["kmp_by_hand", "disputed_count", "horizon_by_hand"]


def _quiet(fn: Any, *args: Any) -> np.ndarray:
    """The library's scores; the notebook already shows their warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(to_numpy(fn(*args)), dtype=np.float64)


def kmp_by_hand(answer: Any, kmd: Any, *, strict: bool | None = None) -> Any:
    """04.1: ``|Re ξ_{k*}|`` from ``eigenvalues_`` and ``modes_``, without ``kmp_scores``."""
    ex = "04.1"
    if is_missing(answer):
        return missing(ex, "scores", "k* = argmin |λ_k − 1|, then abs(real(modes_[k*]))",
                       strict=strict)
    got = as_float_array(answer)
    want = _quiet(kmp_scores, kmd)
    if got is not None and got.shape == want.shape and np.allclose(got, want, rtol=1e-9,
                                                                   atol=1e-12):
        return right(ex, "your scores equal kmp_scores(kmd).", strict=strict)
    lam = np.asarray(to_numpy(kmd.eigenvalues_))
    by_size = int(np.argmax(np.abs(lam)))
    modes = np.asarray(to_numpy(kmd.modes_))
    if got is not None and got.shape == want.shape and np.allclose(
            got, np.abs(modes[by_size].real)) and by_size != kmd.fixed_point_info_.index:
        hint = "the stationary mode is the one with λ closest to 1, not the largest |λ|"
    elif got is not None and got.shape != want.shape:
        hint = f"one score per parameter: shape {want.shape}; modes_ has one mode per row"
    else:
        hint = "k* = np.argmin(np.abs(kmd.eigenvalues_ - 1)); scores = |Re modes_[k*]|"
    return wrong(ex, "these are not the KMP scores.", hint, strict=strict)


def disputed_count(answer: Any, kmp: Any, gmp: Any, layout: Any, sparsity: float, *,
                   strict: bool | None = None) -> Any:
    """04.2: how many weights GMP keeps and KMP removes at ``sparsity``."""
    ex = "04.2"
    if is_missing(answer):
        return missing(ex, "n_disputed", "build both masks with global_mask and count "
                       "kept-by-GMP-and-removed-by-KMP", strict=strict)
    keep_k = np.asarray(to_numpy(global_mask(kmp, sparsity, layout=layout)))
    keep_g = np.asarray(to_numpy(global_mask(gmp, sparsity, layout=layout)))
    want = int(np.sum(keep_g & ~keep_k))
    got = int(answer)
    if got == want:
        return right(ex, f"{want} weights; as many go the other way, since both masks keep "
                     "the same number.", strict=strict)
    if got == 2 * want:
        hint = ("you counted both directions; the masks keep equally many weights, so each "
                "direction holds exactly half of the disagreements")
    elif got == int(np.sum(keep_g & keep_k)):
        hint = "that is the number they AGREE to keep"
    else:
        hint = "count keep_gmp & ~keep_kmp over all parameters (biases are always kept)"
    return wrong(ex, f"got {got}, expected {want} at sparsity {sparsity}.", hint, strict=strict)


def horizon_by_hand(answer: Any, kmd: Any, h: float, *, strict: bool | None = None) -> Any:
    """04.3: ``|Σ_k λ_k^(m+h) ξ_k|`` computed from the eigenvalues and modes."""
    ex = "04.3"
    if is_missing(answer):
        return missing(ex, "scores", "the last snapshot is j = m = n_snapshots_ − 1; "
                       "evaluate the sum at j = m + h", strict=strict)
    got = as_float_array(answer)
    want = _quiet(horizon_scores, kmd, h)
    if got is not None and got.shape == want.shape and np.allclose(got, want, rtol=1e-6,
                                                                   atol=1e-9):
        return right(ex, f"your scores equal horizon_scores(kmd, {h}).", strict=strict)
    lam = np.asarray(to_numpy(kmd.eigenvalues_))
    modes = np.asarray(to_numpy(kmd.modes_))
    from_start = np.abs(((lam ** h) @ modes).real)
    if got is not None and got.shape == want.shape and np.allclose(got, from_start, rtol=1e-6):
        hint = ("λ^h forecasts h intervals after the FIRST snapshot; the window ends at "
                "j = m, so use λ^(m + h)")
    else:
        hint = "scores = |Re Σ_k λ_k^(m+h) ξ_k| with m = kmd.n_snapshots_ − 1"
    return wrong(ex, "these are not the horizon scores.", hint, strict=strict)
