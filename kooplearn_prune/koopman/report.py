"""Koopman pruning versus classical pruning, shown step by step (docs/theory.md §9-§11).

``equivalence_report(trajectory)`` fits the KMD, prints the spectrum, the stationary eigenvalue
and its distance from 1, the overlap of KMP's mask with global magnitude pruning (GMP) of the last
snapshot at several sparsities, the overlap of KGP's mask with gradient pruning when gradients
were recorded, and for every gap the reason the theory gives.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import namespace_of
from ..metadata import ADAM_KINDS, TrainingMetadata
from ..pruning.gradient import gradient_scores_from
from ..pruning.masks import global_mask
from ..pruning.metrics import jaccard, overlap
from ..pruning.scores import magnitude_scores
from ..trajectory import Trajectory
from .kmd import KMD
from .scores import kgp_scores, kmp_scores

__all__ = ["equivalence_report", "EquivalenceReport", "DEFAULT_SPARSITIES"]

DEFAULT_SPARSITIES = (0.5, 0.75, 0.9, 0.95, 0.97)
NOISY_RECONSTRUCTION = 0.05  # relative error above which step 1 suggests truncating the rank


@dataclass
class EquivalenceReport:
    """What ``equivalence_report`` measured; ``str(report)`` is the printed text."""

    n_snapshots: int
    n_params: int
    rank: int
    solver: str  # the KMD solver used, "svd" or "gram"
    eigenvalues: np.ndarray
    stationary_eigenvalue: complex
    distance_from_one: float
    growing_amplitude_share: float
    fixed_point_shift: float
    kmp_vs_magnitude: dict[float, float]
    kmp_vs_magnitude_jaccard: dict[float, float]
    kgp_vs_update: dict[float, float]
    kgp_vs_gradient: dict[float, float] | None
    kgp_vs_gradient_jaccard: dict[float, float] | None
    reasons: list[str] = field(default_factory=list)
    text: str = ""

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (eigenvalues as [real, imag] pairs)."""
        return {
            "n_snapshots": self.n_snapshots, "n_params": self.n_params, "rank": self.rank,
            "solver": self.solver,
            "eigenvalues": [[float(z.real), float(z.imag)] for z in self.eigenvalues],
            "stationary_eigenvalue": [float(self.stationary_eigenvalue.real),
                                      float(self.stationary_eigenvalue.imag)],
            "distance_from_one": self.distance_from_one,
            "growing_amplitude_share": self.growing_amplitude_share,
            "fixed_point_shift": self.fixed_point_shift,
            "kmp_vs_magnitude": {str(k): v for k, v in self.kmp_vs_magnitude.items()},
            "kmp_vs_magnitude_jaccard": {str(k): v for k, v in
                                         self.kmp_vs_magnitude_jaccard.items()},
            "kgp_vs_update": {str(k): v for k, v in self.kgp_vs_update.items()},
            "kgp_vs_gradient": None if self.kgp_vs_gradient is None else
            {str(k): v for k, v in self.kgp_vs_gradient.items()},
            "reasons": list(self.reasons),
        }


def _relative_distance(a: Any, b: Any) -> float:
    """``‖a − b‖ / ‖b‖`` in float64."""
    xp = namespace_of(a, b)
    b64 = xp.astype(b, xp.float64)
    diff = xp.astype(a, xp.float64) - b64
    return float(xp.sqrt(xp.sum(diff * diff)) / max(float(xp.sqrt(xp.sum(b64 * b64))), 1e-300))


