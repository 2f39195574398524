"""Koopman pruning scores, computed from the KMD of a training trajectory (docs/theory.md §8).

* ``kmp_scores``: Koopman magnitude pruning, ``|Re ξ_{k*}|``, the magnitude of the predicted fixed
  point (§9); it reduces to global magnitude pruning when training has converged (Claim A).
* ``kgp_scores``: Koopman gradient pruning, ``|θ̂_j ⊙ ĝ_j|`` or ``|ĝ_j|`` with the Koopman
  gradient estimate ``ĝ_j = −(θ̂_{j+1} − θ̂_j)`` (§11); it reduces to gradient pruning for
  full-batch gradient descent on a quadratic loss (Claim C).
* ``horizon_scores``: ``|θ̂(t_last + h)|``, from magnitude pruning of the current weights (h = 0)
  to KMP (h = ∞) (§10).

Controls, computed from the same window without the KMD (docs/theory.md §12): a Koopman score is
only worth its cost if it beats them.

* ``trend_scores``: ``|θ_m + h·b|`` with ``b`` the window's straight-line trend (two-point or
  least-squares), ``h`` snapshot intervals ahead, as in ``horizon_scores``;
* ``window_mean_scores``: ``|mean_j θ_j|``.

All scores are float64 vectors ``(n,)`` on the snapshots' backend; ``pruning.masks.global_mask``
turns them into masks. The learning rate η is left out of ĝ: a positive scale never changes a mask.
Only the public surface of ``KMD`` is used: ``combine`` (one pass over the snapshots),
``prediction_coefficients``, ``update_coefficients``, ``predict`` and ``fixed_point``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import namespace_of
from .kmd import KMD, STATIONARY_TOL, NotFittedError, snapshot_times

__all__ = ["kmp_scores", "kgp_scores", "horizon_scores", "koopman_gradient", "trend_scores",
           "window_mean_scores", "TREND_FITS"]

KGP_KINDS = ("weight_times_gradient", "gradient")
TREND_FITS = ("two_point", "lstsq")


def _fitted(kmd: Any) -> KMD:
    if not isinstance(kmd, KMD):
        raise TypeError(f"kmd must be a fitted KMD (KMD().fit(trajectory)), got "
                        f"{type(kmd).__name__}")
    if not kmd.is_fitted:
        raise NotFittedError("this KMD is not fitted yet: call kmd.fit(trajectory) before "
                             "computing Koopman scores")
    return kmd


def _last_index(kmd: KMD, at: Any) -> float:
    """The snapshot index ``j`` (default: the last snapshot, m)."""
    if at is None:
        return float(kmd.n_snapshots_ - 1)
    times, scalar = snapshot_times(at, "at")
    if not scalar:
        raise ValueError(f"at must be one snapshot index, got an array of shape {times.shape}")
    return float(times[0])


def kmp_scores(kmd: KMD, *, tol: float = STATIONARY_TOL, strict: bool = False) -> Any:
    """KMP scores ``s_i = |Re ξ_{k*,i}|``, the magnitude of the predicted fixed point (§9).

    ``tol`` and ``strict`` go to ``KMD.fixed_point``: an unreliable fixed point (no eigenvalue
    within ``tol`` of 1, or growing modes) warns, or raises ValueError with ``strict=True``.
    Returns float64 ``(n,)`` on the snapshots' backend.
    """
    fixed = _fitted(kmd).fixed_point(tol=tol, strict=strict)
    return namespace_of(fixed).abs(fixed)


def koopman_gradient(kmd: KMD, at: Any = None) -> Any:
    """The Koopman gradient estimate ``ĝ_j = −(θ̂_{j+1} − θ̂_j)`` at snapshot ``j = at``
    (default m, the last), float64 ``(n,)`` (docs/theory.md §11; η dropped, so this is η·∇L for
    gradient descent)."""
    kmd = _fitted(kmd)
    return kmd.combine(-kmd.update_coefficients(_last_index(kmd, at)))


def kgp_scores(kmd: KMD, at: Any = None, kind: str = "weight_times_gradient") -> Any:
    """KGP scores at snapshot ``j = at`` (default m, the last snapshot), docs/theory.md §11.

    ``kind="weight_times_gradient"``: ``|θ̂_j ⊙ ĝ_j|`` (matches ``|θ ⊙ ∇L|``, SNIP-style gradient
    pruning); ``kind="gradient"``: ``|ĝ_j|`` (matches ``|∇L|``). ``ĝ_j = −(θ̂_{j+1} − θ̂_j)``; the
    stationary mode drops out of it. ``at`` may be any real ``j >= 0`` (``j > m`` extrapolates).
    Returns float64 ``(n,)`` on the snapshots' backend (θ̂_j and ĝ_j come from one pass over W).
    """
    if kind not in KGP_KINDS:
        raise ValueError(f"kind={kind!r} is unknown; choose 'weight_times_gradient' "
                         f"(|θ ⊙ g|) or 'gradient' (|g|)")
    kmd = _fitted(kmd)
    j = _last_index(kmd, at)
    gradient_row = -kmd.update_coefficients(j)
    if kind == "gradient":
        g = kmd.combine(gradient_row)
        return namespace_of(g).abs(g)
    both = kmd.combine(np.stack([kmd.prediction_coefficients(j), gradient_row]))
    xp = namespace_of(both)
    return xp.abs(both[0, :] * both[1, :])


def horizon_scores(kmd: KMD, h: float) -> Any:
    """Scores ``|θ̂(t_last + h)|`` from the KMD reconstruction (docs/theory.md §10).

    ``h`` in snapshot intervals, ``h >= 0``: ``h = 0`` is magnitude pruning of the reconstructed
    last snapshot, ``h = math.inf`` is KMP (the fixed point; it warns when that is unreliable).
    Returns float64 ``(n,)`` on the snapshots' backend.
    """
    kmd = _fitted(kmd)
    if not _is_horizon(h):
        raise ValueError(f"h={h!r} must be a number >= 0 (snapshot intervals past the last "
                         f"snapshot; math.inf gives KMP)")
    if math.isinf(h):
        return kmp_scores(kmd)
    theta = kmd.predict(float(kmd.n_snapshots_ - 1) + float(h))
    return namespace_of(theta).abs(theta)


def _is_horizon(h: Any) -> bool:
    """``h`` is a real number >= 0 (inf included), not a bool."""
    return (not isinstance(h, bool) and isinstance(h, (int, float, np.integer, np.floating))
            and not math.isnan(h) and h >= 0)


def _window_rows(snapshots: Any, what: str) -> tuple[Any, int]:
    """The snapshot array ``(m+1, n)`` of a window (a Trajectory or an array) and ``m``."""
    rows = getattr(snapshots, "snapshots", snapshots)
    if not hasattr(rows, "shape") or len(rows.shape) != 2 or rows.shape[0] < 1:
        raise ValueError(f"{what} needs snapshots of shape (m+1, n), got "
                         f"{getattr(rows, 'shape', type(rows).__name__)}")
    return rows, int(rows.shape[0]) - 1


def trend_scores(snapshots: Any, h: float | None = None, fit: str = "two_point") -> Any:
    """Control: ``|θ_m + h·b|``, the window's straight-line trend ``h`` intervals ahead (§12).

    ``snapshots``: a Trajectory or an array ``(m+1, n)`` of snapshots ``θ_0..θ_m`` at equal
    strides, ``m >= 1``. ``h`` counts snapshot intervals past ``θ_m``, as in ``horizon_scores``
    (docs/theory.md §10); the default ``h = m`` extrapolates one window length ahead.

    * ``fit="two_point"``: ``b = (θ_m − θ_0)/m``; at ``h = m`` the score is ``|2θ_m − θ_0|``,
      at ``h = 0`` it is magnitude pruning of ``θ_m``;
    * ``fit="lstsq"``: the least-squares line ``θ_j ≈ a + b j`` through every snapshot, evaluated
      at ``m + h``.

    Both are exact on a linear trajectory ``θ_j = a + b j`` and ignore any curvature: a geometric
    transient is extrapolated along its chord (KMP follows it to its limit, §9). Float64 ``(n,)``
    on the snapshots' backend, in one pass over the rows.
    """
    if fit not in TREND_FITS:
        raise ValueError(f"fit={fit!r} is unknown; choose 'two_point' or 'lstsq'")
    rows, m = _window_rows(snapshots, "trend_scores")
    if m < 1:
        raise ValueError("trend_scores needs a window of at least 2 snapshots (a trend needs two "
                         "points); record a longer window")
    h = float(m) if h is None else h
    if not _is_horizon(h) or math.isinf(h):
        raise ValueError(f"h={h!r} must be a finite number >= 0 (snapshot intervals past the "
                         f"last snapshot; a straight line has no limit)")
    xp = namespace_of(rows)
    last = xp.astype(rows[m, :], xp.float64)
    if fit == "two_point":
        first = xp.astype(rows[0, :], xp.float64)
        theta = last + (float(h) / m) * (last - first)
    else:
        centre = m / 2.0
        mean = xp.zeros(last.shape, dtype=xp.float64)
        moment = xp.zeros(last.shape, dtype=xp.float64)  # Σ_j (j − centre) θ_j
        for j in range(m + 1):
            row = xp.astype(rows[j, :], xp.float64)
            mean = mean + row
            moment = moment + (j - centre) * row
        slope = moment / (m * (m + 1) * (m + 2) / 12.0)  # Σ_j (j − centre)² in closed form
        theta = mean / (m + 1) + (m + float(h) - centre) * slope
    return xp.abs(theta)


def window_mean_scores(snapshots: Any) -> Any:
    """Control: ``|mean_j θ_j|``, the magnitude of the window's average weights (§12).

    ``snapshots``: a Trajectory or an array ``(m+1, n)``; float64 ``(n,)`` on its backend.
    """
    rows, m = _window_rows(snapshots, "window_mean_scores")
    xp = namespace_of(rows)
    total = xp.zeros((rows.shape[1],), dtype=xp.float64)
    for j in range(m + 1):
        total = total + xp.astype(rows[j, :], xp.float64)
    return xp.abs(total / (m + 1))
