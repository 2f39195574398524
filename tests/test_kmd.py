"""Tests for koopman/kmd.py (with snapshots.py, dmd.py, inputs.py): the KMD estimator executes
docs/theory.md §3-§7."""

from __future__ import annotations

import logging
import math
import tracemalloc
import warnings

import numpy as np
import pytest
from builders import decaying_trajectory, gd_quadratic
from hypothesis import given, settings
from hypothesis import strategies as st

from kooplearn_prune.backend import asarray, namespace_of, to_numpy
from kooplearn_prune.koopman import (
    KMD,
    FixedPointInfo,
    FixedPointWarning,
    NotFittedError,
    default_tol,
    gram_matrix,
)
from kooplearn_prune.koopman import dmd as dmd_module
from kooplearn_prune.koopman import kmd as kmd_module
from kooplearn_prune.koopman import snapshots as snapshots_module
from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.trajectory import Trajectory


# --------------------------------------------------------------------------- trajectories
def reference_exact_dmd(snapshots, r):
    """Textbook exact DMD (Tu et al., 2014) with a full thin SVD, columns as snapshots."""
    x, y = snapshots[:-1].T, snapshots[1:].T
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    u, s, v = u[:, :r], s[:r], vh[:r].conj().T
    a_tilde = u.conj().T @ y @ v / s
    lam, w = np.linalg.eig(a_tilde)
    modes = (y @ v / s) @ w / lam                  # ψ_k = (1/λ_k) Y V Σ⁻¹ w_k
    b = np.linalg.lstsq(modes, snapshots[0], rcond=None)[0]
    return lam, modes * b                          # eigenvalues, ξ_k = b_k ψ_k as columns


def match(found, expected, tol):
    """Index of the found eigenvalue closest to each expected one; each used once, within tol."""
    found, expected = np.asarray(found), np.asarray(expected)
    assert found.shape == expected.shape, (found, expected)
    order = [int(np.argmin(np.abs(found - lam))) for lam in expected]
    assert sorted(order) == list(range(found.size)), (found, expected)
    assert np.max(np.abs(found[order] - expected)) < tol, (found, expected)
    return order


def rel(a, b):
    a, b = to_numpy(a), to_numpy(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("solver", ["svd", "gram"])
def test_matches_textbook_exact_dmd(xp, solver):
    rng = np.random.default_rng(3)
    snapshots, _, true = decaying_trajectory(400, 12, [0.9, 0.6, 0.3], rng, pair=(0.8, 0.5))
    lam_ref, xi_ref = reference_exact_dmd(snapshots, r=true.size)
    kmd = KMD(solver=solver).fit(asarray(snapshots, xp=xp))
    assert kmd.solver_ == solver and kmd.rank_ == true.size
    order = match(kmd.eigenvalues_, lam_ref, 1e-9)
    modes = to_numpy(kmd.modes_)
    assert modes.shape == (true.size, 400) and modes.dtype == np.complex128
    for k_ref, k in enumerate(order):
        a, b = modes[k], xi_ref[:, k_ref]
        assert abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)) > 1 - 1e-10
        assert np.linalg.norm(a - b) <= 1e-8 * np.linalg.norm(b)   # ξ = b ψ, scale included
    assert kmd.reconstruction_error_ < 1e-7
    match(kmd.eigenvalues_, true, 1e-9)


def test_gram_and_svd_agree_on_well_conditioned_data(xp):
    rng = np.random.default_rng(5)
    snapshots, theta_star, true = decaying_trajectory(3000, 25, [0.95, 0.7], rng, pair=(0.9, 1.0))
    w = asarray(snapshots, xp=xp)
    svd, gram = KMD(solver="svd").fit(w), KMD(solver="gram").fit(w)
    order = match(gram.eigenvalues_, svd.eigenvalues_, 1e-9)
    # |b_k| = ‖ξ_k‖; the phase of b_k depends on the arbitrary phase of the unit mode ψ_k
    np.testing.assert_allclose(np.abs(gram.amplitudes_[order]), np.abs(svd.amplitudes_),
                               rtol=1e-7)
    assert rel(to_numpy(gram.modes_)[order], svd.modes_) < 1e-8
    assert rel(gram.fixed_point(), svd.fixed_point()) < 1e-10
    assert rel(gram.predict(31.5), svd.predict(31.5)) < 1e-9
    assert rel(gram.fixed_point(), theta_star) < 1e-10


