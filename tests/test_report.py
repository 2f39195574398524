"""The equivalence report executes docs/theory.md §9-§11 on recorded trajectories."""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pytest
from builders import quadratic_gd_trajectory

from kooplearn_prune.data import load_dataset
from kooplearn_prune.koopman import (
    KMD,
    MAX_GROWING_SHARE,
    STATIONARY_TOL,
    EquivalenceReport,
    FixedPointWarning,
    equivalence_report,
    kgp_scores,
    kmp_scores,
    kmp_stability,
)
from kooplearn_prune.koopman.report_checks import claim_b_check, momentum_identity
from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.metadata import TrainingMetadata
from kooplearn_prune.nn import MLP
from kooplearn_prune.optim import SGD
from kooplearn_prune.pruning import global_mask, gradient_scores_from, magnitude_scores, overlap
from kooplearn_prune.recording import TrajectoryRecorder
from kooplearn_prune.training import Trainer
from kooplearn_prune.trajectory import Trajectory


def test_converged_window_reports_identical_masks():
    rng = np.random.default_rng(1)
    theta = rng.standard_normal(500).astype(np.float32)
    traj = Trajectory(np.tile(theta, (5, 1)), layout=ParamLayout(("w",), ((25, 20),), (True,)))
    lines = []
    report = equivalence_report(traj, printer=lines.append)
    assert isinstance(report, EquivalenceReport)
    assert all(v == 1.0 for v in report.kmp_vs_magnitude.values())
    assert report.distance_from_one < 1e-10
    assert report.kgp_vs_gradient is None
    assert "Step 1." in lines[0] and "Step 5." in lines[0]
    assert report.to_dict()["kmp_vs_magnitude"]["0.9"] == 1.0
    assert report.mask_stability is None and report.trusted is None   # 5 snapshots: too few
    assert "mask stability not measured: 5 snapshots" in lines[0]


def test_quadratic_full_batch_gd_kgp_equals_gradient_pruning():
    traj = quadratic_gd_trajectory(n=6, steps=12)
    kmd = KMD(solver="svd", affine=True).fit(traj)
    report = equivalence_report(traj, kmd=kmd, sparsities=(0.5, 0.34), printer=None)
    assert report.kgp_vs_gradient == {0.5: 1.0, 0.34: 1.0}
    assert report.kgp_vs_update == {0.5: 1.0, 0.34: 1.0}


