"""The equivalence report's reasons: one sentence per gap, each quoting its check (§9, §11).

``reasons(measured, info, metadata)`` reads the numbers ``equivalence_report`` measured on the
window (``report_checks``) and the training record, and returns a line for each gap only when
the check behind it holds. Nothing here asserts what was not measured: momentum is named as a
cause of KGP's gap only when undoing it on the KMD's updates closes part of it, noise only when
the record says the gradients were mini-batch ones, Adam's step as per-coordinate
preconditioning, never as momentum.
"""

from __future__ import annotations

from typing import Any

from ..metadata import ADAM_KINDS, TrainingMetadata

__all__ = ["reasons", "MOMENTUM_GAIN", "IDENTITY_COSINE"]

MOMENTUM_GAIN = 0.05  # overlap gain from undoing momentum that counts as explaining a gap
IDENTITY_COSINE = 0.99  # cosine above which the snapshots follow the heavy-ball rule


def _lr(meta: TrainingMetadata) -> str:
    return "unknown" if meta.lr is None else f"{meta.lr:g}"


def _gap_sparsity(overlaps: dict[float, float], headline: float) -> float:
    """The sparsity a reason quotes: the headline one if the masks differ there, else the worst."""
    return headline if overlaps[headline] < 1.0 else min(overlaps, key=lambda q: overlaps[q])


def reasons(m: dict[str, Any], info: Any, meta: TrainingMetadata) -> list[str]:
    """One line per gap, each quoting the measurement that supports it."""
    reasons: list[str] = []
    if any(v < 1.0 for v in m["kgp_vs_update"].values()):
        p = _gap_sparsity(m["kgp_vs_update"], m["headline_sparsity"])
        reasons.append(
            f"KGP vs observed update: overlap {m['kgp_vs_update'][p]:.4f} at sparsity {p:g}: the "
            f"KMD, a linear model fitted to the whole window, reconstructs the snapshots with "
            f"relative error {m['reconstruction_error']:.2e} but the update "
            f"theta_(j+1) - theta_j with relative error {m['kgp_update_error']:.2e}")
    if any(v < 1.0 for v in m["kmp_vs_magnitude"].values()):
        reasons.append(_claim_b_reason(m))
    if not info.reliable:  # the same thresholds as KMD.fixed_point (kmd.STATIONARY_TOL, ...)
        reasons.append(
            f"the stationary mode is uncertain (|lambda* - 1| = {info.distance_from_one:.1e}, "
            f"tol {info.tol:.0e}; growing-mode amplitude share "
            f"{info.growing_amplitude_share:.1e}, max {info.max_growing_share:.0e}): record a "
            f"longer or later window")
    kgp_gradient = m["kgp_vs_gradient"]
    if kgp_gradient is not None and any(v < 1.0 for v in kgp_gradient.values()):
        p = _gap_sparsity(kgp_gradient, m["headline_sparsity"])
        reasons.append(
            f"KGP vs recorded gradient: overlap {kgp_gradient[p]:.4f} at sparsity {p:g}, made of "
            f"KGP vs the observed update ({m['kgp_vs_update'][p]:.4f}) and the observed update "
            f"vs the recorded gradient ({m['update_vs_gradient'][p]:.4f})")
        if m["update_vs_gradient"][p] < 1.0:  # else the optimizer plays no part at p
            reasons.extend(_update_reasons(m, meta, p))
        reasons.extend(_batch_reasons(m, meta))
    return reasons


def _claim_b_reason(m: dict[str, Any]) -> str:
    """Claim B at the sparsity where most weights change sides (docs/theory.md §9)."""
    counts = m["claim_b"]
    p = max(counts, key=lambda q: (counts[q]["changed_sides"], q == m["headline_sparsity"], q))
    b = counts[p]
    n, own, shifted = b["changed_sides"], b["within_own_band"], b["within_shifted_band"]
    text = (f"KMP vs magnitude: the window has not converged (delta = fixed point - last "
            f"snapshot: max |delta_i| {b['max_abs_delta']:.2e}, relative L2 "
            f"{m['fixed_point_shift']:.2e}). At sparsity {p:g}, {n} weights change sides: {own} "
            f"lie within |delta_i| of the magnitude threshold tau = {b['threshold']:.3e} (Claim "
            f"B's per-weight condition), {shifted} of {n} within |delta_i| + "
            f"{b['threshold_shift']:.2e}, the shift between the two methods' thresholds (Claim "
            f"B's bound: 2 max|delta_i| = {2 * b['max_abs_delta']:.2e})")
    if shifted < n:
        text += (f"; {n - shifted} lie outside even that bound, which Claim B excludes: please "
                 f"report it")
    return text