def test_outputs_are_float64_on_the_snapshots_backend(xp):
    rng = np.random.default_rng(0)
    snapshots, _, _ = decaying_trajectory(64, 8, [0.5], rng, pair=(0.7, 0.9))
    kmd = KMD().fit(asarray(snapshots.astype(np.float32), xp=xp))
    assert kmd.eigenvalues_.dtype == np.complex128 and isinstance(kmd.eigenvalues_, np.ndarray)
    for vector in (kmd.fixed_point(), kmd.predict(3), kmd.predict_update(2)):
        assert namespace_of(vector) is xp and vector.dtype == xp.float64 and vector.shape == (64,)
    assert kmd.reconstruct().shape == (9, 64) and kmd.reconstruct().dtype == xp.float64
    assert kmd.predict(np.array([0.0, 1.5, 2.0])).shape == (3, 64)
    assert kmd.modes_.dtype == xp.complex128 and kmd.mode(0).shape == (64,)


# --------------------------------------------------------------------------- complex pairs
def test_rotation_decay_gives_real_outputs_from_conjugate_pairs():
    rng = np.random.default_rng(11)
    rho, phi = 0.93, 0.7
    snapshots, theta_star, true = decaying_trajectory(200, 20, [-0.5], rng, pair=(rho, phi))
    kmd = KMD(solver="svd").fit(snapshots)
    match(kmd.eigenvalues_, true, 1e-10)
    lam = kmd.eigenvalues_
    pair = np.flatnonzero(lam.imag > 0)
    assert pair.size == 1
    k = int(pair[0])
    assert lam[k + 1] == np.conj(lam[k])
    assert kmd.amplitudes_[k + 1] == np.conj(kmd.amplitudes_[k])
    modes = kmd.modes_
    np.testing.assert_allclose(modes[k + 1], np.conj(modes[k]), rtol=0, atol=1e-12)
    # Integer j (inside and past the window): exact, including the negative real eigenvalue;
    # non-integer j: the rotation follows its principal angle φ < π, and λ < 0 gives
    # |λ|^j cos πj, the real interpolation of an oscillation at the Nyquist frequency.
    times = [0, 7, 20, 26, 2.5, 13.25]
    truth = decaying_trajectory(200, 0, [-0.5], np.random.default_rng(11), pair=(rho, phi),
                                times=times)[0]
    assert rel(truth[0], snapshots[0]) < 1e-15 and rel(truth[1], snapshots[7]) < 1e-15
    predicted = kmd.predict(np.array(times, dtype=float))
    assert predicted.dtype == np.float64 and predicted.shape == (6, 200)
    for row, j in enumerate(times):
        assert rel(predicted[row], truth[row]) < 1e-10
        assert rel(kmd.predict(j), truth[row]) < 1e-10
    # the real result is the full complex sum, whose imaginary part is ~0 by the pairing
    full = (lam**7) @ modes
    assert np.max(np.abs(full.imag)) < 1e-10
    np.testing.assert_allclose(kmd.predict(7), full.real, atol=1e-10)


# --------------------------------------------------------------------------- precision
def test_float32_transient_at_1e_4_is_resolved_by_gram():
    rng = np.random.default_rng(1)
    n, m = 20000, 40
    lams = [0.95, 0.8, 0.6]
    exact, theta_star, _ = decaying_trajectory(n, m, lams, rng)
    transient = exact - theta_star
    scale = 1e-4 * np.linalg.norm(theta_star) / np.linalg.norm(transient[0])
    snapshots = (theta_star + scale * transient).astype(np.float32)
    kmd = KMD(solver="gram").fit(snapshots)
    assert kmd.solver_ == "gram" and kmd.rank_ == 4
    match(kmd.eigenvalues_, [1.0] + lams, 1e-4)
    fixed = kmd.fixed_point()
    distance_last = rel(snapshots[-1].astype(np.float64), theta_star)   # ≈ 7e-6
    assert distance_last > 5e-6
    assert rel(fixed, theta_star) < 5e-8          # float32 rounding level, far below 7e-6
    assert rel(kmd.predict(m), snapshots[-1].astype(np.float64)) < 5e-8

    # The same data through a float32 Gram loses the transient (docs/theory.md §6):
    # the spectrum is noise, which is what the float64 accumulation prevents.
    g32 = (snapshots @ snapshots.T).astype(np.float64)
    reduced = dmd_module.reduced_from_gram(g32, kmd.tol_, None)
    spectrum = np.linalg.eigvals(reduced.a_tilde)
    assert reduced.sigma.size > 4 or \
        np.min(np.abs(spectrum[:, None] - np.array(lams)), 0).max() > 1e-3


def test_gram_pass_memory_is_a_small_fraction_of_the_trajectory():
    rng = np.random.default_rng(2)
    snapshots = decaying_trajectory(200_000, 20, [0.9], rng)[0].astype(np.float32)
    kmd = KMD(solver="gram")
    tracemalloc.start()
    try:
        kmd.fit(snapshots)
        kmd.fixed_point()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * snapshots.nbytes, peak / snapshots.nbytes


