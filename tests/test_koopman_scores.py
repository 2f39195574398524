"""koopman/scores.py: KMP, KGP, horizon scores and the controls (docs/theory.md §9-§12)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from builders import gd_quadratic
from hypothesis import given, settings
from hypothesis import strategies as st

from kooplearn_prune.backend import asarray, namespace_of, to_numpy
from kooplearn_prune.koopman import (
    KMD,
    FixedPointWarning,
    NotFittedError,
    horizon_scores,
    kgp_scores,
    kmp_scores,
    koopman_gradient,
)
from kooplearn_prune.koopman.scores import trend_scores, window_mean_scores
from kooplearn_prune.pruning.masks import global_mask
from kooplearn_prune.trajectory import Trajectory

SPARSITIES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.97)


def bottom_k(scores, k):
    """The set of the k smallest scores, ties broken by index (stable sort)."""
    return set(np.argsort(to_numpy(scores), kind="stable")[:k].tolist())


# --------------------------------------------------------------------------- Claim A (KMP = GMP)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(5, 2000), m=st.integers(2, 12),
       sparsity=st.floats(0.0, 0.99), solver=st.sampled_from(["svd", "gram"]))
def test_claim_a_kmp_mask_equals_magnitude_mask(seed, n, m, sparsity, solver):
    theta_bar = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    kmd = KMD(solver=solver).fit(np.tile(theta_bar, (m + 1, 1)))
    scores = kmp_scores(kmd)
    magnitude = np.abs(theta_bar)
    for p in (sparsity, *SPARSITIES):
        np.testing.assert_array_equal(global_mask(scores, p), global_mask(magnitude, p))
    k = int(round(sparsity * n))
    assert bottom_k(scores, k) == bottom_k(magnitude, k)


def test_claim_a_on_every_backend(xp):
    for seed in range(4):
        theta_bar = np.random.default_rng(seed).standard_normal(3000).astype(np.float32)
        snapshots = asarray(np.tile(theta_bar, (6, 1)), xp=xp)
        scores = kmp_scores(KMD(solver="gram").fit(snapshots))
        assert namespace_of(scores) is xp and scores.dtype == xp.float64
        assert scores.shape == (3000,)
        for p in SPARSITIES:
            np.testing.assert_array_equal(to_numpy(global_mask(scores, p)),
                                          global_mask(np.abs(theta_bar), p))


# --------------------------------------------------------------------------- Claim C (KGP = GP)
def _check_kgp_equals_gradient_pruning(kmd, snapshots, hmat, b, eta, sparsities):
    m = snapshots.shape[0] - 1
    for j in range(m + 1):
        grad = hmat @ snapshots[j] - b
        weight_grad = kgp_scores(kmd, at=j)
        pure = kgp_scores(kmd, at=j, kind="gradient")
        # η is a positive scale: ĝ_j = η ∇L(θ_j) exactly, so the scores agree up to η
        np.testing.assert_allclose(weight_grad, eta * np.abs(snapshots[j] * grad),
                                   rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(pure, eta * np.abs(grad), rtol=1e-7, atol=1e-12)
        for p in sparsities:
            np.testing.assert_array_equal(global_mask(weight_grad, p),
                                          global_mask(np.abs(snapshots[j] * grad), p))
            np.testing.assert_array_equal(global_mask(pure, p), global_mask(np.abs(grad), p))


def test_claim_c_kgp_is_gradient_pruning_fully_excited_affine():
    rng = np.random.default_rng(7)
    lams = [0.35, 0.5, 0.62, 0.74, 0.85, 0.93, 0.97, 0.3]
    eta = 0.1
    snapshots, hmat, b, _ = gd_quadratic(8, 24, lams, eta, rng)
    kmd = KMD(solver="svd", affine=True).fit(snapshots)
    _check_kgp_equals_gradient_pruning(kmd, snapshots, hmat, b, eta,
                                       [k / 8 for k in range(8)])
    # default `at` is the last snapshot
    np.testing.assert_array_equal(kgp_scores(kmd), kgp_scores(kmd, at=24))


@pytest.mark.parametrize("solver", ["svd", "gram"])
def test_claim_c_kgp_is_gradient_pruning_few_directions_excited(solver):
    rng = np.random.default_rng(8)
    lams = np.concatenate([[0.3, 0.55, 0.8, 0.9], rng.uniform(0.1, 0.95, 146)])
    eta = 0.05
    snapshots, hmat, b, _ = gd_quadratic(150, 12, lams, eta, rng, excited=4)
    kmd = KMD(solver=solver).fit(snapshots)
    _check_kgp_equals_gradient_pruning(kmd, snapshots, hmat, b, eta, SPARSITIES)


def test_koopman_gradient_drops_the_stationary_mode(xp):
    rng = np.random.default_rng(9)
    snapshots, hmat, b, _ = gd_quadratic(40, 10, np.linspace(0.2, 0.9, 40), 0.1, rng, excited=3)
    kmd = KMD().fit(asarray(snapshots, xp=xp))
    g = koopman_gradient(kmd, at=4)
    assert namespace_of(g) is xp and g.dtype == xp.float64
    np.testing.assert_allclose(to_numpy(g), 0.1 * (hmat @ snapshots[4] - b), rtol=1e-7,
                               atol=1e-12)
    scores = kgp_scores(kmd, at=4)
    assert namespace_of(scores) is xp and scores.shape == (40,)


# --------------------------------------------------------------------------- horizon
def test_horizon_scores_run_from_magnitude_to_kmp(xp):
    rng = np.random.default_rng(10)
    snapshots, _, _, theta_star = gd_quadratic(60, 10, np.linspace(0.95, 0.3, 60), 0.1, rng,
                                               excited=3)
    kmd = KMD().fit(asarray(snapshots, xp=xp))
    now = to_numpy(horizon_scores(kmd, 0))
    np.testing.assert_allclose(now, np.abs(snapshots[-1]), rtol=1e-9)
    np.testing.assert_allclose(to_numpy(horizon_scores(kmd, math.inf)),
                               to_numpy(kmp_scores(kmd)), rtol=0, atol=0)
    np.testing.assert_allclose(to_numpy(kmp_scores(kmd)), np.abs(theta_star), rtol=1e-9)
    later = to_numpy(horizon_scores(kmd, 2.5))
    np.testing.assert_allclose(later, np.abs(to_numpy(kmd.predict(12.5))), rtol=0, atol=0)
    far = to_numpy(horizon_scores(kmd, 500))
    np.testing.assert_allclose(far, np.abs(theta_star), rtol=1e-9)
    # the path in between is not the fixed point yet: horizons are a real family
    assert np.max(np.abs(later - np.abs(theta_star))) > 1e-3


# --------------------------------------------------------------------------- controls (§12)
def _linear_window(m=7, n=40, seed=4):
    """θ_j = a + b j: a straight line, which a trend extrapolates exactly."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(n), rng.standard_normal(n) * 0.1
    return np.stack([a + b * j for j in range(m + 1)]), a, b