def _update_reasons(m: dict[str, Any], meta: TrainingMetadata, p: float) -> list[str]:
    """Why the observed update is not the recorded gradient at sparsity ``p``: the record and
    the checks."""
    u = m["update_vs_gradient"][p]
    kind = meta.optimizer
    out: list[str] = []
    if kind in ADAM_KINDS:
        name = "AdamW" if kind == "adamw" else "Adam"
        betas = "" if meta.betas is None else f" (betas {meta.betas[0]:g}, {meta.betas[1]:g})"
        decay = (f"; its decoupled weight decay adds -lr*{meta.weight_decay:g}*theta"
                 if kind == "adamw" and meta.weight_decay else "")
        out.append(f"{name}{betas}: each step is -lr * m_hat / (sqrt(v_hat) + eps), a running "
                   f"mean of the gradients rescaled coordinate by coordinate (per-coordinate "
                   f"preconditioning), not a multiple of the gradient{decay}: the observed "
                   f"update's mask overlaps the recorded gradient's at {u:.4f}")
    elif meta.every > 1:
        out.append(f"snapshot stride {meta.every}: d_j sums {meta.every} optimizer steps, the "
                   f"recorded gradient is one step's; their masks overlap at {u:.4f}")
    elif kind == "sgd" and meta.momentum > 0:
        out.extend(_momentum_reasons(m, meta, p))
    elif kind == "sgd" and meta.weight_decay:
        out.append(f"weight decay {meta.weight_decay:g}: each step is -lr (g_j + lambda theta_j), "
                   f"not -lr g_j; the observed update's mask overlaps the gradient's at {u:.4f}")
    elif kind not in (None, "sgd"):
        out.append(f"optimizer {kind}: its step is not -lr times the raw gradient; the observed "
                   f"update's mask overlaps the recorded gradient's at {u:.4f}")
    else:
        settings = "plain SGD" if kind == "sgd" else "no optimizer recorded, no momentum"
        out.append(f"the recorded settings ({settings}, stride 1) make each update -lr g_j, yet "
                   f"the observed update's mask overlaps the recorded gradient's at {u:.4f}: the "
                   f"metadata does not describe these steps")
    return out


def _momentum_reasons(m: dict[str, Any], meta: TrainingMetadata, p: float) -> list[str]:
    """Heavy-ball SGD: the identity on the snapshots, and whether undoing it helps KGP (§11)."""
    u, mu = m["update_vs_gradient"][p], meta.momentum
    identity = m["momentum_identity"]
    if identity is None:
        return [f"SGD with momentum {mu:g}: the heavy-ball identity was not checked (see step 4);"
                f" the observed update's mask overlaps the recorded gradient's at {u:.4f}"]
    if identity["cosine"] < IDENTITY_COSINE:
        return [f"SGD with momentum {mu:g}: the snapshots do not follow the heavy-ball rule "
                f"g_j = -(d_j - mu d_(j-1))/lr (cosine {identity['cosine']:.4f} with the recorded "
                f"gradient): the recorded settings do not describe these steps"]
    free, kgp, kgp_free = (m["momentum_free_vs_gradient"][p], m["kgp_vs_gradient"][p],
                           m["kgp_momentum_free_vs_gradient"][p])
    out = [f"heavy-ball SGD (momentum {mu:g}, stride 1): the snapshots follow g_j = -(d_j - mu "
           f"d_(j-1))/lr (cosine {identity['cosine']:.5f}, implied lr "
           f"{identity['implied_lr']:.4g}, recorded {_lr(meta)}), so each update is the "
           f"velocity; undoing the rule on the snapshots turns the update's overlap with the "
           f"gradient from {u:.4f} into {free:.4f} (the update rule, not a property of the KMD)"]
    kmd_error = identity["kmd_error"]
    if kgp_free - kgp >= MOMENTUM_GAIN:
        out.append(f"momentum explains part of KGP's gap: undoing it on the KMD's updates raises "
                   f"KGP's overlap with the gradient from {kgp:.4f} to {kgp_free:.4f}")
    else:
        out.append(f"momentum does not measurably explain KGP's gap: undoing it on the KMD's "
                   f"updates gives {kgp_free:.4f} against KGP's {kgp:.4f} (a gain under "
                   f"{MOMENTUM_GAIN:g}); the KMD's estimate of the step's new gradient "
                   f"-(d_j - mu d_(j-1)) is off by {kmd_error:.2e} (relative L2)")
    return out


def _batch_reasons(m: dict[str, Any], meta: TrainingMetadata) -> list[str]:
    """Mini-batch gradients, only when the record says so; 'unknown' when it cannot tell."""
    c = m["gradient_cosine"]
    turn = ("" if c is None else f"; consecutive recorded gradients have mean cosine {c:.3f} over "
            f"the window (1: the same direction every step)")
    if m["batches"] == "mini-batch":
        return [f"mini-batches ({meta.steps_per_epoch} steps per epoch): each recorded gradient "
                f"is one batch's{turn}"]
    if m["batches"] == "unknown":
        return [f"batches: unknown (the metadata has no steps_per_epoch), so mini-batch noise is "
                f"neither claimed nor excluded{turn}"]
    return []
