"""Koopman pruning versus classical pruning, shown step by step (docs/theory.md §9-§11).

``equivalence_report(trajectory)`` fits the KMD, prints the spectrum, the stationary eigenvalue
and its distance from 1, the overlap of KMP's mask with global magnitude pruning (GMP) of the last
snapshot at several sparsities, the overlap of KGP's mask with the observed update and, when
gradients were recorded, with gradient pruning. Every reason it gives for a gap is a check it ran
on this trajectory (``report_checks``), printed with the number that supports it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import namespace_of
from ..metadata import TrainingMetadata
from ..pruning.gradient import gradient_scores_from
from ..pruning.masks import global_mask
from ..pruning.metrics import jaccard, overlap
from ..pruning.scores import magnitude_scores
from ..trajectory import Trajectory
from .kmd import KMD
from .report_checks import (
    batch_kind,
    claim_b_check,
    gradient_cosine,
    headline_sparsity,
    heavy_ball_blocker,
    momentum_identity,
)
from .report_reasons import reasons as _reasons
from .scores import kgp_scores, kmp_scores, koopman_gradient
from .uncertainty import kmp_stability, subwindow_starts

__all__ = ["equivalence_report", "EquivalenceReport", "DEFAULT_SPARSITIES"]

DEFAULT_SPARSITIES = (0.5, 0.75, 0.9, 0.95, 0.97)
NOISY_RECONSTRUCTION = 0.05  # relative error above which step 1 suggests truncating the rank


@dataclass
class EquivalenceReport:
    """What ``equivalence_report`` measured; ``str(report)`` is the printed text.

    Overlaps are dicts ``{sparsity: overlap}``; ``None`` where the check did not apply.
    ``kgp_update_error``: ``‖d̂_j − d_j‖/‖d_j‖`` of the KMD's update at the scored snapshot;
    ``update_vs_gradient``: the observed update's mask against the recorded gradient's;
    ``momentum_identity``: ``{"cosine", "implied_lr", "lr", "kmd_error"}`` of the heavy-ball rule
    on the snapshots (``kmd_error``: the KMD's ``d̂_j − μ d̂_{j−1}`` against the snapshots'), and
    the overlaps with the gradient once momentum is undone, ``momentum_free_vs_gradient`` (on the
    snapshots) and ``kgp_momentum_free_vs_gradient`` (on the KMD's updates); ``claim_b``:
    ``report_checks.claim_b_check``'s counts by sparsity; ``batches``: ``"mini-batch"``,
    ``"full-batch"`` or ``"unknown"``; ``gradient_cosine``: mean cosine of consecutive recorded
    gradients; ``headline_sparsity``: the sparsity the reasons quote; ``mask_stability``: the
    mean overlap of the KMP masks of sub-window refits with the window's at the headline
    sparsity, and ``trusted`` (reliable and stable, ``koopman.kmp_stability``, §7), both None
    when the window is too short for five sub-windows.
    """

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
    reconstruction_error: float = float("nan")
    kgp_update_error: float = float("nan")
    headline_sparsity: float = 0.9
    claim_b: dict[float, dict[str, float]] = field(default_factory=dict)
    update_vs_gradient: dict[float, float] | None = None
    momentum_identity: dict[str, float] | None = None
    momentum_free_vs_gradient: dict[float, float] | None = None
    kgp_momentum_free_vs_gradient: dict[float, float] | None = None
    batches: str = "unknown"
    gradient_cosine: float | None = None
    mask_stability: float | None = None
    trusted: bool | None = None

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (eigenvalues as [real, imag] pairs, sparsities as string keys)."""
        def keyed(d: dict | None) -> dict | None:
            return None if d is None else {str(k): v for k, v in d.items()}

        return {
            "n_snapshots": self.n_snapshots, "n_params": self.n_params, "rank": self.rank,
            "solver": self.solver, "reconstruction_error": self.reconstruction_error,
            "eigenvalues": [[float(z.real), float(z.imag)] for z in self.eigenvalues],
            "stationary_eigenvalue": [float(self.stationary_eigenvalue.real),
                                      float(self.stationary_eigenvalue.imag)],
            "distance_from_one": self.distance_from_one,
            "growing_amplitude_share": self.growing_amplitude_share,
            "fixed_point_shift": self.fixed_point_shift,
            "kmp_vs_magnitude": keyed(self.kmp_vs_magnitude),
            "kmp_vs_magnitude_jaccard": keyed(self.kmp_vs_magnitude_jaccard),
            "claim_b": keyed(self.claim_b),
            "kgp_vs_update": keyed(self.kgp_vs_update), "kgp_update_error": self.kgp_update_error,
            "kgp_vs_gradient": keyed(self.kgp_vs_gradient),
            "update_vs_gradient": keyed(self.update_vs_gradient),
            "momentum_identity": self.momentum_identity,
            "momentum_free_vs_gradient": keyed(self.momentum_free_vs_gradient),
            "kgp_momentum_free_vs_gradient": keyed(self.kgp_momentum_free_vs_gradient),
            "batches": self.batches, "gradient_cosine": self.gradient_cosine,
            "headline_sparsity": self.headline_sparsity,
            "mask_stability": self.mask_stability, "trusted": self.trusted,
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
    if not sparsities:
        raise ValueError("sparsities must hold at least one sparsity in [0, 1)")
    for p in sparsities:
        if not 0 <= p < 1:
            raise ValueError(f"sparsities must lie in [0, 1), got {p}")
    kmd = KMD().fit(trajectory) if kmd is None else kmd
    layout = trajectory.layout
    lines: list[str] = []
    say = lines.append
    m: dict[str, Any] = {"headline_sparsity": headline_sparsity(sparsities),
                         "reconstruction_error": float(kmd.reconstruction_error_)}

    # Step 1: the spectrum.
    lam = np.asarray(kmd.eigenvalues_)
    mod = np.abs(lam)
    if kmd.reconstruction_error_ > NOISY_RECONSTRUCTION:
        say(f"        note: the KMD reconstructs this window with a "
            f"{kmd.reconstruction_error_:.0%} error; when the window fluctuates from step to step "
            f"a truncated rank (KMD(rank='optimal') or an int) or a stride every > 1 gives a "
            f"cleaner spectrum")
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
    m["fixed_point_shift"] = _relative_distance(fixed, last)
    say(f"        the predicted fixed point differs from the last snapshot by "
        f"{m['fixed_point_shift']:.2e} (relative L2 norm of delta = fixed point - last snapshot)")
    _stability(trajectory, kmd, m, say)

    # Step 3: KMP versus global magnitude pruning of the last snapshot, and Claim B per weight.
    gmp = magnitude_scores(last)
    kmp_masks, gmp_masks = _masks(kmp, sparsities, layout), _masks(gmp, sparsities, layout)
    m["kmp_vs_magnitude"], m["kmp_vs_magnitude_jaccard"] = _compare(kmp_masks, gmp_masks, layout)
    xp = namespace_of(fixed)
    delta = xp.astype(fixed, xp.float64) - xp.astype(last, xp.float64)
    m["claim_b"] = claim_b_check(kmp, kmp_masks, gmp, gmp_masks, delta, layout)
    say("Step 3. KMP mask vs global magnitude mask of the last snapshot (overlap of kept sets); "
        "weights that change sides, and how many lie within |delta_i| of the threshold")
    for p in sparsities:
        b = m["claim_b"][p]
        say(f"        sparsity {p:5.2f}: overlap {m['kmp_vs_magnitude'][p]:.4f}   jaccard "
            f"{m['kmp_vs_magnitude_jaccard'][p]:.4f}   changed sides {b['changed_sides']} "
            f"(within |delta_i| of tau: {b['within_own_band']})")

    _step4(trajectory, kmd, sparsities, layout, m, say)

    # Step 5: reasons for any gap, each from a check above.
    reasons = _reasons(m, info, trajectory.metadata)
    say("Step 5. " + ("no gap: the masks agree at every sparsity" if not reasons else
                      "where the masks differ, and what was measured (docs/theory.md §9, §11):"))
    for r in reasons:
        say(f"        - {r}")
    text = "\n".join(lines)
    if printer is not None:
        printer(text)
    return EquivalenceReport(
        n_snapshots=trajectory.n_snapshots, n_params=trajectory.n_params, rank=int(kmd.rank_),
        solver=str(kmd.solver_), eigenvalues=lam, stationary_eigenvalue=lam_star,
        distance_from_one=float(info.distance_from_one),
        growing_amplitude_share=float(info.growing_amplitude_share), reasons=reasons, text=text,
        **m)


def _stability(trajectory: Trajectory, kmd: KMD, m: dict[str, Any],
               say: Callable[[str], None]) -> None:
    """The KMP mask's stability over sub-window refits and the ``trusted`` verdict (§7)."""
    m["mask_stability"] = m["trusted"] = None
    try:
        subwindow_starts(trajectory.n_snapshots)
    except ValueError:
        say(f"        mask stability not measured: {trajectory.n_snapshots} snapshots are too "
            f"few for five sub-windows (koopman.kmp_stability)")
        return
    kwargs = {"rank": kmd.rank, "tol": kmd.tol, "solver": kmd.solver, "affine": kmd.affine}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the refits' warnings repeat the window's, shown above
        st = kmp_stability(trajectory, m["headline_sparsity"], kmd_kwargs=kwargs)
    m["mask_stability"], m["trusted"] = float(st.mask_stability), bool(st.trusted)
    say(f"        KMP mask at sparsity {m['headline_sparsity']:.2f} refitted on "
        f"{len(st.starts)} sub-windows of {st.subwindow} snapshots: mean overlap with this "
        f"window's {st.mask_stability:.3f} (stable at >= {st.threshold:.2f}); fixed point "
        f"{'reliable' if st.reliable else 'unreliable'}, so "
        f"{'trusted' if st.trusted else 'not trusted'} (benchmarks/kmd_reliability.py)")


def _step4(trajectory: Trajectory, kmd: KMD, sparsities: tuple[float, ...], layout: Any,
           m: dict[str, Any], say: Callable[[str], None]) -> None:
    """KGP against the observed update, the recorded gradient, and momentum undone (§11).

    KGP at snapshot j scores |θ̂_j ⊙ (θ̂_{j+1} − θ̂_j)|; the recorder stores ∇L(θ_j) with the next
    snapshot (``gradients[j + 1]`` produced snapshot j + 1).
    """
    meta = trajectory.metadata
    j = trajectory.n_snapshots - 2
    kgp = _masks(kgp_scores(kmd, at=j), sparsities, layout)
    theta_j = trajectory.snapshots[j, :]
    update = _masks(gradient_scores_from(theta_j, trajectory.snapshots[j + 1, :] - theta_j),
                    sparsities, layout)
    m["kgp_vs_update"], _ = _compare(kgp, update, layout)
    observed = trajectory.snapshots[j + 1, :] - theta_j
    moved = float(namespace_of(observed).max(namespace_of(observed).abs(observed))) > 0
    m["kgp_update_error"] = (_relative_distance(kmd.predict_update(float(j)), observed)
                             if moved else float("nan"))
    m["batches"] = batch_kind(meta)
    m["gradient_cosine"] = gradient_cosine(trajectory)
    say(f"Step 4. KGP mask at snapshot {j} vs the mask of the observed update "
        f"|theta_j * (theta_(j+1) - theta_j)| (what KGP reconstructs)")
    for p in sparsities:
        say(f"        sparsity {p:5.2f}: overlap {m['kgp_vs_update'][p]:.4f}")
    say("        the observed update is zero" if not moved else
        f"        the KMD's update theta^_(j+1) - theta^_j differs from the observed one by "
        f"{m['kgp_update_error']:.2e} (relative L2)")
    for key in ("kgp_vs_gradient", "kgp_vs_gradient_jaccard", "update_vs_gradient",
                "momentum_identity", "momentum_free_vs_gradient",
                "kgp_momentum_free_vs_gradient"):
        m[key] = None  # filled below when the check applies
    if trajectory.gradients is None:
        say("        no gradients recorded (TrajectoryRecorder(record_gradients=True)): "
            "KGP vs gradient pruning skipped")
        return
    gradient = _masks(gradient_scores_from(theta_j, trajectory.gradients[j + 1, :]),
                      sparsities, layout)
    m["kgp_vs_gradient"], m["kgp_vs_gradient_jaccard"] = _compare(kgp, gradient, layout)
    m["update_vs_gradient"], _ = _compare(update, gradient, layout)
    say("        ... vs gradient pruning |theta_j * g_j| with the recorded gradient g_j, and the "
        "observed update's mask vs that gradient's")
    for p in sparsities:
        say(f"        sparsity {p:5.2f}: KGP overlap {m['kgp_vs_gradient'][p]:.4f}   jaccard "
            f"{m['kgp_vs_gradient_jaccard'][p]:.4f}   update vs gradient "
            f"{m['update_vs_gradient'][p]:.4f}")
    if meta.optimizer != "sgd" or meta.momentum <= 0:
        return
    blocker = heavy_ball_blocker(meta, j)
    if blocker is not None:
        say(f"        heavy-ball identity not checked: {blocker}")
        return
    identity = momentum_identity(trajectory, j)
    free = _masks(gradient_scores_from(theta_j, identity["update"]), sparsities, layout)
    m["momentum_free_vs_gradient"], _ = _compare(free, gradient, layout)
    mu = meta.momentum
    kmd_free = koopman_gradient(kmd, j) - mu * koopman_gradient(kmd, j - 1)
    m["momentum_identity"] = {"cosine": identity["cosine"], "implied_lr": identity["implied_lr"],
                              "lr": meta.lr,
                              "kmd_error": _relative_distance(kmd_free, identity["update"])}
    kgp_free = _masks(gradient_scores_from(kmd.predict(float(j)), kmd_free), sparsities, layout)
    m["kgp_momentum_free_vs_gradient"], _ = _compare(kgp_free, gradient, layout)
    say(f"        heavy-ball identity g_j = -(d_j - mu d_(j-1))/lr, d_j = theta_(j+1) - theta_j, "
        f"mu = {mu:g}: cosine with the recorded gradient {identity['cosine']:.5f}, implied lr "
        f"{identity['implied_lr']:.4g} (recorded {_lr(meta)}); the KMD's estimate of "
        f"-(d_j - mu d_(j-1)) is off by {m['momentum_identity']['kmd_error']:.2e} (relative L2)")
    for p in sparsities:
        say(f"        sparsity {p:5.2f}: momentum undone on the snapshots: overlap with the "
            f"gradient {m['momentum_free_vs_gradient'][p]:.4f}   on the KMD's updates: "
            f"{m['kgp_momentum_free_vs_gradient'][p]:.4f}")


def _lr(meta: TrainingMetadata) -> str:
    return "unknown" if meta.lr is None else f"{meta.lr:g}"


def _masks(scores: Any, sparsities: Sequence[float], layout: Any) -> dict[float, Any]:
    return {p: global_mask(scores, p, layout=layout) for p in sparsities}


def _compare(masks_a: dict[float, Any], masks_b: dict[float, Any],
             layout: Any) -> tuple[dict[float, float], dict[float, float]]:
    """Overlap and Jaccard of two methods' masks at each sparsity."""
    overlaps = {p: overlap(a, masks_b[p], layout) for p, a in masks_a.items()}
    jaccards = {p: jaccard(a, masks_b[p], layout) for p, a in masks_a.items()}
    return overlaps, jaccards
