"""Checks for the exercises of notebook 06 (early training, paired over seeds)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from ..backend import to_numpy
from ..methods import method_scores
from .verdict import as_float_array, is_missing, missing, right, wrong

__all__ = ["paired_interval", "trend_scores", "random_overlap"]


def paired_interval(answer: Any, kmp: Any, gmp: Any, *, strict: bool | None = None) -> Any:
    """06.1: the 95 % Student-t interval ``(low, high)`` of the seed-by-seed KMP − GMP."""
    ex = "06.1"
    if is_missing(answer):
        return missing(ex, "(low, high)", "d = kmp − gmp per seed; mean ± t · std(d, ddof=1)/√n",
                       strict=strict)
    d = np.asarray(kmp, dtype=np.float64) - np.asarray(gmp, dtype=np.float64)
    n = d.size
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
    want = np.array([d.mean() - half, d.mean() + half])
    got = as_float_array(answer)
    if got is not None and got.shape == (2,) and np.allclose(got, want, rtol=1e-6, atol=1e-12):
        return right(ex, f"[{want[0]:+.4f}, {want[1]:+.4f}] over {n} seeds.", strict=strict)
    z_half = 1.959963984540054 * d.std(ddof=1) / np.sqrt(n)
    welch = stats.t.ppf(0.975, n - 1) * np.sqrt(np.var(kmp, ddof=1) / n + np.var(gmp, ddof=1) / n)
    if got is not None and got.shape == (2,) and np.allclose(got, d.mean() + np.array(
            [-z_half, z_half])):
        hint = f"with {n} seeds use Student's t with {n - 1} degrees of freedom, not 1.96"
    elif got is not None and got.shape == (2,) and np.allclose(got, d.mean() + np.array(
            [-welch, welch])):
        hint = ("pair the seeds: subtract first (d = kmp − gmp), then take the spread of d; "
                "the spread of each method separately includes what the seeds share")
    elif got is not None and got.shape == (2,) and np.isclose(got.mean(), d.mean()):
        hint = "the center is right; the half-width is t_{0.975, n−1} · std(d, ddof=1) / √n"
    else:
        hint = "return (low, high) = mean(d) ∓ t_{0.975, n−1} · std(d, ddof=1) / √n"
    return wrong(ex, f"expected [{want[0]:+.4f}, {want[1]:+.4f}].", hint, strict=strict)


def trend_scores(answer: Any, window: Any, *, strict: bool | None = None) -> Any:
    """06.2: the two-point trend scores ``|2 θ_m − θ_0|`` of a recorded window."""
    ex = "06.2"
    if is_missing(answer):
        return missing(ex, "scores", "extend the line through θ_0 and θ_m one window length "
                       "past θ_m", strict=strict)
    got = as_float_array(answer)
    want = np.asarray(to_numpy(method_scores("trend_two_point", window)), dtype=np.float64)
    if got is not None and got.shape == want.shape and np.allclose(got, want, rtol=1e-6,
                                                                   atol=1e-7):
        return right(ex, "your scores equal the registry's trend_two_point.", strict=strict)
    rows = np.asarray(to_numpy(window.snapshots), dtype=np.float64)
    if got is not None and got.shape == want.shape and np.allclose(got, np.abs(rows[-1]
                                                                               - rows[0])):
        hint = ("|θ_m − θ_0| is how far the weight moved; the trend forecasts where it will "
                "be: θ_m + (θ_m − θ_0)")
    else:
        hint = "scores = |θ_m + (θ_m − θ_0)| = |2 θ_m − θ_0|, with θ_0 and θ_m the window's ends"
    return wrong(ex, "these are not the two-point trend scores.", hint, strict=strict)


def random_overlap(answer: Any, sparsity: float, n_kept: int, *,
                   strict: bool | None = None) -> Any:
    """06.3: the measured overlap of a random mask with a fixed one is about ``1 − p``."""
    ex = "06.3"
    if is_missing(answer):
        return missing(ex, "measured", "a random mask: global_mask of random scores",
                       strict=strict)
    got, want = float(answer), 1.0 - sparsity
    noise = 4 * np.sqrt(want * sparsity / max(int(n_kept), 1))   # binomial spread, 4 sigma
    if abs(got - want) <= noise:
        return right(ex, f"{got:.3f}, within the noise of 1 − p = {want:.2f}.", strict=strict)
    hint = ("a random kept weight is kept by the other mask with probability 1 − p (the "
            "share it keeps), not p" if np.isclose(got, sparsity, atol=noise) else
            "keep the top 1 − p of random scores and measure overlap(...) with the converged "
            "mask")
    return wrong(ex, f"got {got:.3f}; a random mask should give about {want:.2f} ± {noise:.3f}.",
                 hint, strict=strict)