def test_trend_extrapolation_is_exact_on_a_linear_trajectory(xp):
    snapshots, a, b = _linear_window()
    m = snapshots.shape[0] - 1
    window = asarray(snapshots, xp=xp)
    for fit in ("two_point", "lstsq"):
        default = trend_scores(window, fit=fit)
        assert namespace_of(default) is xp and default.dtype == xp.float64
        np.testing.assert_allclose(to_numpy(default), np.abs(a + b * 2 * m), rtol=1e-12)
        np.testing.assert_allclose(to_numpy(trend_scores(window, 3.5, fit=fit)),
                                   np.abs(a + b * (m + 3.5)), rtol=1e-12)
    # the audit's control: one window length ahead is |2θ_m − θ_0|
    np.testing.assert_allclose(to_numpy(trend_scores(window)),
                               np.abs(2 * snapshots[-1] - snapshots[0]), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(trend_scores(window, 0)), np.abs(snapshots[-1]))
    np.testing.assert_allclose(to_numpy(window_mean_scores(window)),
                               np.abs(a + b * m / 2), rtol=1e-12)


def test_on_a_geometric_trajectory_kmp_is_exact_and_the_trend_is_not():
    rng = np.random.default_rng(5)
    n, m = 50, 10
    theta_star, d = rng.standard_normal(n), rng.standard_normal(n)
    snapshots = np.stack([theta_star + 0.7**j * d for j in range(m + 1)])
    np.testing.assert_allclose(kmp_scores(KMD(solver="svd").fit(snapshots)),
                               np.abs(theta_star), rtol=1e-8)
    future = theta_star + 0.7 ** (2 * m) * d  # where training really is one window later
    for fit in ("two_point", "lstsq"):
        trend = trend_scores(snapshots, fit=fit)
        assert np.max(np.abs(trend - np.abs(future))) > 0.1  # a chord, not the curve
    ref = global_mask(np.abs(theta_star), 0.5)
    assert not np.array_equal(global_mask(trend_scores(snapshots), 0.5), ref)


