"""Iterative pruning with rewinding: native trainer and PyTorch adapter (docs/theory.md §8, §13)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kooplearn_prune.data import load_digits
from kooplearn_prune.iterative import iterative_pruning
from kooplearn_prune.layout import layout_of
from kooplearn_prune.nn import MLP
from kooplearn_prune.optim import SGD
from kooplearn_prune.pruning import global_mask, magnitude_scores, n_to_prune
from kooplearn_prune.pruning.levels import level_sparsity, prune_remaining
from kooplearn_prune.recording import TrajectoryRecorder
from kooplearn_prune.training import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::kooplearn_prune.koopman.FixedPointWarning")

EPOCHS, BATCH = 2, 50          # 300 samples: 6 steps per epoch, 12 per run
TOTAL = EPOCHS * 6


@pytest.fixture(scope="module")
def digits():
    return load_digits(n_train=300, n_test=200)


def sgd(model):
    return SGD(model, lr=0.05, momentum=0.9)


def flat(model):
    return layout_of(model).flatten([p.data for _, p in model.named_parameters()])


def dense_reference(digits, rewind_step):
    """An independent dense run: θ at ``rewind_step`` and at the end, as its own recorder saw."""
    model = MLP([64, 16, 10], seed=0)
    recorder = TrajectoryRecorder(model, start=rewind_step, every=TOTAL - rewind_step, stop=TOTAL)
    Trainer(model, sgd(model), callbacks=[recorder], progress=False).fit(
        digits, EPOCHS, BATCH, seed=0, eval_data=None)
    traj = recorder.trajectory()
    assert list(traj.steps) == [rewind_step, TOTAL]
    return np.array(traj.snapshots[0]), np.array(traj.snapshots[1]), traj.layout


# --------------------------------------------------------------------------- the level rule
def test_prune_remaining_is_exact_k_and_never_revives():
    rng = np.random.default_rng(0)
    layout = layout_of(MLP([6, 5, 3], seed=0))
    keep = None
    for level in range(1, 5):
        scores = rng.random(layout.size)
        new = prune_remaining(scores, level_sparsity(0.3, level), keep, layout)
        k = n_to_prune(level_sparsity(0.3, level), layout.n_prunable)
        assert int((~new).sum()) == k
        if keep is not None:
            assert not np.any(new & ~keep)
            # the survivors lost exactly their lowest scores
            alive = keep & layout.prunable_mask()
            lost = alive & ~new
            assert scores[lost].max() <= scores[alive & new].min()
        keep = new
    with pytest.raises(ValueError, match="must not fall below"):
        prune_remaining(rng.random(layout.size), 0.1, keep, layout)


# --------------------------------------------------------------------------- native
def test_levels_have_exact_cumulative_sparsity_and_pruned_weights_stay_pruned(digits):
    model = MLP([64, 16, 10], seed=0)
    result = iterative_pruning(model, sgd, digits, levels=3, fraction=0.3, method="kmp",
                               epochs=EPOCHS, batch_size=BATCH)
    layout = result.layout
    assert [r.level for r in result.levels] == [0, 1, 2, 3]
    previous = np.ones(layout.size, bool)
    for record, mask in zip(result.levels[1:], result.masks):
        target = 1 - 0.7 ** record.level
        k = n_to_prune(target, layout.n_prunable)
        assert record.sparsity == k / layout.n_prunable
        assert record.n_kept == layout.n_prunable - k == int((mask & layout.prunable_mask()).sum())
        assert not np.any(mask & ~previous)           # nothing pruned before comes back
        assert 0.0 < record.overlap_gmp <= 1.0 and 0.0 <= record.accuracy <= 1.0
        previous = mask
    final = np.concatenate([np.asarray(p.mask if p.mask is not None else np.ones(p.shape, bool))
                            .reshape(-1) for _, p in model.named_parameters()])
    np.testing.assert_array_equal(final, result.masks[-1])
    assert np.all(flat(model)[~result.masks[-1]] == 0)
    rows = result.to_rows()
    assert rows[0]["overlap_gmp"] is None and rows[3]["sparsity"] == result.levels[3].sparsity
    assert "overlap GMP" in result.table() and len(result.table().splitlines()) == 5


@pytest.mark.parametrize("rewind", [7, "init"])
def test_rewind_restores_the_recorded_step_bit_for_bit(digits, rewind):
    step = 0 if rewind == "init" else rewind
    theta_r, theta_end, layout = dense_reference(digits, step)
    seen = []

    def factory(model):  # called right after each rewind, before retraining
        seen.append(flat(model).copy())
        return sgd(model)

    result = iterative_pruning(MLP([64, 16, 10], seed=0), factory, digits, levels=2,
                               fraction=0.2, method="magnitude", rewind=rewind, epochs=EPOCHS,
                               batch_size=BATCH)
    assert result.rewind_step == step and step in result.recorded_steps
    assert result.recorded_steps[0] == min(step, TOTAL - 6)   # one recorder, reaching back
    assert np.array_equal(result.rewind_point, theta_r)
    for rewound, mask in zip(seen[1:], result.masks):
        assert np.array_equal(rewound[mask], theta_r[mask])   # survivors: bit for bit
        assert np.all(rewound[~mask] == 0)
    # magnitude: level 1 is global magnitude pruning of the trained dense weights
    expected = global_mask(magnitude_scores(theta_end), 0.2, layout=layout)
    np.testing.assert_array_equal(result.masks[0], expected)
    assert result.levels[1].overlap_gmp == 1.0


def test_kmp_on_a_frozen_window_is_gmp(digits):
    # lr = 1e-30 leaves every float32 weight where it is: the window does not move, so the
    # KMD's fixed point is the weights themselves and KMP is magnitude pruning.
    def frozen(model):
        return SGD(model, lr=1e-30)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rank rule says the snapshots do not move
        result = iterative_pruning(MLP([64, 16, 10], seed=0), frozen, digits, levels=2,
                                   fraction=0.5, method="kmp", epochs=1, batch_size=BATCH)
    assert [r.overlap_gmp for r in result.levels[1:]] == [1.0, 1.0]


@pytest.mark.parametrize("kwargs, match", [
    ({"rewind": 3, "every": 2}, r"rewind=3 .*not a recorded step.*0, 2, 4, 6"),
    ({"rewind": TOTAL + 1}, r"rewind=13 .*not a recorded step"),
    ({"rewind": "start"}, r"rewind='start' must be 'init'"),
    ({"fraction": 0.0}, r"fraction=0.0 must be a number in \(0, 1\)"),
    ({"fraction": 1.0}, r"fraction=1.0"),
    ({"levels": 0}, r"levels=0 must be an integer >= 1"),
    ({"method": "oracle"}, r"method='oracle' needs the converged weights"),
    ({"method": "nope"}, r"method='nope' is unknown"),
])
def test_bad_input_is_refused_before_anything_changes(digits, kwargs, match):
    model = MLP([64, 16, 10], seed=0)
    before = flat(model).copy()
    calls = []
    args = {"levels": 2, "fraction": 0.2, "epochs": EPOCHS, "batch_size": BATCH, **kwargs}
    with pytest.raises(ValueError, match=match):
        iterative_pruning(model, lambda m: calls.append(m) or sgd(m), digits, **args)
    assert not calls and np.array_equal(flat(model), before)


# --------------------------------------------------------------------------- PyTorch
@pytest.fixture(scope="module")
def torch_setup(digits):
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.from_numpy(np.asarray(digits.x_train)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(np.asarray(digits.y_train))
    loader = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(y), BATCH)]
    xt = torch.from_numpy(np.asarray(digits.x_test)).reshape(-1, 1, 8, 8)
    yt = torch.from_numpy(np.asarray(digits.y_test))
    yield torch, loader, (xt, yt)
    torch.set_num_threads(previous)


def tiny_cnn(torch):
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, 10))


@pytest.mark.torch
def test_torch_levels_rewind_and_masks_in_the_pruning_format(torch_setup):
    torch, loader, test = torch_setup
    from kooplearn_prune.adapters.torch import (
        TorchRecorder,
        accuracy_on,
        current_masks,
        default_train_fn,
        iterative_pruning,
    )

    def sgd_torch(model):
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    reference = tiny_cnn(torch)
    recorder = TorchRecorder(reference, start=4, stop=4)
    optimizer = sgd_torch(reference)
    with recorder.attach(optimizer):
        default_train_fn(loader, EPOCHS)(reference, optimizer)
    theta_r = recorder.buffer()[0].numpy().copy()

    seen = []

    def factory(model):  # called right after each rewind, before retraining
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return sgd_torch(model)

    model = tiny_cnn(torch)
    result = iterative_pruning(model, factory, loader=loader, epochs=EPOCHS, levels=3,
                               fraction=0.25, method="kmp", rewind=4,
                               evaluate=accuracy_on(*test))
    layout = result.layout
    assert np.array_equal(result.rewind_point, theta_r)
    previous = np.ones(layout.size, bool)
    for record, mask in zip(result.levels[1:], result.masks):
        k = n_to_prune(1 - 0.75 ** record.level, layout.n_prunable)
        assert record.sparsity == k / layout.n_prunable and not np.any(mask & ~previous)
        previous = mask
    assert hasattr(model[0], "weight_orig") and hasattr(model[4], "weight_mask")
    masks = current_masks(model)
    for name in ("0.weight", "4.weight"):
        np.testing.assert_array_equal(masks[name].numpy().reshape(-1),
                                      result.masks[-1][layout.slice_of(name)])
        assert torch.all(dict(model.named_parameters())[name + "_orig"].detach()
                         [~masks[name]] == 0)  # MaskEnforcer held them at zero
    # rewound effective weights (weight_orig * weight_mask): the recorded step's values, bit
    # for bit, where kept
    for level, mask in enumerate(result.masks, start=1):
        state = seen[level]
        rewound = np.concatenate([
            (state[name + "_orig"] * state[name + "_mask"] if name + "_orig" in state
             else state[name]).numpy().reshape(-1) for name in layout.names])
        assert np.array_equal(rewound[mask], theta_r[mask]) and np.all(rewound[~mask] == 0)


@pytest.mark.torch
def test_torch_bad_rewind_and_wrong_step_count(torch_setup):
    torch, loader, test = torch_setup
    from kooplearn_prune.adapters.torch import accuracy_on, iterative_pruning

    model = tiny_cnn(torch)
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def train_fn(model, optimizer):
        calls.append(1)

    with pytest.raises(ValueError, match=r"rewind=5 .*not a recorded step"):
        iterative_pruning(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), train_fn,
                          steps=12, window=6, every=2, levels=1, rewind=5,
                          evaluate=accuracy_on(*test))
    assert not calls and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match=r"train_fn took 0 optimizer steps but steps=12"):
        iterative_pruning(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), train_fn,
                          steps=12, window=6, levels=1, evaluate=accuracy_on(*test))
