"""The equivalence report executes docs/theory.md §9-§11 on recorded trajectories."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from builders import quadratic_gd_trajectory

from kooplearn_prune.data import load_dataset
from kooplearn_prune.koopman import (
    KMD,
    MAX_GROWING_SHARE,
    STATIONARY_TOL,
    EquivalenceReport,
    equivalence_report,
    kgp_scores,
    kmp_scores,
)
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


def test_quadratic_full_batch_gd_kgp_equals_gradient_pruning():
    traj = quadratic_gd_trajectory(n=6, steps=12)
    kmd = KMD(solver="svd", affine=True).fit(traj)
    report = equivalence_report(traj, kmd=kmd, sparsities=(0.5, 0.34), printer=None)
    assert report.kgp_vs_gradient == {0.5: 1.0, 0.34: 1.0}
    assert report.kgp_vs_update == {0.5: 1.0, 0.34: 1.0}


def test_report_names_momentum_when_kgp_differs():
    traj = quadratic_gd_trajectory(n=6, steps=12)
    traj.metadata = dataclasses.replace(traj.metadata, optimizer="sgd", momentum=0.9)
    traj.gradients[1:] = np.random.default_rng(0).standard_normal(traj.gradients[1:].shape)
    report = equivalence_report(traj, kmd=KMD(solver="svd", affine=True).fit(traj),
                                sparsities=(0.5,), printer=None)
    assert report.kgp_vs_gradient[0.5] < 1.0
    assert any(r.startswith("momentum 0.9: the update follows the velocity")
               for r in report.reasons)
    assert any("mini-batch noise" in r for r in report.reasons)


@pytest.mark.parametrize("kind, name", [("adam", "Adam"), ("adamw", "AdamW")])
def test_the_report_decides_what_adam_means(kind, name):
    """The record states betas; the report (not the producer) says it is no velocity."""
    traj = quadratic_gd_trajectory(n=6, steps=12)
    traj.metadata = TrainingMetadata(optimizer=kind, lr=0.1, betas=(0.9, 0.999))
    assert traj.metadata.momentum == 0.0  # no fake momentum in the record
    traj.gradients[1:] = np.random.default_rng(0).standard_normal(traj.gradients[1:].shape)
    report = equivalence_report(traj, kmd=KMD(solver="svd", affine=True).fit(traj),
                                sparsities=(0.5,), printer=None)
    adam = [r for r in report.reasons if r.startswith(f"{name} with betas[0]=0.9:")]
    assert len(adam) == 1 and "normalized running mean" in adam[0]
    assert "not the velocity" in adam[0]
    assert not any(r.startswith("momentum") for r in report.reasons)
    assert "momentum is undone" not in report.text  # heavy-ball algebra does not apply


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



def test_report_shows_momentum_is_the_gap(digits_end_of_training, capsys):
    """With heavy-ball SGD the snapshots give the recorded gradient back once momentum is undone."""
    from kooplearn_prune.koopman.report import _momentum_free_gradient

    traj = digits_end_of_training
    j = traj.n_snapshots - 2
    recovered = _momentum_free_gradient(traj, j)
    g = traj.gradients[j + 1]
    # -(d_j - mu d_(j-1)) = lr * g_j up to float32 rounding of the snapshots
    lr = traj.metadata.lr
    assert np.corrcoef(recovered, lr * g)[0, 1] > 0.99
    equivalence_report(traj, sparsities=(0.9,))
    assert "give the gradient back once momentum is undone" in capsys.readouterr().out
    plain = Trajectory(traj.snapshots, traj.steps, traj.layout, gradients=traj.gradients,
                       metadata=dataclasses.replace(traj.metadata, momentum=0.0))
    assert _momentum_free_gradient(plain, j) is None


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