def _sgd_quadratic(momentum=0.0, noise=0.0, steps=30, n=12, lr=0.1, seed=0,
                   **metadata) -> Trajectory:
    """SGD (heavy-ball when momentum > 0) on ½θᵀHθ − bᵀθ with Gaussian gradient noise.

    ``v_j = μ v_{j−1} + g_j``, ``θ_{j+1} = θ_j − lr v_j``; ``gradients[j + 1] = g_j`` (the
    recorder's convention). ``metadata`` overrides the record (optimizer "sgd", lr, momentum,
    every=1 by default)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    h = q @ np.diag(np.linspace(0.5, 3.0, n)) @ q.T
    b, theta, v = rng.standard_normal(n), rng.standard_normal(n), np.zeros(n)
    snapshots, gradients = [theta.copy()], [np.zeros(n)]
    for _ in range(steps):
        g = h @ theta - b + noise * rng.standard_normal(n)
        v = momentum * v + g
        theta = theta - lr * v
        snapshots.append(theta.copy())
        gradients.append(g)
    record = {"optimizer": "sgd", "lr": lr, "momentum": momentum, "every": 1, **metadata}
    return Trajectory(np.array(snapshots), np.arange(steps + 1),
                      ParamLayout(("w",), ((3, n // 3),), (True,)), gradients=np.array(gradients),
                      metadata=TrainingMetadata(**record))


def _report(traj: Trajectory, **kw) -> EquivalenceReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FixedPointWarning)
        return equivalence_report(traj, printer=None, **kw)


def test_heavy_ball_sgd_reports_the_momentum_identity_with_its_number():
    traj = _sgd_quadratic(momentum=0.9, noise=1.0, steps_per_epoch=10)
    report = _report(traj, sparsities=(0.5, 0.75))
    assert report.kgp_vs_gradient[0.75] < 1.0
    identity = report.momentum_identity
    assert identity["cosine"] > 0.999999 and identity["implied_lr"] == pytest.approx(0.1)
    heavy = [r for r in report.reasons if r.startswith("heavy-ball SGD (momentum 0.9, stride 1)")]
    assert len(heavy) == 1 and f"cosine {identity['cosine']:.5f}" in heavy[0]
    p = report.headline_sparsity
    assert p == 0.75 and report.momentum_free_vs_gradient[p] == 1.0  # the rule, undone exactly
    assert f"into {report.momentum_free_vs_gradient[p]:.4f}" in heavy[0]
    # momentum is named as a cause of KGP's gap exactly when undoing it on the KMD helps
    gain = report.kgp_momentum_free_vs_gradient[p] - report.kgp_vs_gradient[p]
    explains = [r for r in report.reasons if r.startswith("momentum explains")]
    does_not = [r for r in report.reasons if r.startswith("momentum does not measurably")]
    assert (len(explains), len(does_not)) == ((1, 0) if gain >= 0.05 else (0, 1))


def test_sgd_without_momentum_names_no_momentum():
    report = _report(_sgd_quadratic(momentum=0.0, noise=1.0, steps_per_epoch=10),
                     sparsities=(0.5,))
    assert report.kgp_vs_gradient[0.5] < 1.0
    assert report.update_vs_gradient == {0.5: 1.0}  # plain SGD: the update is −lr·g exactly
    assert report.momentum_identity is None and "heavy-ball" not in report.text
    assert not any("momentum" in r for r in report.reasons)
    assert not any("recorded settings" in r for r in report.reasons)


def test_settings_that_do_not_describe_the_steps_are_reported_as_such():
    traj = quadratic_gd_trajectory(n=6, steps=12)  # GD snapshots, gradients replaced by noise
    traj.metadata = dataclasses.replace(traj.metadata, optimizer="sgd")
    traj.gradients[1:] = np.random.default_rng(0).standard_normal(traj.gradients[1:].shape)
    report = _report(traj, kmd=KMD(solver="svd", affine=True).fit(traj), sparsities=(0.5,))
    u = report.update_vs_gradient[0.5]
    assert u < 1.0
    assert any(r.startswith("the recorded settings (plain SGD, stride 1)") and f"{u:.4f}" in r
               for r in report.reasons)
    traj.metadata = dataclasses.replace(traj.metadata, momentum=0.9)  # not what was run
    report = _report(traj, kmd=KMD(solver="svd", affine=True).fit(traj), sparsities=(0.5,))
    assert report.momentum_identity["cosine"] < 0.99
    assert any("do not follow the heavy-ball rule" in r for r in report.reasons)
    assert not any(r.startswith(("heavy-ball SGD", "momentum ")) for r in report.reasons)


@pytest.mark.parametrize("change, blocker", [
    ({"nesterov": True}, "Nesterov"), ({"every": 2}, "snapshot stride every=2"),
    ({"weight_decay": 1e-3}, "weight decay"), ({"extra": {"dampening": 0.1}}, "dampening")])
def test_the_momentum_identity_is_only_applied_where_it_holds(change, blocker):
    traj = _sgd_quadratic(momentum=0.9, noise=1.0, **change)
    report = _report(traj, sparsities=(0.5,))
    assert report.momentum_identity is None
    assert f"heavy-ball identity not checked: {blocker}" in report.text
    assert not any(r.startswith(("heavy-ball SGD", "momentum ")) for r in report.reasons)


@pytest.mark.parametrize("kind, name", [("adam", "Adam"), ("adamw", "AdamW")])
def test_adam_is_named_for_its_preconditioning_never_momentum(kind, name):
    """The record states betas; the report says the step is m̂/(√v̂ + ε), not a velocity."""
    traj = quadratic_gd_trajectory(n=6, steps=12)
    traj.metadata = TrainingMetadata(optimizer=kind, lr=0.1, betas=(0.9, 0.999),
                                     weight_decay=0.01 if kind == "adamw" else 0.0)
    assert traj.metadata.momentum == 0.0  # no fake momentum in the record
    traj.gradients[1:] = np.random.default_rng(0).standard_normal(traj.gradients[1:].shape)
    report = _report(traj, kmd=KMD(solver="svd", affine=True).fit(traj), sparsities=(0.5,))
    adam = [r for r in report.reasons if r.startswith(f"{name} (betas 0.9, 0.999):")]
    assert len(adam) == 1 and "per-coordinate preconditioning" in adam[0]
    assert "m_hat / (sqrt(v_hat) + eps)" in adam[0]
    assert f"{report.update_vs_gradient[0.5]:.4f}" in adam[0]
    assert ("decoupled weight decay" in adam[0]) is (kind == "adamw")
    assert "momentum" not in report.text and report.momentum_identity is None


@pytest.mark.parametrize("steps_per_epoch, batches", [(1, "full-batch"), (10, "mini-batch"),
                                                      (None, "unknown")])
def test_noise_is_named_only_when_the_record_says_mini_batches(steps_per_epoch, batches):
    report = _report(_sgd_quadratic(noise=1.0, steps_per_epoch=steps_per_epoch),
                     sparsities=(0.5,))
    assert report.kgp_vs_gradient[0.5] < 1.0 and report.batches == batches
    cosine = f"mean cosine {report.gradient_cosine:.3f}"
    mini = [r for r in report.reasons if r.startswith("mini-batches")]
    unknown = [r for r in report.reasons if r.startswith("batches: unknown")]
    assert len(mini) == (batches == "mini-batch") and len(unknown) == (batches == "unknown")
    assert all(cosine in r for r in mini + unknown)
    if batches == "full-batch":
        assert not any("batch" in r or "noise" in r for r in report.reasons)


def test_claim_b_counts_the_weights_that_change_sides_and_their_bands():
    """|θ| = 0.1..1.0, δ = +0.25 on the four smallest: one disputed weight lies in its own band
    |δ_i|, the other changes sides only because the threshold moved (docs/theory.md §9)."""
    last = np.arange(1, 11) / 10
    delta = np.where(last < 0.45, 0.25, 0.0)
    kmp, gmp = np.abs(last + delta), np.abs(last)
    masks = [{0.5: global_mask(s, 0.5)} for s in (kmp, gmp)]
    counts = claim_b_check(kmp, masks[0], gmp, masks[1], delta, None)[0.5]
    assert counts["changed_sides"] == 2 and counts["within_own_band"] == 1
    assert counts["within_shifted_band"] == 2
    assert counts["threshold"] == 0.5 and counts["threshold_shift"] == pytest.approx(0.1)
    assert counts["max_abs_delta"] == 0.25


def test_the_report_quotes_claim_b_as_measured():
    rng = np.random.default_rng(2)
    theta_star, d = rng.standard_normal(300), rng.standard_normal(300)
    snapshots = np.stack([theta_star + 0.5**j * d for j in range(6)])
    traj = Trajectory(snapshots, layout=ParamLayout(("w",), ((15, 20),), (True,)))
    report = _report(traj, kmd=KMD(solver="svd").fit(traj))
    for p, counts in report.claim_b.items():
        expected = global_mask(np.abs(theta_star), p) != global_mask(np.abs(snapshots[-1]), p)
        assert counts["changed_sides"] == int(expected.sum())
        assert counts["within_shifted_band"] == counts["changed_sides"]  # Claim B's bound holds
        assert counts["within_own_band"] <= counts["changed_sides"]
    line = [r for r in report.reasons if r.startswith("KMP vs magnitude")]
    worst = max(report.claim_b.values(), key=lambda c: c["changed_sides"])
    assert worst["changed_sides"] > 0
    assert len(line) == 1 and f"{worst['changed_sides']} weights change sides" in line[0]
    assert f"{worst['within_own_band']} lie within |delta_i|" in line[0]


def test_bad_input():
    with pytest.raises(TypeError, match="Trajectory"):
        equivalence_report(np.ones((4, 3)), printer=None)
    traj = quadratic_gd_trajectory()
    with pytest.raises(ValueError, match="sparsities"):
        equivalence_report(traj, sparsities=(1.0,), printer=None)


@pytest.fixture(scope="module")
def digits_end_of_training():
    """An MLP trained on digits, with the last epoch recorded every step (gradients too)."""
    data = load_dataset("digits")
    model = MLP([64, 64, 10], seed=0)
    recorder = TrajectoryRecorder(model, start=29, unit="epoch", record_gradients=True)
    Trainer(model, SGD(model, lr=0.05, momentum=0.9), callbacks=[recorder],
            progress=False).fit(data, epochs=30, batch_size=32, seed=0)
    return recorder.trajectory()


def test_digits_kmp_matches_magnitude_at_the_end_of_training(digits_end_of_training):
    traj = digits_end_of_training
    kmd = KMD().fit(traj)
    kmp = kmp_scores(kmd)
    a = global_mask(kmp, 0.9, layout=traj.layout)
    b = global_mask(magnitude_scores(traj.last), 0.9, layout=traj.layout)
    assert overlap(a, b, traj.layout) >= 0.99
    report = equivalence_report(traj, kmd=kmd, printer=print)
    assert report.kmp_vs_magnitude[0.9] >= 0.99
    # the sub-window refits agree with the window's mask, and the report says so with the number
    stability = kmp_stability(traj, report.headline_sparsity, kmd_kwargs={"rank": None})
    assert report.mask_stability == pytest.approx(stability.mask_stability, abs=1e-12)
    assert report.trusted is stability.trusted is True
    assert f"mean overlap with this window's {report.mask_stability:.3f}" in report.text
    # KGP versus gradient pruning is reported, not asserted (Claim D): print it for the log.
    print("KGP vs gradient overlap:", report.kgp_vs_gradient)
    # the reported numbers are the overlaps of KGP's mask at snapshot j with the mask of
    # |theta_j * g_j|, g_j the recorded gradient at theta_j (stored with snapshot j + 1)
    j = traj.n_snapshots - 2
    kgp = kgp_scores(kmd, at=j)
    gradient = gradient_scores_from(traj.snapshots[j], traj.gradients[j + 1])
    expected = {p: overlap(global_mask(kgp, p, layout=traj.layout),
                           global_mask(gradient, p, layout=traj.layout), traj.layout)
                for p in (0.5, 0.75, 0.9, 0.95, 0.97)}
    assert report.kgp_vs_gradient == pytest.approx(expected, abs=1e-12)



def test_digits_heavy_ball_identity_and_every_reason_carries_a_number(digits_end_of_training):
    """Heavy-ball SGD with mini-batches: the snapshots give the recorded gradient back once the
    update rule is undone, and each printed reason quotes a measured number."""
    traj = digits_end_of_training
    j = traj.n_snapshots - 2
    identity = momentum_identity(traj, j)
    lr = traj.metadata.lr
    assert identity["cosine"] > 0.99 and identity["implied_lr"] == pytest.approx(lr, rel=0.01)
    expected = lr * traj.gradients[j + 1].astype(np.float64)  # up to float32 snapshots
    assert np.linalg.norm(identity["update"] - expected) < 0.02 * np.linalg.norm(expected)
    report = _report(traj, sparsities=(0.9,))
    assert report.batches == "mini-batch" and report.momentum_identity is not None
    assert report.reasons and all(re.search(r"\d\.\d", r) for r in report.reasons)
    plain = Trajectory(traj.snapshots, traj.steps, traj.layout, gradients=traj.gradients,
                       metadata=dataclasses.replace(traj.metadata, momentum=0.0))
    assert _report(plain, sparsities=(0.9,)).momentum_identity is None


def _growing_mode_trajectory(amplitude: float) -> Trajectory:
    """θ_t = θ* + amplitude·1.03^t u + 0.5^t v: one stationary mode, one growing, one decaying."""
    rng = np.random.default_rng(3)
    n, m = 200, 12
    u, v = np.linalg.qr(rng.standard_normal((n, 2)))[0].T * np.sqrt(n)
    theta_star = rng.standard_normal(n)
    t = np.arange(m + 1.0)[:, None]
    snapshots = theta_star + amplitude * 1.03**t * u + 0.5**t * v
    return Trajectory(snapshots, layout=ParamLayout(("w",), ((10, 20),), (True,)))


@pytest.mark.parametrize("amplitude, reliable", [(3e-3, True), (3e-2, False)])
def test_report_and_fixed_point_use_the_same_thresholds(amplitude, reliable):
    """'The stationary mode is uncertain' exactly when FixedPointInfo.reliable is False."""
    traj = _growing_mode_trajectory(amplitude)
    kmd = KMD(solver="svd").fit(traj)
    info = kmd.fixed_point_info_
    assert info.distance_from_one < 1e-9 and info.n_growing == 1
    if reliable:   # a share between the old report threshold (1e-3) and MAX_GROWING_SHARE
        assert 1e-3 < info.growing_amplitude_share < MAX_GROWING_SHARE
    else:
        assert info.growing_amplitude_share > MAX_GROWING_SHARE
    assert (info.tol, info.max_growing_share) == (STATIONARY_TOL, MAX_GROWING_SHARE)
    assert info.reliable is reliable
    report = equivalence_report(traj, kmd=kmd, sparsities=(0.5,), printer=None)
    uncertain = [r for r in report.reasons if "stationary mode is uncertain" in r]
    assert bool(uncertain) is not reliable
    assert ("warning:" in report.text) is not reliable    # the FixedPointWarning, printed once
    assert report.growing_amplitude_share == info.growing_amplitude_share
    assert kmd.fixed_point_info_ is info                   # the report queried, never stored