def equivalence_report(trajectory: Trajectory, *, kmd: KMD | None = None,
                       sparsities: Sequence[float] = DEFAULT_SPARSITIES,
                       printer: Callable[[str], None] | None = print) -> EquivalenceReport:
    """Compare Koopman pruning with magnitude and gradient pruning on one recorded window.

    ``kmd`` defaults to ``KMD().fit(trajectory)``. Prints the report with ``printer`` (pass
    ``None`` to stay silent) and returns it as an ``EquivalenceReport``.
    """
    if not isinstance(trajectory, Trajectory):
        raise TypeError(f"trajectory must be a Trajectory, got {type(trajectory).__name__}")
    sparsities = tuple(float(p) for p in sparsities)
    for p in sparsities:
        if not 0 <= p < 1:
            raise ValueError(f"sparsities must lie in [0, 1), got {p}")
    kmd = KMD().fit(trajectory) if kmd is None else kmd
    layout = trajectory.layout
    meta = trajectory.metadata
    lines: list[str] = []
    say = lines.append

    # Step 1: the spectrum.
    lam = np.asarray(kmd.eigenvalues_)
    mod = np.abs(lam)
    if kmd.reconstruction_error_ > NOISY_RECONSTRUCTION:
        say(f"        note: the KMD reconstructs this window with a "
            f"{kmd.reconstruction_error_:.0%} error; on a noisy mini-batch window a truncated "
            f"rank (e.g. KMD(rank=10)) or a stride every > 1 usually gives a cleaner spectrum")
    others = np.ones(lam.shape, dtype=bool)
    others[kmd.fixed_point_info_.index] = False  # the stationary mode is counted on its own
    say(f"Step 1. KMD of {trajectory.n_snapshots} snapshots x {trajectory.n_params} parameters "
        f"(solver={kmd.solver_}, rank {kmd.rank_}, reconstruction error "
        f"{kmd.reconstruction_error_:.2e})")
    say(f"        besides the stationary mode: |lambda| < 1 (decaying): "
        f"{int(np.sum(others & (mod < 1)))}   |lambda| >= 1 (oscillating or growing): "
        f"{int(np.sum(others & (mod >= 1)))}   complex pairs: {int(np.sum(lam.imag > 0))}")

    # Step 2: the stationary mode and the predicted fixed point.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fixed = kmd.fixed_point()
        kmp = kmp_scores(kmd)
    info = kmd.fixed_point_info_
    lam_star = complex(info.eigenvalue)
    say(f"Step 2. stationary eigenvalue lambda* = {lam_star.real:.6f}{lam_star.imag:+.2e}i, "
        f"|lambda* - 1| = {info.distance_from_one:.2e}; amplitude share of growing modes "
        f"{info.growing_amplitude_share:.2e}")
    for message in dict.fromkeys(str(w.message) for w in caught):
        say(f"        warning: {message}")
    last = trajectory.last
    shift = _relative_distance(fixed, last)
    say(f"        predicted fixed point differs from the last snapshot by {shift:.2e} "
        f"(relative norm): the distance from convergence")

    # Step 3: KMP versus global magnitude pruning of the last snapshot.
    gmp = magnitude_scores(last)
    kmp_overlap, kmp_jac = _compare(kmp, gmp, sparsities, layout)
    say("Step 3. KMP mask vs global magnitude mask of the last snapshot (overlap of kept sets)")
    for p in sparsities:
        say(f"        sparsity {p:5.2f}: overlap {kmp_overlap[p]:.4f}   jaccard {kmp_jac[p]:.4f}")

    # Step 4: KGP versus pruning by the observed update, then by the recorded gradient.
    # KGP at snapshot j scores |θ̂_j ⊙ (θ̂_{j+1} − θ̂_j)|: compare it first with the same formula
    # on the recorded snapshots (the identity KGP encodes), then with |θ_j ⊙ ∇L(θ_j)|, where the
    # recorder stores ∇L(θ_j) with the next snapshot (gradients[j + 1] produced snapshot j + 1).
    j = trajectory.n_snapshots - 2
    kgp = kgp_scores(kmd, at=j)
    theta_j = trajectory.snapshots[j, :]
    observed = gradient_scores_from(theta_j, trajectory.snapshots[j + 1, :] - theta_j)
    kgp_update, _ = _compare(kgp, observed, sparsities, layout)
    say(f"Step 4. KGP mask at snapshot {j} vs the mask of |theta_j * (theta_(j+1) - theta_j)| "
        f"from the recorded snapshots (what KGP reconstructs)")
    for p in sparsities:
        say(f"        sparsity {p:5.2f}: overlap {kgp_update[p]:.4f}")
    kgp_overlap = kgp_jac = None
    if trajectory.gradients is not None:
        grad = gradient_scores_from(theta_j, trajectory.gradients[j + 1, :])
        kgp_overlap, kgp_jac = _compare(kgp, grad, sparsities, layout)
        say("        ... and vs gradient pruning |theta_j * g_j| with the recorded mini-batch "
            "gradient")
        for p in sparsities:
            say(f"        sparsity {p:5.2f}: overlap {kgp_overlap[p]:.4f}   "
                f"jaccard {kgp_jac[p]:.4f}")
        recovered = _momentum_free_gradient(trajectory, j)
        if recovered is not None:
            recovered_overlap, _ = _compare(gradient_scores_from(theta_j, recovered), grad,
                                            sparsities, layout)
            say(f"        the recorded snapshots give the gradient back once momentum is undone, "
                f"g_j ~ -(d_j - mu d_(j-1)) with d_j = theta_(j+1) - theta_j: overlap "
                f"{recovered_overlap[max(sparsities)]:.4f} at sparsity {max(sparsities)}. So the "
                f"gap is the momentum: KGP tracks the velocity. Undoing it from the KMD's "
                f"predicted updates subtracts two nearly equal vectors and amplifies the "
                f"reconstruction error instead")
    else:
        say("        no gradients recorded (TrajectoryRecorder(record_gradients=True)): "
            "KGP vs gradient pruning skipped")

    # Step 5: reasons for any gap.
    every = meta.every
    reasons = _reasons(kmp_overlap, kgp_update, kgp_overlap, info, shift, meta, every)
    say("Step 5. " + ("no gap: the masks agree at every sparsity" if not reasons else
                      "where the masks differ, and why (docs/theory.md, sections 9 and 11):"))
    for r in reasons:
        say(f"        - {r}")
    text = "\n".join(lines)
    if printer is not None:
        printer(text)
    return EquivalenceReport(
        n_snapshots=trajectory.n_snapshots, n_params=trajectory.n_params, rank=int(kmd.rank_),
        solver=str(kmd.solver_), eigenvalues=lam, stationary_eigenvalue=lam_star,
        distance_from_one=float(info.distance_from_one),
        growing_amplitude_share=float(info.growing_amplitude_share), fixed_point_shift=shift,
        kmp_vs_magnitude=kmp_overlap, kmp_vs_magnitude_jaccard=kmp_jac,
        kgp_vs_update=kgp_update, kgp_vs_gradient=kgp_overlap,
        kgp_vs_gradient_jaccard=kgp_jac, reasons=reasons, text=text,
    )


