"""Koopman side of the pipeline: the KMD of a trajectory and the scores it gives (THEORY.md §1-§3).

* ``kmd``: ``KMD`` (exact DMD by the method of snapshots or the thin SVD), the fixed point and its
  diagnostics;
* ``scores``: Koopman magnitude pruning (KMP), Koopman gradient pruning (KGP), horizon scores;
* ``report``: ``equivalence_report``, Koopman pruning side by side with classical pruning.
"""

from .kmd import (
    KMD,
    FixedPointInfo,
    FixedPointWarning,
    NotFittedError,
    default_tol,
    gram_matrix,
)
from .report import DEFAULT_SPARSITIES, EquivalenceReport, equivalence_report
from .scores import horizon_scores, kgp_scores, kmp_scores, koopman_gradient

__all__ = [
    # decomposition
    "KMD",
    "FixedPointInfo",
    "FixedPointWarning",
    "NotFittedError",
    "gram_matrix",
    "default_tol",
    # scores
    "kmp_scores",
    "kgp_scores",
    "horizon_scores",
    "koopman_gradient",
    # report
    "equivalence_report",
    "EquivalenceReport",
    "DEFAULT_SPARSITIES",
]