def test_lstsq_trend_matches_numpy_polyfit_on_a_curved_window():
    rng = np.random.default_rng(6)
    snapshots = rng.standard_normal((9, 30)).cumsum(axis=0)
    slope, intercept = np.polyfit(np.arange(9.0), snapshots, 1)
    expected = np.abs(intercept + slope * (8 + 2.0))
    np.testing.assert_allclose(trend_scores(snapshots, 2.0, fit="lstsq"), expected, rtol=1e-10)
    traj = Trajectory(snapshots)  # a Trajectory is accepted as well as its array
    np.testing.assert_allclose(trend_scores(traj, 2.0, fit="lstsq"), expected, rtol=1e-10)


@pytest.mark.parametrize("call, message", [
    (lambda w: trend_scores(w[:1]), "at least 2 snapshots"),
    (lambda w: trend_scores(w, -1.0), "h="),
    (lambda w: trend_scores(w, math.inf), "finite"),
    (lambda w: trend_scores(w, True), "h="),
    (lambda w: trend_scores(w, fit="quadratic"), "fit="),
    (lambda w: trend_scores(w[0]), "shape"),
    (lambda w: window_mean_scores(w[0]), "shape"),
])
def test_bad_control_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(_linear_window()[0])


# --------------------------------------------------------------------------- bad input
def _fitted():
    rng = np.random.default_rng(0)
    snapshots, _, _, _ = gd_quadratic(20, 8, np.linspace(0.3, 0.9, 20), 0.1, rng, excited=2)
    return KMD().fit(snapshots)


@pytest.mark.parametrize("score", [kmp_scores, kgp_scores, koopman_gradient,
                                   lambda kmd: horizon_scores(kmd, 1.0)])
def test_scores_need_a_fitted_kmd(score):
    with pytest.raises(NotFittedError, match="fit"):
        score(KMD())
    with pytest.raises(TypeError, match="KMD"):
        score(np.zeros((3, 4)))


@pytest.mark.parametrize("call, message", [
    (lambda kmd: kgp_scores(kmd, kind="snip"), "kind"),
    (lambda kmd: kgp_scores(kmd, at=-1), "at"),
    (lambda kmd: kgp_scores(kmd, at=np.array([1.0, 2.0])), "one snapshot index"),
    (lambda kmd: koopman_gradient(kmd, at=float("nan")), "at"),
    (lambda kmd: horizon_scores(kmd, -1.0), "h="),
    (lambda kmd: horizon_scores(kmd, float("nan")), "h="),
    (lambda kmd: horizon_scores(kmd, "far"), "h="),
])
def test_bad_score_arguments(call, message):
    kmd = _fitted()
    with pytest.raises(ValueError, match=message):
        call(kmd)


def test_kmp_warns_or_raises_without_a_stationary_mode():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((30, 2)))[0]
    t = np.arange(9.0)[:, None]
    snapshots = 0.6**t * basis[:, 0] + 0.2**t * basis[:, 1]     # decays to 0: no λ near 1
    kmd = KMD().fit(snapshots)
    with pytest.warns(FixedPointWarning, match="unreliable"):
        scores = kmp_scores(kmd)
    assert scores.shape == (30,)
    with pytest.raises(ValueError, match="unreliable"):
        kmp_scores(kmd, strict=True)


def test_scores_drive_the_kmd_through_its_public_surface():
    """scores.py uses no underscored name of the KMD (its attributes, methods or module)."""
    import ast

    from kooplearn_prune.koopman import scores

    tree = ast.parse(Path(scores.__file__).read_text(encoding="utf-8"))
    private_attributes = sorted({node.attr for node in ast.walk(tree)
                                 if isinstance(node, ast.Attribute) and node.attr.startswith("_")
                                 and not node.attr.startswith("__")})
    private_imports = sorted({alias.name for node in ast.walk(tree)
                              if isinstance(node, ast.ImportFrom)
                              for alias in node.names if alias.name.startswith("_")})
    private_names = sorted({node.value for node in ast.walk(tree)   # hasattr(kmd, "_x")
                            if isinstance(node, ast.Constant) and isinstance(node.value, str)
                            and node.value.startswith("_") and node.value[1:].isidentifier()
                            and not node.value.startswith("__")})
    assert private_attributes == [] and private_imports == [] and private_names == []