def _momentum_free_gradient(trajectory: Trajectory, j: int) -> Any:
    """``−(d_j − μ d_{j−1})`` from the snapshots, ∝ the gradient of heavy-ball SGD (§3.2, Claim D).

    With ``v_j = μ v_{j−1} + g_j`` and ``θ_{j+1} = θ_j − η v_j`` (every optimizer step recorded,
    no Nesterov, no weight decay), ``g_j = −(d_j − μ d_{j−1}) / η``. None when that does not apply.
    """
    meta = trajectory.metadata
    momentum = meta.momentum
    if (momentum <= 0 or meta.every != 1 or meta.nesterov or meta.weight_decay != 0.0 or j < 1
            or meta.optimizer != "sgd"):
        return None
    w = trajectory.snapshots
    return -((w[j + 1, :] - w[j, :]) - momentum * (w[j, :] - w[j - 1, :]))


def _compare(scores_a: Any, scores_b: Any, sparsities: Sequence[float],
             layout: Any) -> tuple[dict[float, float], dict[float, float]]:
    """Overlap and Jaccard of the two methods' global masks at each sparsity."""
    overlaps, jaccards = {}, {}
    for p in sparsities:
        a = global_mask(scores_a, p, layout=layout)
        b = global_mask(scores_b, p, layout=layout)
        overlaps[p], jaccards[p] = overlap(a, b, layout), jaccard(a, b, layout)
    return overlaps, jaccards


