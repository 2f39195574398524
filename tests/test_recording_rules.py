"""One set of window and lifetime rules for the native and the torch recorder."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kooplearn_prune.backend import to_numpy
from kooplearn_prune.nn import MLP
from kooplearn_prune.optim import SGD
from kooplearn_prune.recording import TrajectoryRecorder
from kooplearn_prune.training import Trainer
from kooplearn_prune.trajectory import Trajectory

torch = pytest.importorskip("torch")
from kooplearn_prune.adapters.torch import TorchRecorder  # noqa: E402

pytestmark = pytest.mark.torch
STEPS_PER_EPOCH = 3  # 12 samples in batches of 4


def native_steps(window: dict, epochs: int) -> list[int]:
    model = MLP([3, 4, 2], seed=0)
    recorder = TrajectoryRecorder(model, **window)
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((12, 3)).astype(np.float32), rng.integers(0, 2, 12))
    Trainer(model, SGD(model, lr=0.1), callbacks=[recorder], progress=False).fit(
        data, epochs=epochs, batch_size=4)
    return list(recorder.steps)


def torch_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def torch_run(recorder_kwargs: dict, steps: int, optimizer=None, hooked=True):
    """``steps`` optimizer steps of a small torch model; returns (recorder, θ after each step)."""
    model = torch_model()
    opt = (optimizer or (lambda p: torch.optim.SGD(p, lr=0.1)))(model.parameters())
    rec = TorchRecorder(model, **recorder_kwargs)
    g = torch.Generator().manual_seed(0)
    params = [r.param for r in rec.refs]  # in layout order
    thetas = [torch.cat([p.detach().reshape(-1) for p in params]).clone()]
    rec.attach(opt if hooked else None)
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(4, 3, generator=g)
        model(x).square().mean().backward()
        opt.step()
        if not hooked:
            rec.step()
        thetas.append(torch.cat([p.detach().reshape(-1) for p in params]).clone())
    return rec, thetas


@pytest.mark.parametrize("window", [
    {}, {"every": 3}, {"every": 3, "start": 2}, {"every": 2, "start": 1, "stop": 6},
    {"start": 4, "stop": 4}, {"every": 4, "stop": 100}, {"start": 20},
    {"unit": "epoch", "start": 1, "stop": 2}, {"unit": "epoch", "start": 2, "every": 2},
    {"unit": "epoch", "start": 1, "stop": 3, "every": 3},
])
def test_both_recorders_record_the_same_steps_for_the_same_window(window):
    epochs = 3
    native = native_steps(window, epochs)
    extra = {"steps_per_epoch": STEPS_PER_EPOCH} if window.get("unit") == "epoch" else {}
    rec, _ = torch_run({**window, **extra}, epochs * STEPS_PER_EPOCH)
    assert list(rec.steps) == native
    if "stop" not in window:  # neither needs to know its size: both ran to the end
        assert not native or native[-1] + window.get("every", 1) > epochs * STEPS_PER_EPOCH


def test_torch_recorder_without_stop_grows_and_keeps_every_row():
    rec, thetas = torch_run({"every": 1, "record_gradients": True}, 20)
    assert rec.steps == list(range(21)) and rec.capacity == 32  # 8 -> 16 -> 32, doubled
    traj = rec.trajectory()
    np.testing.assert_array_equal(traj.snapshots, torch.stack(thetas).numpy())
    assert traj.gradients.shape == traj.snapshots.shape
    assert not np.any(traj.gradients[0]) and np.all(np.any(traj.gradients[1:] != 0, axis=1))
    sized, _ = torch_run({"every": 1, "stop": 20}, 20)  # a known size is allocated up front
    assert sized.capacity == 21 and sized.steps == rec.steps


def test_torch_detach_ends_the_recording_for_good():
    rec, _ = torch_run({"every": 1}, 3)
    rec.detach()
    assert rec.finished and rec.steps == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="detached, which ended its recording"):
        rec.attach()
    with pytest.raises(RuntimeError, match="detached"):
        rec.step()
    with pytest.raises(RuntimeError, match="detached"), rec:
        pass
    assert rec.steps == [0, 1, 2, 3]
    manual, _ = torch_run({"every": 2}, 5, hooked=False)
    assert manual.steps == [0, 2, 4]


@pytest.mark.parametrize("kwargs, match", [
    ({"every": 0}, "every must be a positive integer"),
    ({"start": -1}, "start must be a non-negative integer"),
    ({"start": 5, "stop": 4}, "stop must be None or an integer >= start=5"),
    ({"unit": "batch"}, "unit must be 'step' or 'epoch'"),
    ({"capacity": 0}, "capacity must be None or a positive number of rows"),
    ({"record_gradients": 1}, "record_gradients must be True or False"),
])
def test_both_recorders_validate_the_same_arguments_alike(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrajectoryRecorder(MLP([3, 2]), **kwargs)
    with pytest.raises(ValueError, match=match):
        TorchRecorder(torch_model(), **kwargs)


def test_torch_epoch_window_needs_steps_per_epoch():
    with pytest.raises(ValueError, match=r"unit='epoch' needs steps_per_epoch="):
        TorchRecorder(torch_model(), unit="epoch", start=1)
    rec = TorchRecorder(torch_model(), unit="epoch", start=1, stop=2, steps_per_epoch=5)
    assert rec.capacity == 6 and rec.metadata.steps_per_epoch == 5


@pytest.mark.parametrize("make, kind, decoupled", [
    (lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99)), "adam", False),
    (lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.8, 0.99)), "adamw", True),
])
def test_torch_adam_metadata_has_betas_no_momentum_and_round_trips(make, kind, decoupled,
                                                                   tmp_path):
    rec, _ = torch_run({"every": 2}, 4, optimizer=make)
    meta = rec.trajectory().metadata
    assert meta.optimizer == kind and meta.betas == (0.8, 0.99) and meta.momentum == 0.0
    assert meta.decoupled_weight_decay is decoupled and meta.lr == 0.01
    assert meta.framework == "torch" and meta.device == "cpu" and meta.every == 2
    assert meta.extra["eps"] == 1e-8 and meta.extra["amsgrad"] is False
    back = Trajectory.load(rec.trajectory().save(tmp_path / "t.npz"))
    assert back.metadata == meta
    np.testing.assert_array_equal(to_numpy(back.snapshots), rec.buffer().numpy())


def test_torch_recorder_with_several_param_groups_says_so():
    model = torch_model()
    opt = torch.optim.SGD([{"params": model[0].parameters()},
                           {"params": model[2].parameters(), "lr": 0.01}], lr=0.1, momentum=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = TorchRecorder(model, stop=0).attach(opt)
    meta = rec.metadata
    assert meta.lr == 0.1 and meta.momentum == 0.5 and meta.extra["param_groups"] == 2


def test_a_torch_recorder_reusing_pooled_memory_keeps_its_own_rows(monkeypatch):
    from kooplearn_prune import _hostmemory

    monkeypatch.setattr(_hostmemory, "_MIN_POOLED", 0)
    _hostmemory.release_pooled_memory()
    first, _ = torch_run({"stop": 5, "record_gradients": True}, 5)
    del first  # freed at once (no reference cycle): its buffers go to the pool
    assert _hostmemory.pooled_bytes() > 0
    second, thetas = torch_run({"stop": 5, "record_gradients": True}, 5)
    assert _hostmemory.pooled_bytes() == 0
    assert list(second.steps) == list(range(6))
    np.testing.assert_allclose(to_numpy(second.trajectory().snapshots), torch.stack(thetas).numpy())
    _hostmemory.release_pooled_memory()