def test_gram_matrix_is_exact_float64_of_float32_products():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((7, 5000)).astype(np.float32)
    reference = w.astype(np.float64) @ w.astype(np.float64).T
    for chunk in (None, 333, 5000, 10**6):
        g = gram_matrix(w, chunk_size=chunk)
        np.testing.assert_allclose(g, reference, rtol=1e-13)
        assert np.array_equal(g, g.T)


def test_chunk_size_and_threads_do_not_change_the_result(xp):
    rng = np.random.default_rng(6)
    snapshots = asarray(decaying_trajectory(1000, 10, [0.8, 0.4], rng)[0], xp=xp)
    a = KMD(solver="gram").fit(snapshots)
    b = KMD(solver="gram", chunk_size=37).fit(snapshots)
    order = match(b.eigenvalues_, a.eigenvalues_, 1e-12)
    assert rel(a.fixed_point(), b.fixed_point()) < 1e-12
    assert rel(to_numpy(b.modes_)[order], a.modes_) < 1e-10


def test_threads_give_identical_sums(monkeypatch):
    # chunk sums live in fixed lanes, so the Gram matrix is bit-identical for any n_jobs
    monkeypatch.setattr(snapshots_module, "PARALLEL_MIN_ENTRIES", 1)
    w = np.random.default_rng(1).standard_normal((9, 20000)).astype(np.float32)
    grams = [gram_matrix(w, chunk_size=1000, n_jobs=j) for j in (1, 2, 3, 8)]
    for g in grams[1:]:
        np.testing.assert_array_equal(g, grams[0])
    np.testing.assert_allclose(grams[0], w.astype(float) @ w.astype(float).T, rtol=1e-13)
    kmd1 = KMD(solver="gram", n_jobs=1).fit(w)          # default chunks: 1024 columns
    kmd3 = KMD(solver="gram", n_jobs=3).fit(w)
    np.testing.assert_array_equal(kmd1.eigenvalues_, kmd3.eigenvalues_)
    np.testing.assert_array_equal(kmd1.predict(np.array([1.0, 4.5])),
                                  kmd3.predict(np.array([1.0, 4.5])))
    np.testing.assert_array_equal(kmd1.modes_, kmd3.modes_)


# --------------------------------------------------------------------------- Claim A, Claim C
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 400), m=st.integers(2, 15),
       solver=st.sampled_from(["svd", "gram"]))
def test_claim_a_converged_window_has_only_eigenvalue_one(seed, n, m, solver):
    theta_bar = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    snapshots = np.tile(theta_bar, (m + 1, 1))
    kmd = KMD(solver=solver).fit(snapshots)
    assert kmd.rank_ == 1
    assert abs(kmd.eigenvalues_[0] - 1) < 1e-12
    fixed = kmd.fixed_point()
    assert rel(fixed, theta_bar.astype(np.float64)) < 1e-12
    assert kmd.fixed_point_info_.reliable
    assert kmd.reconstruction_error_ < 1e-7


def test_claim_c_affine_gd_on_a_quadratic_is_exact():
    rng = np.random.default_rng(7)
    lams = [0.35, 0.5, 0.62, 0.74, 0.85, 0.93]
    eta = 0.1
    snapshots, hmat, b, theta_star = gd_quadratic(6, 24, lams, eta, rng)
    kmd = KMD(solver="svd", affine=True).fit(snapshots)
    match(kmd.eigenvalues_, [1.0] + lams, 1e-9)
    assert rel(kmd.fixed_point(), theta_star) < 1e-10
    # every snapshot's update is −η ∇L(θ_j)
    for j in range(25):
        grad = hmat @ snapshots[j] - b
        assert rel(kmd.predict_update(j), -eta * grad) < 1e-8
    # without the constant 1, the fully excited problem is not linear: the decomposition is off
    raw = KMD(solver="svd").fit(snapshots)
    with pytest.warns(FixedPointWarning, match="compete"):  # with tol=1 every λ competes
        assert rel(raw.fixed_point(tol=1.0, max_growing_share=1.0), theta_star) > 1e-6


@pytest.mark.parametrize("solver", ["svd", "gram"])
def test_claim_c_raw_dmd_is_exact_when_few_directions_are_excited(solver):
    rng = np.random.default_rng(8)
    lams = np.concatenate([[0.3, 0.55, 0.8, 0.9], rng.uniform(0.1, 0.95, 116)])
    snapshots, hmat, b, theta_star = gd_quadratic(120, 12, lams, 0.05, rng, excited=4)
    kmd = KMD(solver=solver).fit(snapshots)
    match(kmd.eigenvalues_, [1.0, 0.3, 0.55, 0.8, 0.9], 1e-8)
    assert rel(kmd.fixed_point(), theta_star) < 1e-10


