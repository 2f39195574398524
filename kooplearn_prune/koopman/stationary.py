"""The stationary mode of a KMD and how far to trust it as a fixed point (docs/theory.md §7).

``stationary_mode(λ, b, m)`` picks ``k* = argmin_k |λ_k − 1|`` and measures what can make the
prediction untrustworthy; ``FixedPointInfo`` holds those numbers and judges them against two
thresholds, ``STATIONARY_TOL`` and ``MAX_GROWING_SHARE``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "STATIONARY_TOL",
    "MAX_GROWING_SHARE",
    "FixedPointInfo",
    "FixedPointWarning",
    "stationary_mode",
]

#: docs/theory.md §7: the fixed point is reliable only when ``|λ_{k*} − 1| <= STATIONARY_TOL`` ...
STATIONARY_TOL = 1e-3
#: ... and growing modes carry at most this share of the amplitude at the last snapshot. These two
#: numbers are the defaults of ``FixedPointInfo``, ``KMD.fit`` and ``KMD.fixed_point``, and the
#: equivalence report calls the stationary mode uncertain exactly when ``reliable`` is False.
MAX_GROWING_SHARE = 1e-2


class FixedPointWarning(UserWarning):
    """The predicted fixed point is unreliable (no eigenvalue near 1, growing modes, a complex
    stationary eigenvalue, or two eigenvalues competing for it)."""


@dataclass(frozen=True)
class FixedPointInfo:
    """How trustworthy the stationary mode ξ_{k*} is as a prediction of where training goes.

    docs/theory.md §7: ``k* = argmin_k |λ_k − 1|``. The prediction is reliable when all four hold:

    * ``|λ_{k*} − 1| <= tol`` (a mode is stationary over the window);
    * the modes with ``|λ| > 1`` (other than k* and its conjugate) carry at most
      ``max_growing_share`` of the amplitude at the last snapshot,
      ``Σ_growing |b_k| |λ_k|^m / Σ_k |b_k| |λ_k|^m``;
    * ``λ_{k*}`` is real (``stationary_is_complex`` False): a conjugate pair near 1 is a slow
      rotation the window cannot resolve, not a fixed point;
    * no other eigenvalue competes for k* (``competing`` False): the runner-up, the eigenvalue
      nearest 1 after k* and its conjugate, is more than ``tol`` farther from 1 than λ_{k*}.
      Eigenvalues that close are ill-conditioned apart, and the choice of one of them is not
      determined by the data.

    In every case ``KMD.fixed_point`` returns the real part of the stationary mode's contribution
    at the first snapshot: ξ_{k*} for a real λ_{k*}, the pair's real sum ``2 Re ξ_{k*}`` for a
    complex one (the slow rotation frozen at the window's start); unreliable records make it warn.
    """

    index: int
    eigenvalue: complex
    distance_from_one: float
    growing_amplitude_share: float
    n_growing: int
    tol: float = STATIONARY_TOL
    max_growing_share: float = MAX_GROWING_SHARE
    runner_up_index: int | None = None
    runner_up_distance: float = math.inf

    @property
    def stationary_is_complex(self) -> bool:
        """λ_{k*} is one of a complex conjugate pair (its imaginary part is not 0)."""
        return complex(self.eigenvalue).imag != 0.0

    @property
    def competing(self) -> bool:
        """Another eigenvalue is within ``tol`` of λ_{k*}'s distance from 1."""
        return self.runner_up_distance - self.distance_from_one <= self.tol

    @property
    def reliable(self) -> bool:
        """All four checks of docs/theory.md §7 pass under this record's thresholds."""
        return (self.distance_from_one <= self.tol
                and self.growing_amplitude_share <= self.max_growing_share
                and not self.stationary_is_complex and not self.competing)

    def describe(self) -> str:
        """One sentence with the numbers."""
        lam = self.eigenvalue
        text = (f"stationary eigenvalue λ_{self.index} = {lam.real:.6g}{lam.imag:+.3g}i, "
                f"|λ − 1| = {self.distance_from_one:.3g} (tol {self.tol:.3g}); {self.n_growing} "
                f"growing mode(s) with |λ| > 1 carry {self.growing_amplitude_share:.3g} of the "
                f"amplitude at the last snapshot (max {self.max_growing_share:.3g})")
        if self.stationary_is_complex:
            text += ("; λ* is a complex pair (a slow rotation, not a fixed point: the fixed point "
                     "is the pair's real sum 2 Re ξ*)")
        if self.competing:
            text += (f"; λ_{self.runner_up_index} is {self.runner_up_distance:.3g} from 1, within "
                     f"tol of λ*: two eigenvalues compete for the stationary mode")
        if not self.reliable:
            text += (": the predicted fixed point is unreliable; record a longer or later window, "
                     "check that training converges, or truncate the rank (KMD(rank='optimal'))")
        return text


def stationary_mode(lam: np.ndarray, b: np.ndarray, m: int) -> FixedPointInfo:
    """k*, the runner-up and the growing-amplitude share (docs/theory.md §7), default thresholds.

    ``lam``, ``b``: eigenvalues and amplitudes with each complex pair stored side by side,
    ``Im λ > 0`` first (as ``KMD`` stores them); ``m``: the index of the last snapshot.
    """
    distance = np.abs(lam - 1.0)
    k = int(np.argmin(distance))
    if lam[k].imag < 0:  # the partner stored just before carries Im λ > 0
        k -= 1
    partners = [k, k + 1] if lam[k].imag > 0 else [k]
    weight = np.abs(b) * np.abs(lam) ** m
    growing = np.abs(lam) > 1.0
    growing[partners] = False
    total = float(np.sum(weight))
    share = float(np.sum(weight[growing]) / total) if total > 0 and np.isfinite(total) else (
        1.0 if np.any(growing) else 0.0)
    others = distance.copy()
    others[partners] = np.inf
    runner_up = int(np.argmin(others)) if lam.size > len(partners) else None
    if runner_up is not None and lam[runner_up].imag < 0:
        runner_up -= 1
    return FixedPointInfo(index=k, eigenvalue=complex(lam[k]),
                          distance_from_one=float(distance[k]),
                          growing_amplitude_share=share, n_growing=int(np.sum(growing)),
                          runner_up_index=runner_up,
                          runner_up_distance=(math.inf if runner_up is None
                                              else float(distance[runner_up])))
