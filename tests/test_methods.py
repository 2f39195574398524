"""The one registry of pruning methods, and every consumer reading it (docs/theory.md §8)."""

from __future__ import annotations

import numpy as np
import pytest

from kooplearn_prune.app.experiment_config import ConfigError, parse_config
from kooplearn_prune.koopman import KMD
from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.methods import (
    METHODS,
    ROLES,
    get_method,
    method_mask,
    method_names,
    method_scores,
    recorded_gradient_rows,
)
from kooplearn_prune.pruning import global_mask, magnitude_scores, overlap
from kooplearn_prune.trajectory import Trajectory


def _trajectory(with_gradients: bool = True) -> Trajectory:
    """θ_j = θ* + c·0.8^j·d on a 2-tensor layout, with gradients ``θ_{j-1} − θ_j`` (GD, lr 1)."""
    rng = np.random.default_rng(0)
    layout = ParamLayout(("w", "b"), ((6, 5), (5,)), (True, False))
    fixed, direction = rng.normal(size=layout.size), rng.normal(size=layout.size)
    snapshots = np.stack([fixed + 0.8**j * direction for j in range(12)])
    gradients = np.zeros_like(snapshots)
    gradients[1:] = snapshots[:-1] - snapshots[1:]
    return Trajectory(snapshots, np.arange(12), layout,
                      gradients=gradients if with_gradients else None)


def test_registry_lists_each_method_once_with_what_it_needs():
    assert method_names() == tuple(METHODS)
    assert set(method_names()) >= {"kmp", "kgp", "magnitude", "magnitude_layerwise", "gradient",
                                   "random"}
    assert {n for n, m in METHODS.items() if m.needs_kmd} == {"kmp", "kgp"}
    assert {n for n, m in METHODS.items() if m.needs_gradient} == {"gradient"}
    assert {n for n, m in METHODS.items() if m.scope == "layerwise"} == {"magnitude_layerwise"}
    for method in METHODS.values():
        assert method.theory.startswith("docs/theory.md §") and method.label
        assert method.role in ROLES


def test_every_method_has_a_role_and_the_controls_are_registered():
    assert method_names("koopman") == ("kmp", "kgp")
    assert method_names("baseline") == ("magnitude", "magnitude_layerwise", "gradient")
    assert method_names("control") == ("trend_two_point", "trend_lstsq", "window_mean", "random")
    assert method_names("oracle") == ("oracle",)
    assert sum(len(method_names(r)) for r in ROLES) == len(METHODS)
    assert {n for n, m in METHODS.items() if m.needs_converged} == {"oracle"}
    with pytest.raises(ValueError, match="role='kontrol' is unknown"):
        method_names("kontrol")


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="method='kmpp' is unknown; choose from kmp, kgp"):
        get_method("kmpp")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_scores_a_recorded_window(name):
    traj = _trajectory()
    scores = method_scores(name, traj, kmd=KMD(rank=2).fit(traj) if name in ("kmp", "kgp")
                           else None, converged=traj.last)
    assert scores.shape == (traj.n_params,) and scores.dtype == np.float64
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)
    mask = method_mask(name, scores, 0.5, traj)
    assert int((~mask[:30]).sum()) == 15 and bool(mask[30:].all())  # exact k, biases kept


def test_kmp_on_a_converging_window_picks_the_fixed_points_large_weights():
    traj = _trajectory()
    kmp = method_scores("kmp", traj, kmd=KMD(rank=2).fit(traj))
    fixed = traj.snapshots[0] - (traj.snapshots[0] - traj.snapshots[1]) / 0.2  # θ* in closed form
    expected = global_mask(magnitude_scores(fixed), 0.5, layout=traj.layout)
    assert overlap(method_mask("kmp", kmp, 0.5, traj), expected, traj.layout) == 1.0


def test_gradient_method_averages_the_recorded_gradients_at_the_scored_snapshot():
    traj = _trajectory()
    assert recorded_gradient_rows(traj, 10, n_batches=3) == [9, 10, 11]
    scores = method_scores("gradient", traj, n_batches=1)  # θ_10 ⊙ g(θ_10), g stored in row 11
    np.testing.assert_allclose(scores, np.abs(traj.snapshots[10] * traj.gradients[11]))
    given = np.ones(traj.n_params)
    np.testing.assert_allclose(method_scores("gradient", traj, at=3, gradient=given),
                               np.abs(traj.snapshots[3]))
    with pytest.raises(ValueError, match="needs recorded gradients"):
        method_scores("gradient", _trajectory(with_gradients=False))


def _linear(m: int = 6) -> Trajectory:
    """θ_j = a + b j on a 2-tensor layout: the trend controls extrapolate it exactly."""
    rng = np.random.default_rng(1)
    layout = ParamLayout(("w", "b"), ((6, 5), (5,)), (True, False))
    a, b = rng.normal(size=layout.size), rng.normal(size=layout.size)
    return Trajectory(np.stack([a + b * j for j in range(m + 1)]), np.arange(m + 1), layout)