def _reasons(kmp_overlap: dict[float, float], kgp_update: dict[float, float],
             kgp_overlap: dict[float, float] | None, info: Any, shift: float,
             meta: TrainingMetadata, every: int) -> list[str]:
    reasons: list[str] = []
    if any(v < 1.0 for v in kgp_update.values()):
        reasons.append("KGP vs observed update: the KMD reconstructs the window only "
                       "approximately (see the reconstruction error in step 1)")
    if any(v < 1.0 for v in kmp_overlap.values()):
        reasons.append(
            f"KMP vs magnitude: training has not converged over the window (the fixed point is "
            f"{shift:.2e} away from the last snapshot, relative); masks can differ only for "
            f"weights whose magnitude lies within that shift of the threshold (Claim B)")
    if not info.reliable:  # the same thresholds as KMD.fixed_point (kmd.STATIONARY_TOL, ...)
        reasons.append(
            f"the stationary mode is uncertain (|lambda* - 1| = {info.distance_from_one:.1e}, "
            f"tol {info.tol:.0e}; growing-mode amplitude share "
            f"{info.growing_amplitude_share:.1e}, max {info.max_growing_share:.0e}): record a "
            f"longer or later window")
    if kgp_overlap is not None and any(v < 1.0 for v in kgp_overlap.values()):
        optimizer = _optimizer_reason(meta)
        if optimizer is not None:
            reasons.append(optimizer)
        reasons.append("mini-batch noise: the recorded gradient is one mini-batch's, while the "
                       "KMD sees the smoothed dynamics (Claim D)")
        if every > 1:
            reasons.append(f"snapshot stride {every}: KGP estimates the mean update over "
                           f"{every} steps, the recorded gradient is a single step's (Claim D)")
        reasons.append("nonlinearity: the KMD of a finite window is a linear approximation "
                       "of the training map")
    return reasons


def _optimizer_reason(meta: TrainingMetadata) -> str | None:
    """Why the optimizer's update is not the raw gradient: the report's reading of the metadata.

    The record states what the optimizer is (kind, momentum, betas); what that means for the
    gap between KGP and gradient pruning is decided here (docs/theory.md §11).
    """
    kind = meta.optimizer
    if kind in ADAM_KINDS:
        name = "AdamW" if kind == "adamw" else "Adam"
        if meta.betas is None:
            return (f"{name}: the update is the gradient's running mean divided elementwise by "
                    f"the root of its second moment, not the raw gradient (Claim D)")
        beta1 = meta.betas[0]
        mean = "the gradient" if beta1 == 0 else "a normalized running mean of the gradients"
        return (f"{name} with betas[0]={beta1:g}: the update is {mean}, divided elementwise by "
                f"the root of the running mean of squared gradients (betas[1]={meta.betas[1]:g}),"
                f" not the velocity of heavy-ball momentum nor the raw gradient, so KGP tracks "
                f"that normalized update (Claim D)")
    if meta.momentum > 0:
        what = "Nesterov momentum" if meta.nesterov else "momentum"
        who = "" if kind in (None, "sgd") else f"{kind} with "
        return (f"{who}{what} {meta.momentum:g}: the update follows the velocity, not the raw "
                f"gradient, so KGP tracks the velocity (Claim D)")
    if kind not in (None, "sgd"):
        return (f"optimizer {kind}: its update is not -lr times the raw gradient, so KGP tracks "
                f"that update (Claim D)")
    return None