# --------------------------------------------------------------------------- Trajectory, auto
def test_trajectory_input_keeps_layout_and_matches_array():
    rng = np.random.default_rng(9)
    snapshots = decaying_trajectory(30, 6, [0.5], rng)[0].astype(np.float32)
    layout = ParamLayout(("w", "b"), ((5, 5), (5,)), (True, False))
    trajectory = Trajectory(snapshots, layout=layout)
    from_traj, from_array = KMD().fit(trajectory), KMD().fit(snapshots)
    assert from_traj.layout_ is layout and from_array.layout_ is None
    assert from_traj.snapshots_ is snapshots
    np.testing.assert_array_equal(from_traj.eigenvalues_, from_array.eigenvalues_)


def test_auto_picks_svd_for_small_and_gram_for_large(monkeypatch, caplog):
    rng = np.random.default_rng(10)
    snapshots = decaying_trajectory(100, 5, [0.5], rng)[0]
    with caplog.at_level(logging.INFO, logger="kooplearn_prune.koopman.kmd"):
        assert KMD().fit(snapshots).solver_ == "svd"
        monkeypatch.setattr(kmd_module, "AUTO_SVD_MAX_ENTRIES", 599)
        assert KMD().fit(snapshots).solver_ == "gram"
    assert "chose 'gram'" in caplog.text and "chose 'svd'" in caplog.text
    assert KMD(solver="svd").fit(snapshots).solver_ == "svd"


def test_rank_and_tol_truncate():
    rng = np.random.default_rng(12)
    snapshots = decaying_trajectory(300, 15, [0.9, 0.7, 0.5, 0.3], rng)[0]
    assert KMD().fit(snapshots).rank_ == 5
    truncated = KMD(rank=2).fit(snapshots)
    assert truncated.rank_ == 2 and truncated.eigenvalues_.shape == (2,)
    assert truncated.reconstruction_error_ > 1e-3          # the error measure can fail
    loose = KMD(tol=0.5).fit(snapshots)
    assert loose.tol_ == 0.5
    assert loose.rank_ == int(np.sum(loose.singular_values_ > 0.5 * loose.singular_values_[0]))
    assert KMD(solver="gram").fit(snapshots).tol_ == default_tol("gram", 16, np.finfo(float).eps)


def test_default_tol_rule():
    eps64, eps32 = np.finfo(np.float64).eps, np.finfo(np.float32).eps
    assert default_tol("svd", 101, eps64) == pytest.approx(10 * 101 * eps64)
    assert default_tol("gram", 101, eps64) == pytest.approx(8 * math.sqrt(eps64))
    assert default_tol("svd", 101) == pytest.approx(eps32 / 2)
    assert default_tol("gram", 101, eps32) == pytest.approx(8 * math.sqrt(eps64))
    with pytest.raises(ValueError, match="svd"):
        default_tol("auto", 10)


