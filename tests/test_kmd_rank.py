"""Tests for koopman/rank.py and KMD(rank=...): how many modes the KMD keeps (docs/theory.md §6).

The Gavish-Donoho constants against the paper, the data-driven rank on a window with white noise
(where its model holds), the precision floor and explicit ranks still deciding when they should,
the fitted attributes that say which rule decided, and bad input.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from builders import decaying_trajectory

from kooplearn_prune.koopman import KMD, OPTIMAL, RankWarning, default_tol
from kooplearn_prune.koopman.rank import (
    choose_rank,
    gd_lambda,
    gd_omega,
    mp_median,
    optimal_threshold,
)


def noisy_window(seed, n=5000, m=40, noise=1e-3):
    """θ* + three real modes + one pair (6 modes with λ = 1) + white noise of level ``noise``."""
    rng = np.random.default_rng(seed)
    w, theta_star, true = decaying_trajectory(n, m, [0.97, 0.9, 0.8], rng, pair=(0.95, 0.3),
                                              scale=0.05)
    return w + noise * rng.standard_normal(w.shape), theta_star, true


# --------------------------------------------------------------------------- the constants
def test_gavish_donoho_constants_match_the_paper():
    # Gavish & Donoho (2014): λ*(1) = 4/√3, ω(1) ≈ 2.858; ω(β) ≈ 0.56β³ − 0.95β² + 1.82β + 1.43
    assert gd_lambda(1.0) == pytest.approx(4 / math.sqrt(3), rel=1e-12)
    assert gd_omega(1.0) == pytest.approx(2.858, abs=1e-3)
    for beta in (1e-3, 0.05, 0.2, 0.5, 0.8):
        approx = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
        assert gd_omega(beta) == pytest.approx(approx, abs=0.02)
    # n >> m: the Marchenko-Pastur law shrinks to a point, μ_β -> 1 and ω -> √2
    assert mp_median(1e-6) == pytest.approx(1.0, abs=1e-6)
    assert gd_omega(1e-6) == pytest.approx(math.sqrt(2), abs=1e-5)
    assert mp_median(1.0) == pytest.approx(0.6528, abs=1e-4)
    with pytest.raises(ValueError, match="beta"):
        mp_median(1.5)


def test_threshold_sets_the_first_direction_aside():
    sigma = np.array([1e3, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    tau, noise = optimal_threshold(sigma, n_params=10**6)
    assert tau == pytest.approx(gd_omega(6 / 10**6) * 1.0)        # median of σ_2..σ_7 is 1
    assert noise == pytest.approx(1.0 / math.sqrt(10**6 * mp_median(6 / 10**6)))
    choice = choose_rank(sigma, tol=1e-12, rank=OPTIMAL, n_params=10**6)
    assert choice == (2, "optimal", tau, noise)
    # the precision floor is never crossed: a floor above τ decides
    assert choose_rank(sigma, tol=0.01, rank=OPTIMAL, n_params=10**6)[:2] == (1, "tolerance")


# --------------------------------------------------------------------------- on data
@pytest.mark.parametrize("solver", ["svd", "gram"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optimal_rank_finds_the_modes_under_white_noise(solver, seed):
    w, _, true = noisy_window(seed)
    full = KMD(rank=None, solver=solver).fit(w)
    assert full.rank_ == 40 and full.rank_method_ == "tolerance"   # noise passes the floor
    kmd = KMD(rank="optimal", solver=solver).fit(w)
    assert kmd.rank_ == true.size == 6 and kmd.rank_method_ == "optimal"
    assert kmd.noise_level_ == pytest.approx(1e-3, rel=0.05)       # the per-entry noise level
    sigma = kmd.singular_values_
    assert sigma[5] > 2 * kmd.rank_threshold_ and sigma[6] < kmd.rank_threshold_
    assert kmd.rank_threshold_ == pytest.approx(gd_omega(39 / 5000) * np.median(sigma[1:]))
    assert repr(KMD(rank="optimal")) == "KMD(rank='optimal')"


def test_explicit_rank_and_tol_still_decide():
    w, _, _ = noisy_window(3)
    explicit = KMD(rank=3).fit(w)
    assert explicit.rank_ == 3 and explicit.rank_method_ == "explicit"
    assert explicit.noise_level_ is None
    assert explicit.rank_threshold_ == pytest.approx(explicit.tol_ * explicit.singular_values_[0])
    loose = KMD(rank="optimal", tol=0.01).fit(w)              # a floor above τ wins
    assert loose.rank_method_ == "tolerance" and loose.rank_ == int(
        np.sum(loose.singular_values_ > 0.01 * loose.singular_values_[0]))
    assert loose.rank_threshold_ == pytest.approx(0.01 * loose.singular_values_[0])
    assert loose.noise_level_ == pytest.approx(1e-3, rel=0.05)    # still estimated


def test_optimal_rank_on_noiseless_data_is_the_precision_floor():
    rng = np.random.default_rng(4)
    w, theta_star, true = decaying_trajectory(300, 30, [0.9, 0.7, 0.5], rng)
    default, optimal = KMD(rank=None).fit(w), KMD(rank="optimal").fit(w)
    assert optimal.rank_ == default.rank_ == true.size
    assert optimal.rank_method_ == "tolerance"                 # rounding noise is below the floor
    np.testing.assert_allclose(optimal.fixed_point(), default.fixed_point(), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- bad input
def test_a_window_that_does_not_move_warns_with_optimal():
    theta = np.random.default_rng(5).standard_normal(200).astype(np.float32)
    still = np.tile(theta, (12, 1))
    with pytest.warns(RankWarning, match=r"rank='optimal'.*do not move.*pass rank=1"):
        kmd = KMD(rank="optimal").fit(still)
    assert kmd.rank_ == 1 and kmd.rank_method_ == "tolerance"
    assert abs(kmd.eigenvalues_[0] - 1) < 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KMD(rank=None).fit(still)                            # full rank has nothing to warn


def test_a_rank_above_what_the_data_hold_warns():
    w, _, _ = noisy_window(6, n=400, m=12)
    with pytest.warns(RankWarning, match=r"rank=50 is more than the data hold.*m = 12.*rank <= 12"):
        kmd = KMD(rank=50).fit(w)
    assert kmd.rank_ == 12 and kmd.rank_method_ == "tolerance"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KMD(rank=12).fit(w)


@pytest.mark.parametrize("rank, exc, message", [
    ("auto", ValueError, r"rank='auto' is unknown.*'optimal'"),
    ("Optimal", ValueError, "unknown"),
    (float("nan"), TypeError, "rank"),
    (2.0, TypeError, "rank"),
    (0, ValueError, r"rank=0 must be >= 1.*'optimal'"),
])
def test_bad_rank_is_refused_before_anything_changes(rank, exc, message):
    with pytest.raises(exc, match=message):
        KMD(rank=rank)
    w, _, _ = noisy_window(7, n=300, m=10)
    kmd = KMD(rank="optimal").fit(w)
    before = (kmd.rank_, kmd.rank_method_, kmd.noise_level_, kmd.eigenvalues_)
    kmd.rank = rank
    with pytest.raises(exc, match=message):
        kmd.fit(w)
    assert (kmd.rank_, kmd.rank_method_, kmd.noise_level_, kmd.eigenvalues_) == before


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_with_optimal_rank_changes_nothing(bad):
    w, _, _ = noisy_window(8, n=300, m=10)
    kmd = KMD(rank="optimal").fit(w)
    threshold = kmd.rank_threshold_
    broken = w.copy()
    broken[3, 7] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        kmd.fit(broken)
    assert kmd.rank_threshold_ == threshold and kmd.snapshots_ is w


def test_rank_attributes_at_full_rank():
    w = decaying_trajectory(100, 8, [0.5], np.random.default_rng(9))[0]
    kmd = KMD(rank=None, solver="svd").fit(w)
    assert kmd.rank_method_ == "tolerance" and kmd.noise_level_ is None
    assert kmd.rank_threshold_ == pytest.approx(
        default_tol("svd", 9, np.finfo(np.float64).eps) * kmd.singular_values_[0])


def test_the_default_rank_is_full_rank():
    assert KMD().rank is None and repr(KMD()) == "KMD()"
    assert repr(KMD(rank="optimal")) == "KMD(rank='optimal')"
    w, _, _ = noisy_window(6, n=400, m=30)
    assert KMD(rank="optimal").fit(w).rank_ < KMD().fit(w).rank_ == KMD(rank=None).fit(w).rank_


def test_optimal_rank_leaves_small_systems_to_the_floor():
    # more snapshots than parameters (the teaching cases of §4): every direction may be signal,
    # so the median of σ is no noise estimate and the precision floor decides
    rng = np.random.default_rng(3)
    w, _, true = decaying_trajectory(6, 40, [0.9, 0.7, 0.5, 0.3], rng)
    kmd = KMD(rank="optimal").fit(w)
    assert kmd.rank_method_ == "tolerance" and kmd.noise_level_ is None
    assert kmd.rank_ == KMD(rank=None).fit(w).rank_
