"""How much a KMP mask would change with the data: refits on contiguous sub-windows (§7, §9).

``kmp_stability(trajectory)`` refits the KMD on ``K`` contiguous sub-windows of the trajectory and
reports, next to the fit on the whole window (docs/theory.md §7):

* the range of the stationary eigenvalue λ* over the refits (real and imaginary parts);
* the spread of the fixed point ξ* over the refits, one number relative to ``‖ξ*‖``;
* the **mask stability**: the overlap (docs/theory.md §13) of each refit's KMP mask with the
  whole window's, at the requested sparsity, and a ``stable`` verdict (mean overlap ≥ threshold);
  ``trusted`` is ``stable`` and today's ``FixedPointInfo.reliable`` together.

**Why contiguous sub-windows.** The snapshots of a training window are a time series: the
successor pairs ``(θ_j, θ_{j+1})`` are what exact DMD fits (docs/theory.md §5.1), and noise
accumulates along the window. Resampling single snapshots (a plain bootstrap) would pair rows that
are not successors; leaving a block out would join two pieces across a gap. A contiguous
sub-window keeps every successor pair and the window's own noise structure, and a KMD fitted on it
is the KMD a user would have got had they recorded a shorter window there (subsampling, Politis &
Romano, 1994). The estimate of a linear system's eigenvalues does not depend on where the window
starts, and the stationary mode of a real λ* ≈ 1 only changes by ``λ*^s``, a positive factor that
leaves its magnitude mask unchanged, so on a noiseless converging window every refit gives the same
λ* and the same mask. With ``K`` of about 5 the intervals are the min–max ranges of the refits,
not confidence intervals with a stated coverage; read them as "how far the answer moves".

Cost: ``K + 1`` KMD fits (each one Gram pass over its sub-window, ``O(n L²)`` for ``L`` snapshots,
or a thin SVD for small problems, and one more pass for the fixed point), plus ``K + 1`` float64
host vectors of length ``n`` for the fixed points.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..pruning.masks import global_mask
from ..pruning.metrics import overlap
from .kmd import KMD, FixedPointWarning

__all__ = ["StabilityReport", "kmp_stability", "subwindow_starts", "STABLE_OVERLAP",
           "DEFAULT_RESAMPLES", "DEFAULT_FRACTION"]

#: ``StabilityReport.stable`` holds when the mean mask overlap is at least this
#: (``benchmarks/kmd_reliability.py``: the evidence for the number, docs/theory.md §7).
STABLE_OVERLAP = 0.95
#: Sub-windows per stability estimate, and the share of the window's snapshots each one holds.
DEFAULT_RESAMPLES = 5
DEFAULT_FRACTION = 0.5
#: The fewest snapshots a sub-window may hold (the KMD needs 3; one more leaves a pair to test).
MIN_SUBWINDOW = 4


@dataclass(frozen=True)
class StabilityReport:
    """Refits of the KMD on contiguous sub-windows and what they say about KMP (§7, §9).

    ``eigenvalue`` / ``eigenvalues``: λ* of the whole window and of each refit (``starts[i]`` is
    refit i's first snapshot, each refit holds ``subwindow`` snapshots); ``eigenvalue_real`` and
    ``eigenvalue_imag``: the (min, max) of the real and imaginary parts over the refits and the
    whole window; ``fixed_point_spread``: ``‖std_i ξ*_i‖ / ‖ξ*‖`` (per-coordinate standard
    deviation over the refits, as a relative norm); ``fixed_point_deviation``: ``max_i ‖ξ*_i −
    ξ*‖ / ‖ξ*‖``; ``mask_overlaps``: overlap of each refit's KMP mask with the whole window's at
    ``sparsity``; ``reliable`` / ``refits_reliable``: today's ``FixedPointInfo.reliable`` of the
    whole window and of each refit; ``threshold``: the mean overlap that ``stable`` asks for.
    """

    sparsity: float
    subwindow: int
    starts: tuple[int, ...]
    eigenvalue: complex
    eigenvalues: tuple[complex, ...]
    eigenvalue_real: tuple[float, float]
    eigenvalue_imag: tuple[float, float]
    fixed_point_spread: float
    fixed_point_deviation: float
    mask_overlaps: tuple[float, ...]
    reliable: bool
    refits_reliable: tuple[bool, ...]
    threshold: float = STABLE_OVERLAP

    @property
    def n_resamples(self) -> int:
        """``K``, the number of refits."""
        return len(self.starts)

    @property
    def mask_stability(self) -> float:
        """Mean overlap of the refits' KMP masks with the whole window's (1.0: all the same)."""
        return float(np.mean(self.mask_overlaps))

    @property
    def min_overlap(self) -> float:
        """The lowest overlap of a refit's KMP mask with the whole window's."""
        return float(min(self.mask_overlaps))

    @property
    def eigenvalue_width(self) -> float:
        """Width of the eigenvalue box: ``max`` of the real and imaginary ranges."""
        return max(self.eigenvalue_real[1] - self.eigenvalue_real[0],
                   self.eigenvalue_imag[1] - self.eigenvalue_imag[0])

    def eigenvalue_contains(self, value: complex, slack: float = 0.0) -> bool:
        """Whether ``value`` lies in the eigenvalue box, widened by ``slack`` on every side."""
        value = complex(value)
        (re_lo, re_hi), (im_lo, im_hi) = self.eigenvalue_real, self.eigenvalue_imag
        return (re_lo - slack <= value.real <= re_hi + slack
                and im_lo - slack <= value.imag <= im_hi + slack)

    @property
    def stable(self) -> bool:
        """The recalibrated verdict: ``mask_stability >= threshold`` (docs/theory.md §7)."""
        return self.mask_stability >= self.threshold

    @property
    def trusted(self) -> bool:
        """The proposed verdict for a KMP mask: ``reliable and stable`` (docs/theory.md §7).

        ``reliable`` (today's ``FixedPointInfo`` checks of λ*) and ``stable`` (the sub-window
        masks agree) fail on different windows. On ``benchmarks/kmd_reliability.py`` no early
        window that passed both had a KMP mask farther from the converged mask than GMP's, and
        the late windows that passed both kept an overlap of 0.92 or more with their own GMP mask
        (0.90 and 0.78 for ``reliable`` alone, full rank and rank="optimal").
        """
        return self.reliable and self.stable

    def describe(self) -> str:
        """One sentence with the numbers."""
        verdict = "stable" if self.stable else "unstable"
        return (f"KMP mask at {self.sparsity:.0%} over {self.n_resamples} sub-windows of "
                f"{self.subwindow} snapshots: overlap with the whole window's mask mean "
                f"{self.mask_stability:.3f}, min {self.min_overlap:.3f} ({verdict}, threshold "
                f"{self.threshold:.3g}); Re λ* in [{self.eigenvalue_real[0]:.6g}, "
                f"{self.eigenvalue_real[1]:.6g}], Im λ* in [{self.eigenvalue_imag[0]:.3g}, "
                f"{self.eigenvalue_imag[1]:.3g}]; fixed-point spread {self.fixed_point_spread:.3g}"
                f" of ‖ξ*‖")


def _fraction(name: str, value: Any, low_open: bool = True, high_closed: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = (0.0 < value if low_open else 0.0 <= value) and (
            value <= 1.0 if high_closed else value < 1.0)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{']' if high_closed else ')'}"
        raise ValueError(f"{name}={value!r} must be a number in {interval}")
    return value


def subwindow_starts(n_snapshots: int, n_resamples: int = DEFAULT_RESAMPLES,
                     fraction: float = DEFAULT_FRACTION,
                     seed: int | None = None) -> tuple[int, tuple[int, ...]]:
    """``(L, starts)``: the sub-window length and first snapshots ``kmp_stability`` uses.

    ``L = max(4, ceil(fraction · (m+1)))``; ``starts`` are ``n_resamples`` distinct offsets in
    ``0..m+1−L``, evenly spaced (``seed=None``, deterministic; the first and the last sub-window
    are always included) or drawn at random without replacement (an int ``seed``). ValueError,
    naming the fix, when the window is too short for that many distinct sub-windows.
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or \
            n_resamples < 2:
        raise ValueError(f"n_resamples={n_resamples!r} must be an int >= 2 (sub-windows to refit "
                         f"the KMD on)")
    fraction = _fraction("fraction", fraction)
    length = max(MIN_SUBWINDOW, math.ceil(fraction * n_snapshots))
    n_starts = n_snapshots - length + 1
    if n_starts < n_resamples:
        need = next(n for n in range(n_snapshots + 1, 10**7)
                    if n - max(MIN_SUBWINDOW, math.ceil(fraction * n)) + 1 >= n_resamples)
        raise ValueError(
            f"the trajectory has {n_snapshots} snapshots, too few for n_resamples={n_resamples} "
            f"distinct sub-windows of {length} snapshots (fraction={fraction}); record a longer "
            f"window (at least {need} snapshots), lower n_resamples, or lower fraction")
    if seed is None:
        starts = np.unique(np.round(np.linspace(0, n_starts - 1, n_resamples)).astype(int))
    else:
        rng = np.random.default_rng(seed)
        starts = np.sort(rng.choice(n_starts, size=n_resamples, replace=False))
    return length, tuple(int(s) for s in starts)


def _fit(rows: Any, kmd_kwargs: dict, layout: Any, sparsity: float):
    """One KMD fit: ``(λ*, reliable, ξ* on the host, KMP mask)``; unreliable fits do not warn."""
    kmd = KMD(**kmd_kwargs).fit(rows)
    info = kmd.fixed_point_info_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FixedPointWarning)  # reported, not raised
        fixed = kmd.fixed_point()
    host = np.asarray(to_numpy(fixed), dtype=np.float64)
    mask = global_mask(np.abs(host), sparsity, layout=layout)
    return complex(info.eigenvalue), bool(info.reliable), host, mask


