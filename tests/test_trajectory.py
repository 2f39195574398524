"""ParamLayout (flat θ ↔ named tensors), Trajectory files, and the TrajectoryRecorder callback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kooplearn_prune import _io
from kooplearn_prune.backend import asarray, namespace_of, to_numpy
from kooplearn_prune.layout import ParamLayout, layout_of
from kooplearn_prune.metadata import TrainingMetadata
from kooplearn_prune.nn import MLP, Linear, Module, Sequential, Tanh
from kooplearn_prune.optim import SGD
from kooplearn_prune.recording import TrajectoryRecorder
from kooplearn_prune.training import Callback, Trainer
from kooplearn_prune.trajectory import Trajectory

# w (2x3, prunable) | b (2,) | v (4,): n = 12
LAYOUT = ParamLayout(("w", "b", "v"), ((2, 3), (2,), (4,)), (True, False, True))


def flat_params(model) -> np.ndarray:
    return np.concatenate([to_numpy(p.data).ravel() for p in model.parameters()])


def flat_grads(model) -> np.ndarray:
    return np.concatenate([to_numpy(p.grad).ravel() for p in model.parameters()])


# =========================================================================== ParamLayout
def test_layout_sizes_offsets_and_slices():
    assert LAYOUT.sizes == (6, 2, 4) and LAYOUT.offsets == (0, 6, 8)
    assert LAYOUT.size == 12 and LAYOUT.n_prunable == 10
    assert LAYOUT.index("b") == 1 and LAYOUT.slice_of("v") == slice(8, 12)
    with pytest.raises(KeyError, match="no parameter named 'x'"):
        LAYOUT.index("x")
    assert LAYOUT.table()[2] == {"name": "v", "shape": (4,), "size": 4, "offset": 8,
                                 "prunable": True}


def test_prunable_mask(xp):
    expected = np.array([1] * 6 + [0] * 2 + [1] * 4, dtype=bool)
    np.testing.assert_array_equal(LAYOUT.prunable_mask(), expected)
    on_backend = LAYOUT.prunable_mask(xp)
    assert namespace_of(on_backend) is xp
    np.testing.assert_array_equal(to_numpy(on_backend), expected)


def test_flatten_and_unflatten_by_hand(xp):
    w = np.arange(6.0).reshape(2, 3)
    b, v = np.array([10.0, 11.0]), np.array([20.0, 21.0, 22.0, 23.0])
    arrays = [asarray(a, xp=xp) for a in (w, b, v)]
    flat = LAYOUT.flatten(arrays)
    np.testing.assert_array_equal(to_numpy(flat), [0, 1, 2, 3, 4, 5, 10, 11, 20, 21, 22, 23])
    by_name = LAYOUT.flatten(dict(zip(("v", "b", "w"), arrays[::-1])))  # mapping: any order
    np.testing.assert_array_equal(to_numpy(by_name), to_numpy(flat))
    out = asarray(np.zeros(12), xp=xp)
    assert LAYOUT.flatten(arrays, out=out) is out
    np.testing.assert_array_equal(to_numpy(out), to_numpy(flat))
    parts = LAYOUT.unflatten(flat)
    assert list(parts) == ["w", "b", "v"]
    for name, original in zip(("w", "b", "v"), (w, b, v)):
        np.testing.assert_array_equal(to_numpy(parts[name]), original)


@st.composite
def layouts(draw):
    shapes = draw(st.lists(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
                           min_size=1, max_size=5))
    prunable = draw(st.lists(st.booleans(), min_size=len(shapes), max_size=len(shapes)))
    return ParamLayout(tuple(f"p{i}" for i in range(len(shapes))), tuple(shapes), tuple(prunable))


@settings(max_examples=50, deadline=None)
@given(layouts(), st.integers(0, 2**32 - 1), st.integers(0, 3))
def test_flatten_unflatten_round_trip(layout, seed, n_rows):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in layout.shapes]
    flat = layout.flatten(arrays)
    assert flat.shape == (layout.size,)
    assert layout.offsets == tuple(np.cumsum((0,) + layout.sizes)[:-1])
    for off, size, a in zip(layout.offsets, layout.sizes, arrays):
        np.testing.assert_array_equal(flat[off:off + size], a.ravel())
    back = layout.unflatten(flat)
    for a, name in zip(arrays, layout.names):
        np.testing.assert_array_equal(back[name], a)
    np.testing.assert_array_equal(layout.flatten(back), flat)
    # a stack of vectors (snapshots) unflattens row by row
    rows = rng.standard_normal((n_rows, layout.size))
    stacked = layout.unflatten(rows)
    for name, shape, off, size in zip(layout.names, layout.shapes, layout.offsets, layout.sizes):
        assert stacked[name].shape == (n_rows, *shape)
        np.testing.assert_array_equal(stacked[name].reshape(n_rows, size), rows[:, off:off + size])
    mask = layout.prunable_mask()
    assert mask.sum() == layout.n_prunable


def test_check_vector_error_names_the_layout():
    LAYOUT.check_vector(np.zeros((3, 12)))
    with pytest.raises(ValueError, match=r"snapshots has shape \(3, 11\), but the layout describes "
                                         r"n=12 parameters \(3 tensors: w, b, v\)"):
        LAYOUT.check_vector(np.zeros((3, 11)), "snapshots")
    with pytest.raises(ValueError, match=r"vector has shape \(\)"):
        LAYOUT.unflatten(np.float64(1.0))


def test_flatten_errors():
    with pytest.raises(KeyError, match=r"missing parameters \['v'\]"):
        LAYOUT.flatten({"w": np.zeros((2, 3)), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="got 2 arrays for a layout of 3 tensors"):
        LAYOUT.flatten([np.zeros((2, 3)), np.zeros(2)])
    with pytest.raises(ValueError, match=r"w has shape \(3, 2\), layout says \(2, 3\)"):
        LAYOUT.flatten([np.zeros((3, 2)), np.zeros(2), np.zeros(4)])
    with pytest.raises(ValueError, match="out has shape"):
        LAYOUT.flatten([np.zeros((2, 3)), np.zeros(2), np.zeros(4)], out=np.zeros(5))


def test_layout_validation_and_dict_round_trip():
    with pytest.raises(ValueError, match="equal lengths"):
        ParamLayout(("a", "b"), ((1,),), (True, False))
    with pytest.raises(ValueError, match=r"unique, repeated: \['a'\]"):
        ParamLayout(("a", "a"), ((1,), (2,)), (True, True))
    with pytest.raises(ValueError, match="non-negative"):
        ParamLayout(("a",), ((-1,),), (True,))
    assert ParamLayout.from_dict(json.loads(json.dumps(LAYOUT.to_dict()))) == LAYOUT
    default = ParamLayout.from_named_arrays([("w", np.zeros((2, 3))), ("b", np.zeros(2))])
    assert default.prunable == (True, False)  # by default: tensors with ndim >= 2


class TwoTowers(Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = Sequential(Linear(3, 2, rng=0), Tanh())
        self.right = Linear(2, 1, bias=False, rng=1)


def test_layout_of_a_model():
    layout = layout_of(MLP([4, 3, 2]))
    assert layout.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert layout.shapes == ((3, 4), (3,), (2, 3), (2,))
    assert layout.prunable == (True, False, True, False)  # Linear weights, not biases
    assert layout_of(TwoTowers()).prunable == (True, False, True)
    assert layout_of(MLP([4, 3, 2]), prunable=["2.weight"]).prunable == (False, False, True, False)
    everything = layout_of(MLP([4, 3, 2]), prunable=lambda name, p: True)
    assert everything.n_prunable == everything.size
    with pytest.raises(ValueError, match=r"\['9.weight'\] are not parameters"):
        layout_of(MLP([4, 3, 2]), prunable=["9.weight"])


# =========================================================================== Trajectory
def test_trajectory_basics_and_validation():
    snaps = np.arange(36.0).reshape(3, 12)
    traj = Trajectory(snaps, [0, 5, 10], LAYOUT, metadata={"lr": 0.1})
    assert traj.n_snapshots == 3 and traj.n_params == 12
    np.testing.assert_array_equal(traj.last, snaps[2])
    sub = traj.window(1)
    assert sub.n_snapshots == 2 and list(sub.steps) == [5, 10]
    assert sub.metadata == TrainingMetadata(lr=0.1) and sub.metadata is traj.metadata
    assert np.shares_memory(sub.snapshots, snaps)
    assert "m+1=3" in repr(traj)
    assert Trajectory(np.zeros((2, 4))).layout.names == ("theta",)
    with pytest.raises(ValueError, match="2-D array"):
        Trajectory(np.zeros(12), layout=LAYOUT)
    with pytest.raises(ValueError, match="layout describes n=12"):
        Trajectory(np.zeros((3, 11)), layout=LAYOUT)
    with pytest.raises(ValueError, match="steps must have length 3"):
        Trajectory(snaps, [0, 1], LAYOUT)
    with pytest.raises(ValueError, match="gradients must have the snapshots' shape"):
        Trajectory(snaps, layout=LAYOUT, gradients=np.zeros((2, 12)))


def test_trajectory_save_load_round_trip(xp, tmp_path):
    rng = np.random.default_rng(0)
    snaps, grads, upd = (asarray(rng.standard_normal((4, 12)).astype(np.float32), xp=xp)
                         for _ in range(3))
    traj = Trajectory(snaps, [0, 2, 4, 6], LAYOUT, gradients=grads, updates=upd,
                      metadata={"optimizer": "SGD", "lr": 0.1, "every": np.int64(2),
                                "extra": {"eps": np.float32(0.5)}})
    path = traj.save(tmp_path / "traj.npz")
    assert os.listdir(tmp_path) == ["traj.npz"]
    back = Trajectory.load(path, xp=xp)
    assert namespace_of(back.snapshots) is xp and back.snapshots.dtype == xp.float32
    for name in ("snapshots", "gradients", "updates"):
        np.testing.assert_array_equal(to_numpy(getattr(back, name)), to_numpy(getattr(traj, name)))
    np.testing.assert_array_equal(back.steps, [0, 2, 4, 6])
    assert back.layout == LAYOUT
    assert back.metadata == TrainingMetadata(optimizer="sgd", lr=0.1, every=2,
                                             extra={"eps": 0.5})
    assert isinstance(back.metadata, TrainingMetadata)
    bare = Trajectory(snaps, layout=LAYOUT).save(tmp_path / "bare.npz")
    loaded = Trajectory.load(bare, xp=xp)
    assert loaded.gradients is None and loaded.updates is None


def test_trajectory_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "traj.npz"
    Trajectory(np.zeros((2, 12)), layout=LAYOUT).save(path)
    original = path.read_bytes()

    def interrupted(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trajectory(np.ones((2, 12)), layout=LAYOUT).save(path)
    with pytest.raises(KeyboardInterrupt):
        Trajectory(np.ones((2, 12)), layout=LAYOUT).save(tmp_path / "new.npz")
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["traj.npz"]  # no temp file, no partial new.npz


def test_trajectory_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trajectory file"):
        Trajectory.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", snapshots=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"not a kooplearn_prune trajectory \(missing "
                                         r"\['layout', 'metadata', 'steps'\]\)"):
        Trajectory.load(tmp_path / "other.npz")


# =========================================================================== TrajectoryRecorder
def toy_problem(xp=np, n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = asarray(rng.standard_normal((n, 3)).astype(np.float32), xp=xp)
    y = asarray(rng.integers(0, 2, n), xp=xp)
    return x, y


class History(Callback):
    """Every θ_t (and the gradient that produced it), for checking what the recorder stored."""

    def __init__(self, model):
        self.model = model
        self.params, self.grads = [], []

    def on_fit_start(self, trainer):
        if not self.params:
            self.params.append(flat_params(self.model))
            self.grads.append(None)

    def on_step_end(self, trainer):
        self.params.append(flat_params(self.model))
        self.grads.append(flat_grads(self.model))


def fit(recorder_kwargs, epochs=3, batch_size=4, optimizer=None, xp=np, model=None):
    """12 samples in batches of 4: 3 steps per epoch. Returns (recorder, history, trainer)."""
    model = MLP([3, 4, 2], seed=0) if model is None else model
    recorder = TrajectoryRecorder(model, **recorder_kwargs)
    history = History(model)
    opt = optimizer(model) if optimizer else SGD(model, lr=0.1)
    trainer = Trainer(model, opt, callbacks=[recorder, history], progress=False)
    trainer.fit(toy_problem(xp), epochs=epochs, batch_size=batch_size, seed=0)
    return recorder, history, trainer


@pytest.mark.parametrize("kwargs, steps", [
    ({}, list(range(10))),
    ({"every": 3}, [0, 3, 6, 9]),
    ({"every": 3, "start": 2}, [2, 5, 8]),
    ({"every": 2, "start": 1, "stop": 6}, [1, 3, 5]),
    ({"every": 1, "start": 4, "stop": 4}, [4]),
    ({"every": 4, "stop": 100}, [0, 4, 8]),
    # unit="epoch" moves the window (epoch e is t = 3e here); ``every`` always counts steps (Δ)
    ({"unit": "epoch"}, list(range(10))),
    ({"unit": "epoch", "start": 1, "stop": 2}, [3, 4, 5, 6]),
    ({"unit": "epoch", "start": 2, "every": 2}, [6, 8]),
    ({"unit": "epoch", "start": 1, "stop": 3, "every": 3}, [3, 6, 9]),
    ({"start": 20}, []),
])
def test_recorder_windows(kwargs, steps):
    recorder, history, trainer = fit(kwargs)
    assert trainer.step == 9
    assert recorder.steps == steps and len(recorder) == len(steps)
    if not steps:
        with pytest.raises(RuntimeError, match="recorded nothing"):
            recorder.trajectory()
        return
    traj = recorder.trajectory()
    assert traj.snapshots.shape == (len(steps), recorder.layout.size)
    assert list(traj.steps) == steps
    for row, t in enumerate(steps):  # row j is θ after steps[j] optimizer steps
        np.testing.assert_array_equal(traj.snapshots[row], history.params[t])


def test_theta_zero_row_is_the_initial_model():
    model = MLP([3, 4, 2], seed=0)
    initial = flat_params(model)
    recorder, _, _ = fit({"record_gradients": True, "record_updates": True}, model=model)
    traj = recorder.trajectory()
    assert traj.steps[0] == 0
    np.testing.assert_array_equal(traj.snapshots[0], initial)
    assert not np.any(traj.gradients[0]) and not np.any(traj.updates[0])


@pytest.mark.parametrize("every", [1, 2])
def test_gradients_and_updates_semantics_for_plain_sgd(every):
    lr = 0.1
    recorder, history, _ = fit({"every": every, "record_gradients": True,
                                "record_updates": True})
    traj = recorder.trajectory()
    for j, t in enumerate(traj.steps):
        if t == 0:
            continue
        # gradients[j]: the mini-batch gradient at θ_{t-1} that produced θ_t
        np.testing.assert_array_equal(traj.gradients[j], history.grads[t])
        # updates[j] = θ_t − θ_{t−1}, which plain SGD makes −lr · gradients[j]
        np.testing.assert_allclose(traj.updates[j], history.params[t] - history.params[t - 1],
                                   rtol=0, atol=1e-7)
        np.testing.assert_allclose(traj.updates[j], -lr * traj.gradients[j], rtol=1e-5, atol=1e-7)
    if every == 1:
        np.testing.assert_allclose(traj.updates[1:], np.diff(traj.snapshots, axis=0), atol=1e-7)


def test_updates_with_momentum_differ_from_minus_lr_grad():
    recorder, history, _ = fit({"record_gradients": True, "record_updates": True},
                               optimizer=lambda m: SGD(m, lr=0.1, momentum=0.9))
    traj = recorder.trajectory()
    np.testing.assert_allclose(traj.updates[1:], np.diff(traj.snapshots, axis=0), atol=1e-7)
    assert not np.allclose(traj.updates[5], -0.1 * traj.gradients[5])
    meta = traj.metadata
    assert meta.momentum == 0.9 and meta.optimizer == "sgd" and meta.betas is None
    assert meta.every == 1 and meta.steps_per_epoch == 3 and meta.loss == "cross_entropy"
    assert meta.framework == "native" and meta.device == "cpu" and meta.first_gradient_row == 1


def test_disk_storage_equals_memory_storage(xp, tmp_path):
    kwargs = {"every": 2, "record_gradients": True, "record_updates": True}
    mem, _, _ = fit(kwargs, xp=xp)
    disk, _, _ = fit({**kwargs, "storage": "disk", "directory": tmp_path}, xp=xp)
    assert isinstance(disk.snapshots, np.memmap)
    assert namespace_of(mem.snapshots) is xp
    assert sorted(f.split("_")[0] for f in os.listdir(tmp_path)) == ["gradients", "snapshots",
                                                                    "updates"]
    a, b = mem.trajectory(), disk.trajectory()
    for name in ("snapshots", "gradients", "updates"):
        np.testing.assert_array_equal(to_numpy(getattr(b, name)), to_numpy(getattr(a, name)))
        assert getattr(b, name).dtype == np.float32
    np.testing.assert_array_equal(a.steps, b.steps)


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_a_disk_buffer_that_grows_keeps_its_rows_and_leaves_one_file_each(tmp_path, monkeypatch,
                                                                          kernel_copy):
    from kooplearn_prune import _rowfile

    if not kernel_copy:  # the fallback when the kernel cannot copy between the two files
        def refuse(*args):
            raise OSError(errno.EXDEV, "cross-device")
        monkeypatch.setattr(_rowfile.os, "copy_file_range", refuse, raising=False)
    kwargs = {"record_gradients": True, "record_updates": True}
    disk, _, _ = fit({**kwargs, "storage": "disk", "directory": tmp_path})
    mem, _, _ = fit(kwargs)
    files = sorted(os.listdir(tmp_path))
    assert disk.snapshots.shape[0] == len(disk) == 10
    disk._buffer.next_row()  # full: doubles, copying the 10 rows into new files
    assert disk.snapshots.shape[0] == 20 and len(disk) == 10
    assert len(os.listdir(tmp_path)) == 3 and sorted(os.listdir(tmp_path)) != files
    for name in ("snapshots", "gradients", "updates"):
        np.testing.assert_array_equal(getattr(disk.trajectory(), name),
                                      getattr(mem.trajectory(), name))
        np.testing.assert_array_equal(np.load(getattr(disk, name).filename)[10:], 0.0)


def test_disk_buffers_are_allocated_for_real_not_sparse(tmp_path):
    recorder = TrajectoryRecorder(MLP([30, 20, 2], seed=0), storage="disk", directory=tmp_path,
                                  capacity=64)
    stat = os.stat(recorder.snapshots.filename)
    assert stat.st_size >= 64 * 662 * 4 and stat.st_blocks * 512 >= stat.st_size - 4096
    np.testing.assert_array_equal(np.load(recorder.snapshots.filename), 0.0)


def test_disk_storage_without_directory_uses_a_temporary_one():
    recorder, _, _ = fit({"storage": "disk"}, epochs=1)
    assert isinstance(recorder.snapshots, np.memmap)
    path = recorder.snapshots.filename
    assert os.path.exists(path)
    np.testing.assert_array_equal(np.load(path, mmap_mode="r")[:4], recorder.trajectory().snapshots)
    del recorder
    shutil.rmtree(os.path.dirname(path))


def test_buffer_is_allocated_once_per_fit(xp):
    seen = []

    class Watch(Callback):
        def __init__(self, recorder):
            self.recorder = recorder

        def on_step_end(self, trainer):
            seen.append((id(self.recorder.snapshots), id(self.recorder.gradients),
                         id(self.recorder.updates)))

    model = MLP([3, 4, 2], seed=0)
    recorder = TrajectoryRecorder(model, record_gradients=True, record_updates=True)
    trainer = Trainer(model, SGD(model, lr=0.1), callbacks=[recorder, Watch(recorder)],
                      progress=False)
    trainer.fit(toy_problem(xp), epochs=3, batch_size=4)
    assert len(seen) == 9 and len(set(seen)) == 1
    assert recorder.snapshots.shape[0] == 10  # exactly the rows needed: θ_0 … θ_9


def test_a_fine_tune_after_the_fit_does_not_append():
    model = MLP([3, 4, 2], seed=0)
    recorder = TrajectoryRecorder(model, every=2, record_gradients=True, record_updates=True)
    trainer = Trainer(model, SGD(model, lr=0.1), callbacks=[recorder], progress=False)
    data = toy_problem()
    trainer.fit(data, epochs=2, batch_size=4)
    before = recorder.trajectory()
    saved = [np.array(a) for a in (before.snapshots, before.gradients, before.updates)]
    assert recorder.finished and list(before.steps) == [0, 2, 4, 6]
    with pytest.warns(UserWarning, match=r"this fit \(steps 7..12\) is not recorded"):
        trainer.fit(data, epochs=2, batch_size=4)  # the fine-tune: 6 more steps
    after = recorder.trajectory()
    assert list(after.steps) == [0, 2, 4, 6] and len(recorder) == 4 and trainer.step == 12
    for old, new in zip(saved, (after.snapshots, after.gradients, after.updates)):
        np.testing.assert_array_equal(new, old)


def test_a_later_fit_outside_the_window_is_ignored_silently():
    recorder, _, trainer = fit({"stop": 3})
    assert recorder.finished and recorder.steps == [0, 1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.fit(toy_problem(), epochs=1, batch_size=4)
    assert recorder.steps == [0, 1, 2, 3]


def test_the_fit_that_reaches_the_window_owns_the_recorder():
    model = MLP([3, 4, 2], seed=0)
    recorder = TrajectoryRecorder(model, start=4, every=2, record_gradients=True)
    history = History(model)
    trainer = Trainer(model, SGD(model, lr=0.1), callbacks=[recorder, history], progress=False)
    data = toy_problem()
    trainer.fit(data, epochs=1, batch_size=4)  # steps 1..3: before the window, keep waiting
    assert len(recorder) == 0 and not recorder.finished
    trainer.fit(data, epochs=2, batch_size=4)  # steps 4..9: recorded
    with pytest.warns(UserWarning, match="Add a new TrajectoryRecorder"):
        trainer.fit(data, epochs=1, batch_size=4)
    traj = recorder.trajectory()
    assert list(traj.steps) == [4, 6, 8] and traj.metadata.first_gradient_row == 0
    for row, t in enumerate(traj.steps):
        np.testing.assert_array_equal(traj.snapshots[row], history.params[t])
        np.testing.assert_array_equal(traj.gradients[row], history.grads[t])


def test_recording_ends_when_the_fit_raises_and_on_detach():
    class Interrupt(Exception):
        pass

    class StopAt(Callback):
        def on_step_end(self, trainer):
            if trainer.step == 4:
                raise Interrupt

    model = MLP([3, 4, 2], seed=0)
    recorder = TrajectoryRecorder(model)
    trainer = Trainer(model, SGD(model, lr=0.1), callbacks=[recorder, StopAt()], progress=False)
    with pytest.raises(Interrupt):
        trainer.fit(toy_problem(), epochs=3, batch_size=4)
    assert recorder.steps == [0, 1, 2, 3, 4]
    trainer.callbacks.pop()
    with pytest.warns(UserWarning, match="not recorded"):
        trainer.fit(toy_problem(), epochs=1, batch_size=4)
    assert recorder.steps == [0, 1, 2, 3, 4] and recorder.finished

    class DetachAt(Callback):
        def __init__(self, recorder):
            self.recorder = recorder

        def on_step_end(self, trainer):
            if trainer.step == 2:
                self.recorder.detach()

    model = MLP([3, 4, 2], seed=0)
    recorder = TrajectoryRecorder(model)
    trainer = Trainer(model, SGD(model, lr=0.1), callbacks=[DetachAt(recorder), recorder],
                      progress=False)
    trainer.fit(toy_problem(), epochs=2, batch_size=4)
    assert recorder.steps == [0, 1] and recorder.finished
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # detached on purpose: later fits say nothing
        trainer.fit(toy_problem(), epochs=1, batch_size=4)
    assert recorder.detach() is recorder and recorder.steps == [0, 1]


def test_recorder_layout_uses_the_prunable_argument():
    recorder = TrajectoryRecorder(MLP([3, 4, 2]), prunable=["0.weight"])
    assert recorder.layout.prunable == (True, False, False, False)


@pytest.mark.parametrize("kwargs, match", [
    ({"every": 0}, "every must be a positive integer"),
    ({"every": 1.5}, "every must be a positive integer"),
    ({"start": -1}, "start must be a non-negative integer"),
    ({"start": 5, "stop": 4}, "stop must be None or an integer >= start=5"),
    ({"storage": "cloud"}, "storage must be 'memory' or 'disk'"),
    ({"unit": "batch"}, "unit must be 'step' or 'epoch'"),
    ({"capacity": 0}, "capacity must be None or a positive number of rows"),
    ({"record_gradients": "yes"}, "record_gradients must be True or False"),
])
def test_recorder_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrajectoryRecorder(MLP([3, 2]), **kwargs)


def test_capacity_preallocates_before_training_and_is_used_by_fit():
    from kooplearn_prune.data import load_dataset
    from kooplearn_prune.nn import MLP
    from kooplearn_prune.optim import SGD
    from kooplearn_prune.recording import TrajectoryRecorder
    from kooplearn_prune.training import Trainer

    data = load_dataset("digits", n_train=320, n_test=50)
    model = MLP([64, 8, 10], seed=0)
    recorder = TrajectoryRecorder(model, capacity=11)
    buffer = recorder.snapshots
    assert buffer.shape == (11, recorder.layout.size)
    Trainer(model, SGD(model, lr=0.01), callbacks=[recorder], progress=False).fit(
        data, epochs=1, batch_size=32)  # 10 steps + theta_0 = 11 rows: no reallocation
    assert recorder.snapshots is buffer and len(recorder) == 11
    with pytest.raises(ValueError, match="capacity"):
        TrajectoryRecorder(model, capacity=0)


# ---------------------------------------------------------------- host memory reused across fits
@pytest.fixture
def pooled_small_buffers(monkeypatch):
    """Pool every buffer, however small, and start from an empty pool."""
    from kooplearn_prune import _hostmemory

    monkeypatch.setattr(_hostmemory, "_MIN_POOLED", 0)
    _hostmemory.release_pooled_memory()
    yield _hostmemory
    _hostmemory.release_pooled_memory()


def test_host_memory_is_reused_only_when_every_view_is_gone(pooled_small_buffers):
    hm = pooled_small_buffers
    a = hm.host_zeros((4, 8), np.float32)
    assert a.shape == (4, 8) and a.dtype == np.float32 and not a.any()
    row = a[1]
    del a
    b = hm.host_zeros((4, 8), np.float32)  # a view of ``a`` is alive: fresh memory
    b[:] = 1.0
    assert not np.shares_memory(row, b) and not row.any()
    assert hm.pooled_bytes() == 0
    del row
    assert hm.pooled_bytes() > 0  # no garbage collection needed
    c = hm.host_zeros((4, 8), np.float32)
    assert hm.pooled_bytes() == 0
    assert hm.release_pooled_memory() == 0
    del b, c
    assert hm.release_pooled_memory() > 0 and hm.pooled_bytes() == 0


def test_host_memory_populated_in_the_background_keeps_what_was_written():
    import threading

    from kooplearn_prune import _hostmemory

    a = _hostmemory.host_zeros((40, 1 << 17), np.float32)  # 20 MiB: the tail is populated later
    a[-1] = 3.0  # possibly before the background thread reaches it
    for thread in threading.enumerate():
        if thread.name == "kooplearn_prune-populate":
            thread.join()
    np.testing.assert_array_equal(a[-1], 3.0)
    np.testing.assert_array_equal(a[:-1], 0.0)


def test_a_recorder_is_freed_without_the_garbage_collector(pooled_small_buffers):
    import gc
    import weakref

    gc.disable()
    try:
        recorder, history, trainer = fit({"record_gradients": True})
        alive = weakref.ref(recorder)
        del recorder, history, trainer
        assert alive() is None
        assert pooled_small_buffers.pooled_bytes() > 0  # its two buffers, for the next recorder
    finally:
        gc.enable()


def test_recorders_reusing_pooled_memory_keep_their_own_rows(pooled_small_buffers):
    hm = pooled_small_buffers
    first, _, _ = fit({"record_gradients": True}, model=MLP([3, 4, 2], seed=0))
    kept = first.trajectory()
    kept_rows = np.array(kept.snapshots)
    del first
    # ``kept`` still views the first buffers: the second recorder gets memory of its own
    second, history, _ = fit({"record_gradients": True}, model=MLP([3, 4, 2], seed=1))
    assert not np.shares_memory(kept.snapshots, second.snapshots)
    np.testing.assert_array_equal(kept.snapshots, kept_rows)
    del kept
    assert hm.pooled_bytes() > 0
    third, history, _ = fit({"record_gradients": True}, model=MLP([3, 4, 2], seed=2))
    assert hm.pooled_bytes() == 0  # took the first recorder's buffers
    traj = third.trajectory()
    assert list(traj.steps) == list(range(10))
    np.testing.assert_allclose(traj.snapshots, np.stack(history.params))
    np.testing.assert_allclose(traj.gradients[1:], np.stack(history.grads[1:]))
    np.testing.assert_array_equal(traj.gradients[0], 0.0)  # zeroed, though the memory was used
    assert not np.allclose(traj.snapshots[0], kept_rows[0])  # its own θ_0, not the first's


# ------------------------------------------------ disk rows written in the background
def test_row_writer_writes_every_row_through_a_small_ring(tmp_path):
    from kooplearn_prune._rowfile import RowFile, RowWriter

    row_file = RowFile(tmp_path, "w_", (50, 7), np.dtype(np.float32))
    writer = RowWriter(7, np.dtype(np.float32), slots=2)  # the writer must keep up: never drops
    for row in range(50):
        index, host = writer.slot()
        host[:] = row
        writer.put(row_file, row, index)
    writer.flush()
    np.testing.assert_array_equal(row_file.array, np.repeat(np.arange(50.0), 7).reshape(50, 7))
    writer.close()
    index, host = writer.slot()  # a closed writer starts a new thread when used again
    host[:] = -1
    writer.put(row_file, 0, index)
    writer.close()
    np.testing.assert_array_equal(row_file.array[0], -1.0)


def test_a_failed_background_write_is_raised_and_stops_later_writes(tmp_path, monkeypatch):
    from kooplearn_prune._rowfile import RowFile, RowWriter

    row_file = RowFile(tmp_path, "w_", (4, 3), np.dtype(np.float32))
    writer = RowWriter(3, np.dtype(np.float32), slots=4)
    real_write = RowFile.write_row

    def failing(self, row, values):
        if row == 1:
            raise OSError(errno.EIO, "device error")
        real_write(self, row, values)

    monkeypatch.setattr(RowFile, "write_row", failing)
    for row in range(3):
        index, host = writer.slot()
        host[:] = 5.0
        writer.put(row_file, row, index)
    with pytest.raises(OSError, match="device error"):
        writer.flush()
    np.testing.assert_array_equal(row_file.array[0], 5.0)
    np.testing.assert_array_equal(row_file.array[2], 0.0)  # not written after the failure
    with pytest.raises(OSError, match="device error"):
        writer.slot()
    with pytest.raises(OSError, match="device error"):
        writer.close()


def test_a_disk_recorder_raises_a_failed_write_when_the_fit_ends(tmp_path, monkeypatch):
    from kooplearn_prune._rowfile import RowFile

    def failing(self, row, values):
        raise OSError(errno.EIO, "device error")

    monkeypatch.setattr(RowFile, "write_row", failing)
    with pytest.raises(OSError, match="device error"):
        fit({"storage": "disk", "directory": tmp_path})


def test_pooled_recording_memory_can_be_given_back():
    """Memory of finished recorders is pooled for the next one; a public call returns it."""
    import gc

    from kooplearn_prune.recording import release_pooled_memory

    release_pooled_memory()
    model = MLP([784, 300, 100, 10], seed=0)
    recorder = TrajectoryRecorder(model, capacity=64)  # 64 rows of 266610 float32: 68 MB
    buffer_bytes = 64 * recorder.layout.size * 4
    del recorder
    gc.collect()
    assert release_pooled_memory() >= buffer_bytes  # the dead recorder's buffer was pooled
    assert release_pooled_memory() == 0  # and is given back once
