"""TrainingMetadata (the typed record a trajectory carries) and the shared window / row buffer."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kooplearn_prune.layout import ParamLayout
from kooplearn_prune.metadata import TrainingMetadata
from kooplearn_prune.nn import MLP
from kooplearn_prune.optim import SGD, Adam, AdamW
from kooplearn_prune.recording import TrajectoryRecorder
from kooplearn_prune.training import Trainer
from kooplearn_prune.trajectory import Trajectory
from kooplearn_prune.window import RecordingWindow, RowBuffer, StepWindow

LAYOUT = ParamLayout(("w",), ((3,),), (True,))


# =========================================================================== TrainingMetadata
def test_record_is_frozen_normalised_and_json_ready():
    meta = TrainingMetadata(optimizer="Adam", lr=np.float32(0.5), betas=[0.9, 0.999],
                            every=np.int64(3), extra={"eps": np.float64(1e-8)})
    assert meta.optimizer == "adam" and meta.betas == (0.9, 0.999) and meta.every == 3
    assert type(meta.every) is int and type(meta.lr) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.lr = 0.1
    with pytest.raises(TypeError):
        meta.extra["eps"] = 1.0  # read-only view
    assert TrainingMetadata.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    assert meta.optimizer_settings() == {"optimizer": "adam", "lr": 0.5, "momentum": 0.0,
                                         "nesterov": False, "betas": [0.9, 0.999],
                                         "weight_decay": 0.0, "decoupled_weight_decay": False,
                                         "eps": 1e-8}
    assert dataclasses.replace(meta, every=5).every == 5


@pytest.mark.parametrize("data, match", [
    ({"lrr": 0.1}, r"unknown key 'lrr'.*put other settings under 'extra'"),
    ({"lr": "0.1"}, "lr must be a non-negative finite number"),
    ({"every": 0}, "every must be an integer >= 1"),
    ({"framework": "jax"}, "framework must be one of"),
    ({"betas": [0.9]}, "betas must be a pair"),
    ({"nesterov": "no"}, "nesterov must be True or False"),
    ({"extra": {"eps": [1, 2]}}, r"extra\['eps'\] must be a JSON scalar"),
])
def test_dict_conversion_names_the_bad_key(data, match):
    with pytest.raises(ValueError, match=match):
        Trajectory(np.zeros((2, 3)), layout=LAYOUT, metadata=data)


def test_adam_record_has_betas_and_no_momentum():
    with pytest.raises(ValueError, match="momentum must be 0 for optimizer='adam'"):
        TrainingMetadata(optimizer="adam", momentum=0.9, betas=(0.9, 0.999))
    for optimizer, decoupled in ((Adam, False), (AdamW, True)):
        model = MLP([3, 4, 2], seed=0)
        recorder = TrajectoryRecorder(model)
        x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
        Trainer(model, optimizer(model, lr=0.01), callbacks=[recorder], progress=False).fit(
            (x, np.arange(8) % 2), epochs=1, batch_size=4)
        meta = recorder.trajectory().metadata
        assert meta.betas == (0.9, 0.999) and meta.momentum == 0.0 and not meta.nesterov
        assert meta.decoupled_weight_decay is decoupled and meta.extra == {"eps": 1e-8}


def test_old_dict_format_files_still_load(tmp_path):
    """Files written before the record: class names, Adam's beta1 as a fake momentum, eps."""
    old = {"optimizer": "Adam", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8,
           "weight_decay": 0.0, "momentum": 0.9, "every": 1, "steps_per_epoch": 3,
           "loss": "cross_entropy"}
    torch_old = {"framework": "torch", "every": 2, "device": "cpu", "buffer_device": "cpu",
                 "dtype": "float32", "optimizer": "SGD", "lr": 0.05, "momentum": 0.9,
                 "dampening": 0, "nesterov": False, "weight_decay": 0, "first_gradient_row": 1}
    for i, meta in enumerate((old, torch_old)):
        np.savez(tmp_path / f"old{i}.npz", snapshots=np.zeros((2, 3)), steps=np.arange(2),
                 layout=np.array(json.dumps(LAYOUT.to_dict())), metadata=np.array(json.dumps(meta)))
    adam = Trajectory.load(tmp_path / "old0.npz").metadata
    assert adam.optimizer == "adam" and adam.momentum == 0.0 and adam.betas == (0.9, 0.999)
    assert adam.steps_per_epoch == 3 and adam.extra == {"eps": 1e-8}
    sgd = Trajectory.load(tmp_path / "old1.npz").metadata
    assert (sgd.framework, sgd.optimizer, sgd.momentum, sgd.every, sgd.first_gradient_row) == \
        ("torch", "sgd", 0.9, 2, 1)
    assert sgd.extra == {"buffer_device": "cpu", "dtype": "float32", "dampening": 0}
    np.savez(tmp_path / "bad.npz", snapshots=np.zeros((2, 3)), steps=np.arange(2),
             layout=np.array(json.dumps(LAYOUT.to_dict())),
             metadata=np.array(json.dumps({"learning_rate": 1})))
    with pytest.raises(ValueError, match=r"bad.npz: metadata: unknown key 'learning_rate'"):
        Trajectory.load(tmp_path / "bad.npz")