# --------------------------------------------------------------------------- fixed point checks
def test_no_eigenvalue_near_one_warns_or_raises_when_strict():
    rng = np.random.default_rng(13)
    snapshots = decaying_trajectory(50, 10, [0.5], rng, offset=False)[0]
    kmd = KMD().fit(snapshots)
    before = kmd.fixed_point_info_
    with pytest.raises(ValueError, match=r"\|λ − 1\| = 0\.5"):
        kmd.fixed_point(strict=True)
    assert kmd.fixed_point_info_ is before               # nothing changed
    with pytest.warns(FixedPointWarning, match="unreliable") as record:
        fixed = kmd.fixed_point()
    assert issubclass(record[0].category, UserWarning)
    info = kmd.fixed_point_info_
    assert isinstance(info, FixedPointInfo) and not info.reliable
    assert info.distance_from_one == pytest.approx(0.5)
    assert fixed.shape == (50,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kmd.fixed_point(tol=0.6)                          # a looser tolerance accepts it


def test_growing_modes_make_the_fixed_point_unreliable():
    rng = np.random.default_rng(14)
    snapshots, _, true = decaying_trajectory(50, 10, [1.08, 0.5], rng)
    kmd = KMD().fit(snapshots)
    match(kmd.eigenvalues_, true, 1e-9)
    with pytest.warns(FixedPointWarning, match="growing"):
        kmd.fixed_point()
    info = kmd.fixed_point_info_
    assert info.n_growing == 1 and info.growing_amplitude_share > 0.1
    assert info.distance_from_one < 1e-10


# --------------------------------------------------------------------------- bad input
def _fitted():
    return KMD().fit(decaying_trajectory(20, 6, [0.5], np.random.default_rng(0))[0])


@pytest.mark.parametrize("solver", ["svd", "gram"])
@pytest.mark.parametrize("bad, exc, message", [
    ("nan", ValueError, "NaN or Inf"),
    ("inf", ValueError, "NaN or Inf"),
    ("zeros", ValueError, "all zero"),
    ("two_rows", ValueError, "at least 3 snapshots"),
    ("one_d", ValueError, "2-D"),
    ("complex", TypeError, "real"),
    ("string", TypeError, "array"),
])
def test_bad_snapshots_raise_and_change_nothing(solver, bad, exc, message):
    good = decaying_trajectory(20, 6, [0.5], np.random.default_rng(0))[0]
    data = {
        "nan": np.where(np.arange(20) == 3, np.nan, good),
        "inf": np.where(np.arange(20) == 3, np.inf, good),
        "zeros": np.zeros((5, 20), dtype=np.float32),
        "two_rows": good[:2],
        "one_d": good[0],
        "complex": good.astype(np.complex128),
        "string": "snapshots",
    }[bad]
    fresh = KMD(solver=solver)
    with pytest.raises(exc, match=message):
        fresh.fit(data)
    assert not hasattr(fresh, "eigenvalues_") and not hasattr(fresh, "rank_")
    with pytest.raises(NotFittedError):
        fresh.fixed_point()
    fitted = _fitted()
    eigenvalues, coef = fitted.eigenvalues_, fitted.mode_coefficients_
    info = fitted.fixed_point_info_
    with pytest.raises(exc, match=message):
        fitted.fit(data)
    assert fitted.eigenvalues_ is eigenvalues and fitted.fixed_point_info_ is info
    np.testing.assert_array_equal(fitted.mode_coefficients_, coef)


def test_nan_in_array_api_strict_snapshots(xp):
    good = decaying_trajectory(20, 6, [0.5], np.random.default_rng(0))[0]
    good[2, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KMD(solver="gram").fit(asarray(good, xp=xp))


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"solver": "dmd"}, ValueError, "solver"),
    ({"rank": -1}, ValueError, "rank"),
    ({"rank": 0}, ValueError, "rank"),
    ({"rank": 2.5}, TypeError, "rank"),
    ({"tol": -1e-3}, ValueError, "tol"),
    ({"tol": 0.0}, ValueError, "tol"),
    ({"tol": 1.5}, ValueError, "tol"),
    ({"tol": float("nan")}, ValueError, "tol"),
    ({"tol": "1e-3"}, TypeError, "tol"),
    ({"affine": "yes"}, TypeError, "affine"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"n_jobs": 0}, ValueError, "n_jobs"),
    ({"n_jobs": 1.5}, TypeError, "n_jobs"),
])
def test_invalid_constructor_arguments(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        KMD(**kwargs)


def test_parameters_are_checked_again_by_fit():
    kmd = _fitted()
    eigenvalues = kmd.eigenvalues_
    kmd.solver = "fast"
    with pytest.raises(ValueError, match="solver"):
        kmd.fit(kmd.snapshots_)
    assert kmd.eigenvalues_ is eigenvalues


@pytest.mark.parametrize("j, exc", [(-1, ValueError), (-0.5, ValueError), (np.nan, ValueError),
                                    (np.inf, ValueError), (np.array([1.0, -2.0]), ValueError),
                                    ("3", TypeError), (True, TypeError),
                                    (np.ones((2, 2)), ValueError)])
def test_predict_rejects_bad_times(j, exc):
    with pytest.raises(exc):
        _fitted().predict(j)


def test_unfitted_estimator_and_bad_mode_index():
    kmd = KMD(rank=3)
    assert repr(kmd) == "KMD(rank=3)"
    for call in (lambda: kmd.modes_, lambda: kmd.predict(1), lambda: kmd.reconstruct(),
                 lambda: kmd.mode(0)):
        with pytest.raises(NotFittedError, match="fit"):
            call()
    fitted = _fitted()
    with pytest.raises(IndexError):
        fitted.mode(fitted.rank_)
    assert fitted.mode(-1).shape == (20,)


def test_prediction_overflow_is_reported():
    snapshots = decaying_trajectory(20, 6, [1.5, 0.5], np.random.default_rng(0))[0]
    kmd = KMD().fit(snapshots)
    with pytest.raises(ValueError, match="overflows"):
        kmd.predict(5000)


# --------------------------------------------------------------------------- float32 and float64
@pytest.mark.parametrize("solver", ["svd", "gram"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_fixed_point_and_modes_in_both_dtypes(xp, dtype, solver):
    """A well-conditioned case (κ(X) ≈ 900): the results are as accurate as the data allow.

    The error bound is ``ε = eps(dtype) + eps64·κ^p`` (p = 1 for "svd", 2 for "gram", whose G
    squares κ; docs/theory.md §6). float32 snapshots are accumulated in float64, so for them ε is
    the float32 rounding of the data itself (the κ term is ~1e-10); for float64 it is the solver's
    own float64 error. Fixed point and eigenvalues: within 4ε; modes: within 16ε·‖θ*‖.
    """
    rng = np.random.default_rng(21)
    lams = [0.9, 0.7, 0.5]
    exact, theta_star, true = decaying_trajectory(2000, 20, lams, rng, pair=(0.8, 0.6), scale=0.1)
    basis = np.linalg.qr(np.random.default_rng(21).standard_normal((2000, 5)))[0] * math.sqrt(2000)
    snapshots = asarray(exact.astype(dtype), xp=xp)     # rounded to dtype, then moved
    kmd = KMD(solver=solver).fit(snapshots)
    assert kmd.solver_ == solver and kmd.rank_ == true.size
    sigma = kmd.singular_values_[: kmd.rank_]
    kappa = sigma[0] / sigma[-1]
    bound = np.finfo(dtype).eps + np.finfo(np.float64).eps * kappa ** (2 if solver == "gram" else 1)
    assert 1e-16 < bound < 1e-6                      # ε itself is a meaningful, small number

    order = match(kmd.eigenvalues_, true, 4 * bound)
    info = kmd.fixed_point_info_
    assert info.index == order[0] and info.reliable
    fixed = kmd.fixed_point()
    assert namespace_of(fixed) is xp and fixed.dtype == xp.float64 and fixed.shape == (2000,)
    assert rel(fixed, theta_star) <= 4 * bound
    modes = to_numpy(kmd.modes_)
    assert modes.dtype == np.complex128 and modes.shape == (true.size, 2000)
    for i in range(len(lams)):                       # real transient modes: ξ_k = 0.1·u_k
        k = order[1 + i]
        error = np.linalg.norm(modes[k] - 0.1 * basis[:, i]) / np.linalg.norm(theta_star)
        assert error <= 16 * bound, (i, error / bound)
    np.testing.assert_array_equal(to_numpy(kmd.mode(order[1])), modes[order[1]])


# --------------------------------------------------------------------------- solver= and method=
def test_method_is_a_deprecated_alias_of_solver():
    snapshots = decaying_trajectory(40, 6, [0.5], np.random.default_rng(0))[0]
    with pytest.warns(DeprecationWarning, match="solver="):
        old = KMD(method="gram")
    assert old.solver == "gram" and repr(old) == "KMD(solver='gram')"
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # solver= itself warns about nothing
        new = KMD(solver="gram").fit(snapshots)
    old.fit(snapshots)
    np.testing.assert_array_equal(old.eigenvalues_, new.eigenvalues_)
    with pytest.warns(DeprecationWarning, match="use solver "):
        assert new.method == "gram"
    with pytest.warns(DeprecationWarning, match="use solver_ "):
        assert new.method_ == "gram"
    with pytest.warns(DeprecationWarning, match="use solver "):
        new.method = "svd"
    assert new.solver == "svd"
    with pytest.raises(TypeError, match="solver= only"):
        KMD(solver="svd", method="gram")
    with pytest.raises(TypeError, match="solver= only"):
        KMD(solver="auto", method="auto")             # both given, even when they agree
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="solver='dmd'"):
        KMD(method="dmd")
    assert kmd_module.SOLVERS == ("auto", "svd", "gram") and not hasattr(kmd_module, "METHODS")


# --------------------------------------------------------------------------- public combinations
def test_combine_and_coefficients_are_the_predictions(xp):
    rng = np.random.default_rng(15)
    snapshots, _, _ = decaying_trajectory(80, 9, [0.7], rng, pair=(0.9, 0.4))
    w = asarray(snapshots, xp=xp)
    kmd = KMD().fit(w)
    m = kmd.n_snapshots_ - 1
    # one weight per snapshot: W^T z
    z = rng.standard_normal(m + 1)
    np.testing.assert_allclose(to_numpy(kmd.combine(z)), z @ snapshots, rtol=1e-12)
    rows = rng.standard_normal((3, m + 1))
    both = kmd.combine(rows)
    assert namespace_of(both) is xp and both.dtype == xp.float64 and both.shape == (3, 80)
    np.testing.assert_allclose(to_numpy(both), rows @ snapshots, rtol=1e-12)
    # predictions are combinations: z(j) and the update rows
    z_j = kmd.prediction_coefficients(3.5)
    assert z_j.shape == (m + 1,) and z_j.dtype == np.float64
    np.testing.assert_array_equal(to_numpy(kmd.combine(z_j)), to_numpy(kmd.predict(3.5)))
    times = np.array([0.0, 2.0, 4.0])
    update_rows = kmd.update_coefficients(times)
    assert update_rows.shape == (3, m + 1)
    np.testing.assert_array_equal(to_numpy(kmd.combine(update_rows)),
                                  to_numpy(kmd.predict_update(times)))
    np.testing.assert_allclose(update_rows, kmd.prediction_coefficients(times + 1)
                               - kmd.prediction_coefficients(times), atol=1e-12)
    # the modes are combinations too, with complex weights Ξ
    xi = kmd.mode_coefficients_
    assert xi.shape == (m + 1, kmd.rank_) and not xi.flags.writeable
    np.testing.assert_array_equal(to_numpy(kmd.combine(xi.T)), to_numpy(kmd.modes_))
    assert kmd.combine(xi[:, 0]).dtype == xp.complex128


@pytest.mark.parametrize("coefficients, exc, message", [
    (np.ones(5), ValueError, r"shape \(m\+1,\) or \(k, m\+1\)"),
    (np.ones((2, 3, 7)), ValueError, "shape"),
    (np.array([np.nan] * 7), ValueError, "NaN"),
    (np.array(["a"] * 7), TypeError, "numbers"),
])
def test_combine_rejects_bad_coefficients(coefficients, exc, message):
    kmd = _fitted()                                   # 7 snapshots
    with pytest.raises(exc, match=message):
        kmd.combine(coefficients)
    with pytest.raises(NotFittedError):
        KMD().combine(np.ones(7))
    assert not KMD().is_fitted and kmd.is_fitted


# --------------------------------------------------------------------------- fixed point is a query
def test_fixed_point_never_changes_the_estimator():
    rng = np.random.default_rng(16)
    snapshots = decaying_trajectory(50, 10, [0.5], rng, offset=False)[0]   # no λ near 1
    kmd = KMD().fit(snapshots)
    info = kmd.fixed_point_info_                      # computed by fit, before any query
    assert (info.tol, info.max_growing_share) == (kmd_module.STATIONARY_TOL,
                                                  kmd_module.MAX_GROWING_SHARE)
    assert not info.reliable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loose = kmd.fixed_point(tol=0.6)              # accepted under the looser tolerance
    assert kmd.fixed_point_info_ is info and not kmd.fixed_point_info_.reliable
    assert kmd.fixed_point_info_.tol == kmd_module.STATIONARY_TOL
    judged = kmd.fixed_point_diagnostics(tol=0.6)
    assert judged.reliable and judged.tol == 0.6 and judged.index == info.index
    assert judged.distance_from_one == info.distance_from_one
    assert kmd.fixed_point_diagnostics() is info
    with pytest.warns(FixedPointWarning):
        default = kmd.fixed_point()
    np.testing.assert_array_equal(loose, default)     # thresholds judge; they never move k*
    with pytest.raises(ValueError, match="max_growing_share"):
        kmd.fixed_point(max_growing_share=-1.0)
    assert kmd.fixed_point_info_ is info


def test_fixed_point_thresholds_are_the_named_constants():
    info = FixedPointInfo(index=0, eigenvalue=1 + 0j, distance_from_one=5e-4,
                          growing_amplitude_share=5e-3, n_growing=1)
    assert info.tol == kmd_module.STATIONARY_TOL == 1e-3
    assert info.max_growing_share == kmd_module.MAX_GROWING_SHARE == 1e-2
    assert info.reliable                              # a share of 5e-3 is within 1e-2
    assert not FixedPointInfo(0, 1 + 0j, 2e-3, 0.0, 0).reliable
    assert not FixedPointInfo(0, 1 + 0j, 0.0, 2e-2, 1).reliable


# --------------------------------------------------------------------------- amplitude fit
@pytest.mark.parametrize("seed", [2, 3, 6])
def test_fixed_point_of_gd_on_a_quadratic_at_textbook_accuracy(seed):
    """The audit's case: n = 200, 12 excited directions, λ_k = 1 − h_k in [0.03, 0.89], η = 1.

    The stationary mode's direction was always right; its amplitude was 7e-7..1.4e-6 off (these
    seeds), because the modes the amplitudes were fitted to had been formed as Yᵀ(V Σ⁻¹ w), with
    terms of size 1/σ_min that cancel. Built in the textbook order (Yᵀ V) Σ⁻¹ w it is <= 1e-9."""
    rng = np.random.default_rng(seed)
    lams = rng.uniform(0.03, 0.89, 200)
    snapshots, _, _, theta_star = gd_quadratic(200, 40, lams, 1.0, rng, excited=12)
    kmd = KMD(solver="svd").fit(snapshots)
    assert kmd.rank_ == 13                                     # the true rank: θ* and 12 modes
    assert rel(kmd.fixed_point(), theta_star) <= 1e-9
    lam_ref, xi_ref = reference_exact_dmd(snapshots, 13)
    k_ref = int(np.argmin(np.abs(lam_ref - 1)))
    assert rel(kmd.fixed_point(), xi_ref[:, k_ref].real) <= 1e-9
    # "gram" cannot reach that rank: σ_13 is ~1e-9 of σ_max, under the float64 Gram matrix's
    # floor √(64·eps64) (docs/theory.md §6); it keeps the modes it resolves.
    gram = KMD(solver="gram").fit(snapshots)
    assert gram.rank_ < 13 and kmd.singular_values_[12] / kmd.singular_values_[0] < gram.tol_


def test_affine_needs_the_constant_direction_above_the_tolerance():
    """docs/theory.md §4: every direction excited (n = 15, 60 snapshots). The constant direction
    is σ_16 ≈ 1e-13 of σ_max, under the svd floor 10·(m+1)·eps64: by default affine keeps 15 of
    16 and is no better than plain DMD; with tol below σ_16 it is exact to 1e-11."""
    rng = np.random.default_rng(1)
    snapshots, _, _, theta_star = gd_quadratic(15, 59, rng.uniform(0.1, 0.9, 15), 1.0, rng)
    plain = KMD(solver="svd").fit(snapshots)
    default = KMD(solver="svd", affine=True).fit(snapshots)
    assert default.rank_ == 15 and default.rank_method_ == "tolerance"
    assert rel(default.fixed_point(), theta_star) > 0.5 * rel(plain.fixed_point(), theta_star)
    exact = KMD(solver="svd", affine=True, tol=1e-15).fit(snapshots)
    assert exact.rank_ == 16
    assert rel(exact.fixed_point(), theta_star) < 1e-10 < rel(default.fixed_point(), theta_star)


def test_float32_transient_at_1e_5_loses_a_mode_at_the_default_tolerance():
    """default_tol for float32 snapshots is eps32/2 = 6e-8, ~10x above float32 rounding noise
    (~4e-9 of σ_max at m+1 = 41): a transient of 1e-5 of ‖θ‖ has σ_6 = 4.8e-8 of σ_max and loses
    a mode; tol=1e-8 ("svd") keeps it and the fixed point is ~10x closer."""
    rng = np.random.default_rng(0)
    exact, theta_star, _ = decaying_trajectory(20000, 40, [0.95, 0.8, 0.6], rng, pair=(0.9, 0.2))
    transient = exact - theta_star
    scale = 1e-5 * np.linalg.norm(theta_star) / np.linalg.norm(transient[0])
    snapshots = (theta_star + scale * transient).astype(np.float32)
    default = KMD(solver="svd").fit(snapshots)
    kept = KMD(solver="svd", tol=1e-8).fit(snapshots)
    assert default.rank_ == 5 and kept.rank_ == 6
    assert rel(kept.fixed_point(), theta_star) < 0.2 * rel(default.fixed_point(), theta_star)
    assert rel(kept.fixed_point(), theta_star) < 0.1 * rel(snapshots[-1].astype(float), theta_star)


# --------------------------------------------------------------------------- stationary mode
def _orthonormal(n, k, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)))[0].T


