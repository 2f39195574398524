"""KMP as the paper's released code computes it, next to the library's default (docs/theory.md §9).

Redman et al. (ICLR 2022) released their KMP as part of a ShrinkBench fork
(github.com/william-redman/Koopman_pruning: ``koopman_tools.ExactDMD`` and ShrinkBench's
``fraction_threshold`` / ``threshold_mask``). Implemented here from that description, not copied:

1. a thin SVD ``Xᵀ = U Σ V*`` of the snapshot matrix **in the snapshots' own dtype** (float32 data:
   a float32 SVD; the library accumulates a float64 Gram matrix or SVDs a float64 copy, §6);
2. **no truncation** (every singular value is kept, the library drops those under its precision
   floor ``tol``, §6);
3. ``Ã = U* Yᵀ V Σ⁻¹``, its eigenpairs, ``k* = argmin |λ_k − 1|``, and the exact-DMD eigenvector
   ``φ = Yᵀ V Σ⁻¹ w_{k*} / λ_{k*}`` (§5.1) **without the amplitude** ``b_{k*}``;
4. its **real part** (the released code casts the complex vector to float32, which drops the
   imaginary part), scores ``|Re φ|``;
5. a mask by a **quantile threshold**: ``τ = quantile(scores, sparsity)`` (linear interpolation),
   entries with ``score < τ`` pruned, the rest kept (``paper_kmp_mask``).

Where the library's default (``kmp_scores`` + ``global_mask``) differs, and why:

* **Real λ*** (every converged float64 window the audit looked at): ``φ`` is a real multiple of
  ``ψ_{k*}``, and ``ξ_{k*} = b_{k*} ψ_{k*}`` is another; a nonzero scale never changes a
  magnitude mask, so the two agree up to the rounding of float32 vs float64 and up to the
  directions the library truncates.
* **Complex λ*** (a slow rotation, §7): the eigenvector's phase is arbitrary (LAPACK makes its
  largest entry real), so ``Re φ`` is the rotation seen at an arbitrary angle. The library returns
  the pair's real sum ``2 Re ξ_{k*}``, the slow part of the trajectory at the first snapshot, whose
  phase the amplitude fixes; it does not depend on the eigensolver. The masks then differ.
* **Ties and the count.** ``global_mask`` removes exactly ``k = round(p·n)`` entries, ties broken
  by index (§8). The quantile rule removes the entries strictly below ``τ``: ``⌈p(n−1)⌉`` of them
  when the scores are distinct (``round(p·n)`` or one fewer), and fewer when ties sit at ``τ``
  (all scores equal: nothing is pruned).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_numpy

__all__ = ["paper_fixed_point", "paper_kmp_scores", "paper_kmp_mask"]


def _snapshot_rows(snapshots_or_trajectory: Any) -> np.ndarray:
    rows = getattr(snapshots_or_trajectory, "snapshots", snapshots_or_trajectory)
    rows = np.asarray(to_numpy(rows))
    if rows.ndim != 2 or rows.shape[0] < 3:
        raise ValueError(f"snapshots must be (m+1, n) with at least 3 rows (one snapshot per "
                         f"row), got shape {rows.shape}")
    if not np.issubdtype(rows.dtype, np.floating):
        rows = rows.astype(np.float64)
    if not np.all(np.isfinite(rows)):
        raise ValueError("snapshots contain NaN or Inf; the paper's KMP needs finite snapshots")
    return rows


def paper_fixed_point(snapshots_or_trajectory: Any) -> np.ndarray:
    """The complex eigenvector ``φ`` of λ* as the released code computes it (steps 1-3 above).

    ``snapshots_or_trajectory``: a Trajectory or an ``(m+1, n)`` array (rows are snapshots; the
    released code stores them as columns). Computed in the snapshots' dtype (complex64 for float32
    data). ValueError when a singular value is zero: the released code does not truncate, so it
    cannot divide by it (``kmp_scores`` truncates and works).
    """
    rows = _snapshot_rows(snapshots_or_trajectory)
    x, y = rows[:-1].T, rows[1:].T  # columns are snapshots, as in the released code
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    if not np.all(s > 0):
        raise ValueError("a singular value of the snapshots is zero: the paper's KMP keeps every "
                         "one and cannot invert it; use koopman.kmp_scores (it truncates)")
    y_v_sinv = (y @ vh.conj().T) / s
    a_tilde = u.conj().T @ y_v_sinv
    lam, w = np.linalg.eig(a_tilde)
    k = int(np.argmin(np.abs(lam - 1.0)))
    return (y_v_sinv @ w[:, k]) / lam[k]


def paper_kmp_scores(snapshots_or_trajectory: Any) -> np.ndarray:
    """KMP scores of the released code, ``|Re φ|`` in the snapshots' dtype (docs/theory.md §9).

    Agrees with ``kmp_scores`` up to a positive scale when λ* is real; see the module docstring
    for when and why it differs.
    """
    return np.abs(np.real(paper_fixed_point(snapshots_or_trajectory)))


def paper_kmp_mask(scores: Any, sparsity: float, layout: Any = None) -> np.ndarray:
    """Keep ``scores >= quantile(scores, sparsity)``, the released code's threshold rule (§9).

    ``layout``: None takes the quantile over every entry (as the released code does: weights and
    biases together); a ``ParamLayout`` takes it over the prunable entries only and keeps the
    others. Unlike ``global_mask`` the count is not exact: ties at the threshold are all kept.
    Returns a boolean host vector, ``True`` = kept.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating)) or \
            not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity={sparsity!r} must be a number in [0, 1)")
    values = np.asarray(to_numpy(scores), dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D vector, got shape {values.shape}")
    prunable = (np.ones(values.size, dtype=bool) if layout is None
                else np.asarray(to_numpy(layout.prunable_mask()), dtype=bool))
    if prunable.shape != values.shape:
        raise ValueError(f"layout describes {prunable.size} entries, scores has {values.size}")
    threshold = np.quantile(values[prunable], float(sparsity))
    return ~prunable | (values >= threshold)
