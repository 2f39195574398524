"""Koopman side of the pipeline: the KMD of a trajectory and the scores it gives (docs/theory.md).

* ``kmd``: ``KMD`` (exact DMD by the method of snapshots or the thin SVD, §5; total-least-squares
  and optimized DMD from ``robust``, §5.4), the fixed point and
  its diagnostics (§7); it is built from ``snapshots`` (the chunked, parallel passes over the big
  snapshot array), ``dmd`` (the small dense DMD algebra), ``rank`` (how many singular values to
  keep, §6: the precision floor, an explicit rank or the Gavish-Donoho threshold),
  ``stationary`` (the stationary mode and ``FixedPointInfo``, §7) and ``inputs`` (argument
  checks);
* ``scores``: Koopman magnitude pruning (KMP), Koopman gradient pruning (KGP), horizon scores
  (§9-§11);
* ``uncertainty``: ``kmp_stability``, refits on contiguous sub-windows (λ* range, fixed-point
  spread, KMP mask stability, §7); ``paper``: KMP as the paper's released code computes it (§9);
* ``report``: ``equivalence_report``, Koopman pruning side by side with classical pruning.
"""

from .kmd import (
    KMD,
    MAX_GROWING_SHARE,
    OPTIMAL,
    ROBUST_SOLVERS,
    SOLVERS,
    STATIONARY_TOL,
    FixedPointInfo,
    FixedPointWarning,
    NotFittedError,
    RankWarning,
    default_tol,
    gram_matrix,
)
from .paper import paper_fixed_point, paper_kmp_mask, paper_kmp_scores
from .report import DEFAULT_SPARSITIES, EquivalenceReport, equivalence_report
from .scores import (
    horizon_scores,
    kgp_scores,
    kmp_scores,
    koopman_gradient,
    trend_scores,
    window_mean_scores,
)
from .uncertainty import STABLE_OVERLAP, StabilityReport, kmp_stability

__all__ = [
    # decomposition
    "KMD",
    "FixedPointInfo",
    "FixedPointWarning",
    "NotFittedError",
    "RankWarning",
    "OPTIMAL",
    "gram_matrix",
    "default_tol",
    "SOLVERS",
    "ROBUST_SOLVERS",
    "STATIONARY_TOL",
    "MAX_GROWING_SHARE",
    # scores
    "kmp_scores",
    "kgp_scores",
    "horizon_scores",
    "trend_scores",
    "window_mean_scores",
    "koopman_gradient",
    # uncertainty and the paper's variant
    "kmp_stability",
    "StabilityReport",
    "STABLE_OVERLAP",
    "paper_fixed_point",
    "paper_kmp_scores",
    "paper_kmp_mask",
    # report
    "equivalence_report",
    "EquivalenceReport",
    "DEFAULT_SPARSITIES",
]