def test_complex_stationary_pair_is_flagged_and_its_real_sum_is_used():
    """λ* = 0.9998 e^{±6.5e-4 i} (|λ* − 1| = 6.8e-4 < tol): a rotation of period ~9700 steps,
    as in the audit's CNN + BatchNorm window. It used to pass as reliable."""
    u, v, w = _orthonormal(300, 3, 0)
    rho, phi = 0.9998, 6.5e-4
    t = np.arange(41.0)[:, None]
    snapshots = rho**t * (np.cos(phi * t) * u + np.sin(phi * t) * v) + 0.5**t * w
    kmd = KMD(solver="svd").fit(snapshots)
    info = kmd.fixed_point_info_
    assert info.stationary_is_complex and abs(info.eigenvalue - rho * np.exp(1j * phi)) < 1e-9
    assert info.distance_from_one < info.tol and not info.competing
    assert not info.reliable
    with pytest.warns(FixedPointWarning, match="complex pair"):
        fixed = kmd.fixed_point()
    assert rel(fixed, u) < 1e-9                               # 2 Re ξ*: the pair at j = 0
    with pytest.raises(ValueError, match="complex pair"):
        kmd.fixed_point(strict=True)


def test_competing_eigenvalues_are_flagged():
    """λ = 1 and 0.9995: both within tol = 1e-3 of each other's distance from 1."""
    rng = np.random.default_rng(17)
    snapshots, theta_star, _ = decaying_trajectory(300, 40, [0.9995, 0.5], rng)
    kmd = KMD(solver="svd").fit(snapshots)
    info = kmd.fixed_point_info_
    assert not info.stationary_is_complex and info.distance_from_one < 1e-9
    assert abs(info.runner_up_distance - 5e-4) < 1e-9 and info.competing and not info.reliable
    assert abs(kmd.eigenvalues_[info.runner_up_index] - 0.9995) < 1e-9
    with pytest.warns(FixedPointWarning, match="compete"):
        fixed = kmd.fixed_point()
    assert rel(fixed, theta_star) < 1e-9                      # k* is still the nearest
    tight = kmd.fixed_point_diagnostics(tol=1e-4)             # 5e-4 apart is not within 1e-4
    assert not tight.competing and tight.reliable and kmd.fixed_point_info_ is info