def kmp_stability(trajectory: Any, sparsity: float = 0.9, n_resamples: int = DEFAULT_RESAMPLES,
                  *, fraction: float = DEFAULT_FRACTION, kmd_kwargs: dict | None = None,
                  seed: int | None = None, threshold: float = STABLE_OVERLAP) -> StabilityReport:
    """Refit the KMD on ``n_resamples`` contiguous sub-windows; see the module docstring (§7).

    ``trajectory``: a Trajectory (its layout decides the prunable entries) or an ``(m+1, n)``
    array. ``sparsity``: of the KMP masks compared, in (0, 1). ``fraction``: share of the
    snapshots in each sub-window (at least 4 snapshots). ``kmd_kwargs``: passed to every ``KMD``
    (e.g. ``{"rank": "optimal"}``; an int rank above ``L − 1`` warns on the refits,
    ``RankWarning``). ``seed``: None for evenly spaced sub-windows, an int for
    random ones. ``threshold``: the mean overlap that ``stable`` asks for. Costs ``n_resamples +
    1`` KMD fits. Returns a ``StabilityReport``.
    """
    sparsity = _fraction("sparsity", sparsity)
    threshold = _fraction("threshold", threshold, high_closed=True)
    kmd_kwargs = dict(kmd_kwargs or {})
    rows = getattr(trajectory, "snapshots", trajectory)
    if not hasattr(rows, "shape") or len(rows.shape) != 2:
        raise ValueError(f"trajectory must be a Trajectory or an (m+1, n) array of snapshots, got "
                         f"{getattr(rows, 'shape', type(rows).__name__)}")
    length, starts = subwindow_starts(int(rows.shape[0]), n_resamples, fraction, seed)
    layout = getattr(trajectory, "layout", None)
    eigenvalue, reliable, fixed, mask = _fit(rows, kmd_kwargs, layout, sparsity)
    refits = [_fit(rows[s:s + length, :], kmd_kwargs, layout, sparsity) for s in starts]
    lams = [r[0] for r in refits]
    points = np.stack([r[2] for r in refits])
    norm = float(np.linalg.norm(fixed)) or 1.0
    all_lams = np.array([eigenvalue, *lams])
    return StabilityReport(
        sparsity=sparsity, subwindow=length, starts=starts, eigenvalue=eigenvalue,
        eigenvalues=tuple(lams),
        eigenvalue_real=(float(all_lams.real.min()), float(all_lams.real.max())),
        eigenvalue_imag=(float(all_lams.imag.min()), float(all_lams.imag.max())),
        fixed_point_spread=float(np.linalg.norm(points.std(axis=0))) / norm,
        fixed_point_deviation=float(np.max(np.linalg.norm(points - fixed, axis=1))) / norm,
        mask_overlaps=tuple(overlap(r[3], mask, layout) for r in refits),
        reliable=reliable, refits_reliable=tuple(r[1] for r in refits), threshold=threshold)
