"""The measurements behind the equivalence report's reasons (docs/theory.md §9 and §11).

Each function runs one check on the recorded window and returns numbers; ``report.py`` prints a
reason only when its check holds, quoting the number. Host-side NumPy throughout: these are
``O(n)`` diagnostics on a few vectors.

* ``claim_b_check``: which weights KMP and magnitude pruning put on different sides, and how many
  of them lie in the per-weight band of Claim B (§9);
* ``heavy_ball_blocker`` / ``momentum_identity``: whether the heavy-ball rule
  ``g_j = −(d_j − μ d_{j−1})/lr`` can be applied, and how well the snapshots obey it (§11);
* ``batch_kind`` / ``gradient_cosine``: whether the recorded gradients are mini-batch ones, and how
  much they turn from one step to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import asarray, namespace_of, to_numpy
from ..metadata import TrainingMetadata
from ..pruning.masks import n_to_prune
from ..trajectory import Trajectory

__all__ = ["HEADLINE_SPARSITY", "headline_sparsity", "claim_b_check", "heavy_ball_blocker",
           "momentum_identity", "batch_kind", "gradient_cosine", "cosine"]

HEADLINE_SPARSITY = 0.9  # the reasons quote the requested sparsity nearest this one


def headline_sparsity(sparsities: Sequence[float]) -> float:
    """The requested sparsity nearest ``HEADLINE_SPARSITY`` (the higher one on a tie)."""
    return min(sparsities, key=lambda p: (abs(p - HEADLINE_SPARSITY), -p))


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two vectors in float64 (0 when either is zero)."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def _prunable(layout: Any, n: int) -> np.ndarray:
    return np.ones(n, dtype=bool) if layout is None else to_numpy(layout.prunable_mask())


def _threshold(scores: np.ndarray, k: int) -> float:
    """The k-th smallest score (the largest one pruned), ties in index order (§8)."""
    return float(np.sort(scores, kind="stable")[k - 1])


def claim_b_check(kmp: Any, kmp_mask: dict[float, Any], gmp: Any, gmp_mask: dict[float, Any],
                  delta: Any, layout: Any) -> dict[float, dict[str, float]]:
    """Claim B measured at each sparsity: who changes sides, and which band explains it (§9).

    ``kmp = |θ_last + δ|`` and ``gmp = |θ_last|`` are the two score vectors, ``*_mask`` their
    masks by sparsity, ``δ`` the fixed point minus the last snapshot. For a common threshold τ a
    weight with ``||θ_i| − τ| > |δ_i|`` cannot change sides; the two thresholds differ by
    ``|τ_KMP − τ_GMP| <= ‖δ‖∞``, so every weight that does change sides has
    ``||θ_i| − τ_GMP| <= |δ_i| + |τ_KMP − τ_GMP| <= 2‖δ‖∞``. Returns, per sparsity:
    ``changed_sides``, ``within_own_band`` (``<= |δ_i|``), ``within_shifted_band`` (``<= |δ_i| +
    |τ_KMP − τ_GMP|``), ``threshold`` (τ_GMP), ``threshold_shift`` and ``max_abs_delta`` (over the
    prunable weights).
    """
    s_kmp, s_gmp = to_numpy(kmp).astype(np.float64), to_numpy(gmp).astype(np.float64)
    d = np.abs(to_numpy(delta).astype(np.float64))
    prunable = _prunable(layout, s_gmp.shape[0])
    n_prunable = int(prunable.sum())
    max_delta = float(d[prunable].max()) if n_prunable else 0.0
    out: dict[float, dict[str, float]] = {}
    for p, mask in gmp_mask.items():
        k = n_to_prune(p, n_prunable)
        changed = prunable & (to_numpy(mask) != to_numpy(kmp_mask[p]))
        row = {"changed_sides": int(changed.sum()), "within_own_band": 0,
               "within_shifted_band": 0, "threshold": float("nan"), "threshold_shift": 0.0,
               "max_abs_delta": max_delta}
        if 0 < k < n_prunable:
            tau = _threshold(s_gmp[prunable], k)
            shift = abs(_threshold(s_kmp[prunable], k) - tau)
            band = np.abs(s_gmp - tau)
            slack = 1e-12 * max(tau, max_delta, 1e-300)  # rounding of |θ + δ| in float64
            row.update(threshold=tau, threshold_shift=shift,
                       within_own_band=int((changed & (band <= d + slack)).sum()),
                       within_shifted_band=int((changed & (band <= d + shift + slack)).sum()))
        out[p] = row
    return out


def heavy_ball_blocker(meta: TrainingMetadata, j: int) -> str | None:
    """Why the heavy-ball identity cannot be applied at snapshot ``j`` (None: it can).

    Only for recorded heavy-ball SGD (``optimizer == "sgd"``, momentum > 0); the caller checks
    that first. It needs every optimizer step recorded (stride 1), no Nesterov, no weight decay,
    no dampening and a previous update ``d_{j−1}`` in the window.
    """
    if meta.nesterov:
        return "Nesterov momentum evaluates the gradient at a look-ahead point"
    if meta.every != 1:
        return f"snapshot stride every={meta.every}: d_j sums {meta.every} steps"
    if meta.weight_decay != 0.0:
        return f"weight decay {meta.weight_decay:g} adds lambda*theta to each step"
    if float(meta.extra.get("dampening") or 0.0) != 0.0:
        return f"dampening {meta.extra['dampening']:g} rescales the gradient in the velocity"
    if j < 1:
        return "the window has no update before d_j"
    return None


def momentum_identity(trajectory: Trajectory, j: int) -> dict[str, Any]:
    """``−(d_j − μ d_{j−1})`` from the snapshots against the recorded gradient ``g_j`` (§11).

    With ``v_j = μ v_{j−1} + g_j`` and ``θ_{j+1} = θ_j − lr v_j`` (heavy-ball SGD, every step
    recorded), ``g_j = −(d_j − μ d_{j−1})/lr`` exactly. Returns the corrected update
    (``"update"``, float64 on the snapshots' backend), its cosine with ``g_j`` and the learning
    rate it implies (``⟨r, g⟩/⟨g, g⟩``; the recorded ``lr`` when the rule holds with a constant
    rate).
    """
    mu = trajectory.metadata.momentum
    w = trajectory.snapshots
    row = [to_numpy(w[i, :]).astype(np.float64) for i in (j - 1, j, j + 1)]
    recovered = -((row[2] - row[1]) - mu * (row[1] - row[0]))
    g = to_numpy(trajectory.gradients[j + 1, :]).astype(np.float64)
    gg = float(g @ g)
    xp = namespace_of(trajectory.snapshots)
    return {"update": asarray(recovered, xp=xp), "cosine": cosine(recovered, g),
            "implied_lr": float(recovered @ g / gg) if gg > 0 else float("nan")}


def batch_kind(meta: TrainingMetadata) -> str:
    """``"mini-batch"``, ``"full-batch"`` (one step per epoch) or ``"unknown"`` (not recorded)."""
    if meta.steps_per_epoch is None:
        return "unknown"
    return "full-batch" if meta.steps_per_epoch == 1 else "mini-batch"


def gradient_cosine(trajectory: Trajectory) -> float | None:
    """Mean cosine of consecutive recorded gradients over the window (None: fewer than two)."""
    if trajectory.gradients is None:
        return None
    steps = to_numpy(trajectory.steps)
    first = trajectory.metadata.first_gradient_row or 0
    rows = [i for i in range(first, trajectory.n_snapshots) if int(steps[i]) > 0]
    if len(rows) < 2:
        return None
    grads = [to_numpy(trajectory.gradients[i, :]) for i in rows]
    return float(np.mean([cosine(a, b) for a, b in zip(grads, grads[1:])]))