def test_native_metadata_round_trips_through_save_and_load(tmp_path):
    model = MLP([3, 4, 2], seed=0)
    recorder = TrajectoryRecorder(model, every=2, record_gradients=True)
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    Trainer(model, SGD(model, lr=0.1, momentum=0.5, nesterov=True), callbacks=[recorder],
            progress=False).fit((x, np.arange(8) % 2), epochs=2, batch_size=4)
    meta = recorder.trajectory().metadata
    assert meta == TrainingMetadata(optimizer="sgd", lr=0.1, momentum=0.5, nesterov=True,
                                    every=2, steps_per_epoch=2, first_gradient_row=1,
                                    framework="native", device="cpu", loss="cross_entropy")
    back = Trajectory.load(recorder.trajectory().save(tmp_path / "t.npz"))
    assert back.metadata == meta


# =========================================================================== window
@settings(max_examples=200, deadline=None)
@given(first=st.integers(0, 30), length=st.one_of(st.none(), st.integers(0, 40)),
       every=st.integers(1, 7), lo=st.integers(0, 60), span=st.integers(-3, 60))
def test_count_equals_the_number_of_wanted_steps(first, length, every, lo, span):
    window = StepWindow(first, None if length is None else first + length, every)
    hi = lo + span
    assert window.count(lo, hi) == sum(window.wanted(t) for t in range(lo, hi + 1))
    if length is not None:
        assert window.rows == sum(window.wanted(t) for t in range(first + length + 1))


def test_window_in_epochs_needs_steps_per_epoch():
    window = RecordingWindow(every=2, start=1, stop=3, unit="epoch")
    assert window.steps(5) == StepWindow(5, 15, 2)
    assert RecordingWindow(start=4).steps() == StepWindow(4, None, 1)
    with pytest.raises(ValueError, match=r"unit='epoch' needs steps_per_epoch="):
        window.steps(None)


def test_row_buffer_grows_by_doubling_and_keeps_every_row():
    allocations = []

    def allocate(name, rows):
        allocations.append((name, rows))
        return np.zeros((rows, 2))

    buffer = RowBuffer(["a", "b"], allocate)
    for t in range(20):
        row = buffer.next_row()
        buffer.arrays["a"][row] = t
        buffer.arrays["b"][row] = -t
        buffer.commit(t)
    assert [rows for name, rows in allocations if name == "a"] == [8, 16, 32]
    np.testing.assert_array_equal(buffer.filled("a")[:, 0], np.arange(20))
    np.testing.assert_array_equal(buffer.filled("b")[:, 1], -np.arange(20))
    buffer.reserve(25)  # enough room already: nothing allocated
    assert buffer.capacity == 32 and len(allocations) == 6
    assert buffer.filled("missing") is None
