"""How many singular values of ``X = W[0:m]`` the KMD keeps (docs/theory.md §6).

Three rules, reported by ``KMD.rank_method_``:

* ``"tolerance"``: every ``σ > tol·σ_max`` (``tol`` defaults to the precision floor
  ``dmd.default_tol``): all the data hold, noise included;
* ``"explicit"``: at most ``rank`` of those (``KMD(rank=10)``);
* ``"optimal"``: the Gavish-Donoho (2014) hard threshold for an unknown noise level,
  ``τ = ω(β)·median(σ_2, …, σ_m)``, on top of the precision floor (``KMD(rank="optimal")``).

``choose_rank`` applies them and says which one decided (``RankChoice``).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "OPTIMAL",
    "RankWarning",
    "warn_about_rank",
    "RankChoice",
    "choose_rank",
    "mp_median",
    "gd_lambda",
    "gd_omega",
    "optimal_threshold",
]

#: The value of ``KMD(rank=...)`` that asks for the data-driven rank.
OPTIMAL = "optimal"


class RankChoice(NamedTuple):
    """The rank kept and why: ``method`` is "explicit", "tolerance" or "optimal" (whichever
    cutoff was binding); ``threshold`` is the singular-value cutoff applied (absolute, in the
    units of σ); ``noise_level`` the per-entry noise estimate of the "optimal" rule, else None."""

    rank: int
    method: str
    threshold: float
    noise_level: float | None


def gd_lambda(beta: float) -> float:
    """λ*(β) of Gavish & Donoho (2014), eq. (11): the optimal threshold over ``√n·σ_noise`` for
    an ``m × n`` matrix with ``β = m/n`` and white noise of known level (√2 at β → 0)."""
    return math.sqrt(2.0 * (beta + 1.0)
                     + 8.0 * beta / ((beta + 1.0) + math.sqrt(beta * beta + 14.0 * beta + 1.0)))


@functools.lru_cache(maxsize=256)
def mp_median(beta: float) -> float:
    """Median μ_β of the Marchenko-Pastur law of ratio ``β ∈ (0, 1]`` (noise σ = 1): the
    typical squared noise singular value over ``n``. 1 at β → 0 (all noise σ² equal n·σ²)."""
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta={beta!r} must lie in (0, 1]")
    if beta < 1e-9:
        return 1.0
    from scipy.integrate import quad
    from scipy.optimize import brentq

    lo, hi = (1.0 - math.sqrt(beta)) ** 2, (1.0 + math.sqrt(beta)) ** 2

    def density(t: float) -> float:
        return math.sqrt(max((hi - t) * (t - lo), 0.0)) / (2.0 * math.pi * beta * t)

    def below(x: float) -> float:
        return quad(density, lo, x, limit=200)[0] - 0.5

    return float(brentq(below, lo, hi, xtol=1e-12 * hi))


def gd_omega(beta: float) -> float:
    """ω(β) = λ*(β)/√μ_β (Gavish & Donoho 2014, eq. (4)): the threshold over the MEDIAN singular
    value when the noise level is unknown; ≈ 1.43 + 1.82β at small β (√2 ≈ 1.414 at β → 0)."""
    return gd_lambda(beta) / math.sqrt(mp_median(beta))


def optimal_threshold(sigma: np.ndarray, n_params: int) -> tuple[float, float]:
    """``(τ, σ̂)``: the Gavish-Donoho cutoff for the singular values ``sigma`` (descending, all m
    of X) and the per-entry noise level it implies, with the first singular value set aside.

    The first direction of a training window is its mean, the stationary part that carries
    almost all of ``‖X‖²`` (docs/theory.md §6): it is signal by construction, so it is always
    kept and the rule acts on ``σ_2, …, σ_m``, a ``(m−1) × n`` problem with ``β = (m−1)/n``
    (swapped when ``n < m−1``). ``τ = ω(β)·median``, ``σ̂ = median/√(max(m−1, n)·μ_β)``.
    """
    rest = np.asarray(sigma[1:], dtype=np.float64)
    if rest.size == 0:
        return 0.0, 0.0
    small, large = sorted((rest.size, int(n_params)))
    beta = small / large
    median = float(np.median(rest))
    return gd_omega(beta) * median, median / math.sqrt(large * mp_median(beta))


def choose_rank(sigma: np.ndarray, tol: float, rank: int | str | None,
                n_params: int) -> RankChoice:
    """The rank for descending singular values ``sigma`` of X (docs/theory.md §6).

    ``tol``: the relative precision floor (nothing at or below ``tol·σ_max`` is kept, whatever the
    rule). ``rank``: None (every σ above the floor), an int (at most that many) or "optimal"
    (above ``max(τ, tol·σ_max)``, ``τ`` from ``optimal_threshold``, when the snapshots have more
    parameters than X has rows; otherwise the floor alone). Returns 0 kept when
    ``σ_max`` is 0.
    """
    if sigma.size == 0 or not sigma[0] > 0:
        return RankChoice(0, "tolerance", 0.0, None)
    floor = tol * float(sigma[0])
    above_floor = int(np.count_nonzero(sigma > floor))
    if rank is None:
        return RankChoice(above_floor, "tolerance", floor, None)
    if isinstance(rank, str):
        if n_params <= sigma.size:
            # More snapshots than parameters: a small system observed for longer than its
            # dimension (the teaching cases of §4), not a network window (n ≫ m). Every
            # direction can be signal there, so the median is no noise estimate: the floor decides.
            return RankChoice(above_floor, "tolerance", floor, None)
        tau, noise = optimal_threshold(sigma, n_params)
        if tau <= floor:  # the noise is below what the solver resolves: the floor decides
            return RankChoice(above_floor, "tolerance", floor, noise)
        kept = 1 + int(np.count_nonzero(sigma[1:] > tau))
        return RankChoice(min(kept, above_floor), "optimal", tau, noise)
    if int(rank) < above_floor:
        return RankChoice(int(rank), "explicit", floor, None)
    return RankChoice(above_floor, "tolerance", floor, None)


class RankWarning(UserWarning):
    """The rank asked for is more than the data hold, or ``rank="optimal"`` found no noise to
    measure; the fit goes on with the rank the data allow (docs/theory.md §6)."""


def warn_about_rank(rank: Any, solver: str, sigma: np.ndarray, tol: float,
                    robust: bool = False) -> None:
    """RankWarning for a rank the data cannot hold (docs/theory.md §6); changes nothing.

    ``robust``: ``solver`` is one of the noise-robust solvers, which need a truncated rank.
    """
    if isinstance(rank, str):
        if not sigma.size > 1 or not sigma[1] > tol * sigma[0]:
            warnings.warn(f"rank={OPTIMAL!r}: the snapshots do not move above the tolerance "
                          f"(σ_2 <= tol·σ_max, tol={tol:.3g}), so there is no noise "
                          f"level to estimate; only the stationary direction is kept "
                          f"(rank_method_='tolerance'). Record a window in which training "
                          f"moves, or pass rank=1", RankWarning, stacklevel=3)
    elif rank is None and robust and \
            bool(np.all(sigma > tol * sigma[0])):
        warnings.warn(f"solver={solver!r} keeps all {sigma.size} directions (nothing "
                      f"falls under the precision floor), so it fits the noise along with "
                      f"the dynamics (docs/theory.md §5.4); pass rank='optimal' or an "
                      f"integer rank", RankWarning, stacklevel=3)
    elif rank is not None and int(rank) > sigma.size:
        warnings.warn(f"rank={rank} is more than the data hold: X = W[0:m] has "
                      f"m = {sigma.size} singular values, so at most {sigma.size} modes are "
                      f"kept; pass rank <= {sigma.size}, or record a longer window",
                      RankWarning, stacklevel=3)