def test_the_controls_in_closed_form():
    traj = _linear()
    w = traj.snapshots
    a, b = w[0], w[1] - w[0]
    two_point = method_scores("trend_two_point", traj)  # one window length ahead: |2θ_m − θ_0|
    np.testing.assert_allclose(two_point, np.abs(2 * w[6] - w[0]), rtol=1e-12)
    np.testing.assert_allclose(two_point, np.abs(a + 12 * b), rtol=1e-9)
    np.testing.assert_allclose(method_scores("trend_lstsq", traj, horizon=2), np.abs(a + 8 * b),
                               rtol=1e-9)
    np.testing.assert_allclose(method_scores("trend_two_point", traj, horizon=0),
                               method_scores("magnitude", traj))  # h = 0 is GMP of θ_m
    # at=j scores the window θ_0..θ_j, extrapolated j intervals past θ_j by default
    np.testing.assert_allclose(method_scores("trend_lstsq", traj, at=3), np.abs(a + 6 * b),
                               rtol=1e-9)
    np.testing.assert_allclose(method_scores("window_mean", traj), np.abs(a + 3 * b), rtol=1e-12)
    final = np.linspace(-1, 1, traj.n_params)
    np.testing.assert_allclose(method_scores("oracle", traj, converged=final), np.abs(final))


def test_a_control_the_trajectory_cannot_give_names_the_method_and_the_fix():
    traj = _linear()
    for name in ("trend_two_point", "trend_lstsq"):
        with pytest.raises(ValueError, match=rf"method='{name}' needs at least 2 snapshots.*"
                                             r"record a longer window"):
            method_scores(name, traj.window(0, 1))
        with pytest.raises(ValueError, match=f"method='{name}' needs at least 2"):
            method_scores(name, traj, at=0)
    assert method_scores("window_mean", traj.window(0, 1)).shape == (traj.n_params,)
    with pytest.raises(ValueError, match=r"method='oracle' needs the converged weights.*"
                                         r"pass converged="):
        method_scores("oracle", traj)
    with pytest.raises(ValueError, match="converged= must be a flat vector of length 35"):
        method_scores("oracle", traj, converged=np.ones(34))
    with pytest.raises(ValueError, match="the 'gradient' method needs recorded gradients"):
        method_scores("gradient", traj)


def test_the_config_parser_derives_its_choices_from_the_registry():
    config = parse_config({"pruning": {"methods": list(METHODS)}}, source="t.toml")
    assert tuple(config.methods) == tuple(METHODS)
    controls = ["trend_two_point", "trend_lstsq", "window_mean", "oracle"]
    assert tuple(parse_config({"pruning": {"methods": controls}}).methods) == tuple(controls)
    with pytest.raises(ConfigError, match="strategy"):
        parse_config({"pruning": {"methods": ["strategy"]}}, source="t.toml")


@pytest.mark.filterwarnings("ignore::kooplearn_prune.koopman.FixedPointWarning")
def test_the_torch_adapter_accepts_every_registered_method():
    torch = pytest.importorskip("torch")
    from kooplearn_prune.adapters.torch import TorchRecorder, koopman_masks

    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = TorchRecorder(model, record_gradients=True)
    x, y = torch.randn(32, 4, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 3
    with recorder.attach(optimizer):
        for _ in range(8):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    trajectory = recorder.trajectory()
    for name in METHODS:
        if METHODS[name].needs_converged:  # a window cannot give it; the error says so
            with pytest.raises(ValueError, match=f"method='{name}' needs the converged"):
                koopman_masks(trajectory, name, sparsity=0.5, model=model)
        converged = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) \
            if METHODS[name].needs_converged else None
        masks, report = koopman_masks(trajectory, name, sparsity=0.5, model=model,
                                      converged=converged)
        assert report.method == name and report.scope == METHODS[name].scope
        assert set(masks) == {"0.weight", "2.weight"}
    # the adapter's masks are the registry's: the two-point trend, tensor by tensor
    masks, _ = koopman_masks(trajectory, "trend_two_point", sparsity=0.5)
    expected = method_mask("trend_two_point", method_scores("trend_two_point", trajectory), 0.5,
                           trajectory)
    flat = np.concatenate([masks[name].cpu().numpy().ravel() for name in trajectory.layout.names
                           if name in masks])
    prunable = trajectory.layout.prunable_mask()
    np.testing.assert_array_equal(flat, np.asarray(expected)[prunable])


def test_the_config_calls_the_kmd_setting_solver():
    from kooplearn_prune.koopman import ROBUST_SOLVERS, SOLVERS

    assert parse_config({"koopman": {"solver": "gram"}}).kmd_solver == "gram"
    with pytest.raises(ConfigError, match=r"\[koopman\] method is now called solver"):
        parse_config({"koopman": {"method": "gram"}}, source="old.toml")
    with pytest.raises(ConfigError, match="solver"):
        parse_config({"koopman": {"solver": "qr"}})
    assert set(SOLVERS) == {"auto", "svd", "gram"}
    for robust in ROBUST_SOLVERS:  # the noise-robust solvers are one config key away too
        assert parse_config({"koopman": {"solver": robust}}).kmd_solver == robust
