"""Input faults are reported before the work, with true messages (issue 12).

Each test makes one mistake a user can make and checks that the error names the argument and the
fix, and that nothing changed first: no training step, no callback, no file, no hook.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

from kooplearn_prune.app.cli import main
from kooplearn_prune.backend import asarray, to_numpy
from kooplearn_prune.nn import MLP
from kooplearn_prune.optim import SGD, Adam
from kooplearn_prune.recording import TrajectoryRecorder
from kooplearn_prune.training import Callback, NonFiniteLossError, Trainer


def host_params(model) -> dict[str, np.ndarray]:
    return {n: np.array(to_numpy(p.data)) for n, p in model.named_parameters()}


def host_state(optimizer) -> list[dict]:
    return [{k: np.array(to_numpy(v)) if hasattr(v, "shape") else v for k, v in s.items()}
            for s in optimizer.state]


def toy(n=20, features=3, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, features)).astype(np.float32),
            rng.integers(0, classes, n).astype(np.int64))


class Log(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, t):
        self.events.append("fit_start")

    def on_step_end(self, t):
        self.events.append("step_end")


# --------------------------------------------------------------------------- 1. non-finite updates
def test_a_finite_loss_whose_update_overflows_is_undone(xp):
    """MSE with huge targets and a huge learning rate: loss ~3e30 is finite, θ − lr·g is not."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = (x.sum(axis=1, keepdims=True) * 1e15).astype(np.float32)
    model = MLP([3, 1], seed=0)
    before = host_params(model)
    optimizer = SGD(model, lr=1e25, momentum=0.9)
    log = Log()
    trainer = Trainer(model, optimizer, loss="mse", callbacks=[log], progress=False)
    with pytest.raises(NonFiniteLossError) as info, np.errstate(all="ignore"):
        trainer.fit((asarray(x, xp=xp), asarray(y, xp=xp)), epochs=2, batch_size=10,
                    eval_data=None)
    message = str(info.value)
    assert message.startswith("the update made parameters ['0.weight', '0.bias'] non-finite")
    assert "at epoch 1, step 1 of that epoch (global step 1); that update was undone" in message
    assert "last finite parameters" in message and "Lower the learning rate" in message
    for name, value in host_params(model).items():
        np.testing.assert_array_equal(value, before[name])  # bit for bit, and finite
    assert trainer.step == 0 and optimizer.step_count == 0
    assert optimizer.state == [{}, {}]  # the momentum buffers the failed step created are gone
    assert log.events == ["fit_start"]  # no on_step_end for the undone step


@pytest.mark.parametrize("make", [lambda m: SGD(m, lr=0.05, momentum=0.9),
                                  lambda m: Adam(m, lr=0.01)], ids=["sgd_momentum", "adam"])
def test_the_optimizer_state_is_restored_with_the_parameters(make):
    x, y = toy()
    model = MLP([3, 4, 2], seed=0)
    optimizer = make(model)
    trainer = Trainer(model, optimizer, progress=False)
    trainer.fit((x, y), epochs=1, batch_size=5, eval_data=None)  # 4 steps: state exists
    params, state, count = host_params(model), host_state(optimizer), optimizer.step_count
    optimizer.lr = 1e300  # lr · (anything nonzero) overflows float32
    with pytest.raises(NonFiniteLossError, match="that update was undone"), \
            np.errstate(all="ignore"):
        trainer.fit((x, y), epochs=1, batch_size=5, eval_data=None)
    for name, value in host_params(model).items():
        np.testing.assert_array_equal(value, params[name])
    for now, saved in zip(host_state(optimizer), state):
        assert now.keys() == saved.keys()
        for key in now:
            np.testing.assert_array_equal(now[key], saved[key])
    assert optimizer.step_count == count and trainer.step == 4


def test_huge_but_finite_parameters_do_not_stop_training():
    """The cheap test (a sum of squares) overflows at |θ| ~ 1e19; the exact test decides."""
    x, y = toy()
    x[:, 0] = 0.0  # the huge weight multiplies a zero input: the loss stays finite
    model = MLP([3, 2], seed=0)
    model.parameters()[0].data[:, 0] = 1e20
    trainer = Trainer(model, SGD(model, lr=0.01), progress=False)
    trainer.fit((x, y), epochs=1, batch_size=10, eval_data=None)
    assert trainer.step == 2
    np.testing.assert_array_equal(host_params(model)["0.weight"][:, 0], np.float32([1e20, 1e20]))


def test_non_finite_starting_parameters_are_refused_before_training():
    x, y = toy()
    model = MLP([3, 2], seed=0)
    model.parameters()[1].data[0] = np.nan
    log = Log()
    with pytest.raises(ValueError, match=r"parameters \['0.bias'\] are not finite before "
                                         r"training; initialize or load finite values"):
        Trainer(model, SGD(model, lr=0.1), callbacks=[log], progress=False).fit((x, y))
    assert log.events == []


# --------------------------------------------------------------------------- 2. errors before work
def _fails_before_any_step(data, match, error=ValueError, loss="cross_entropy", **fit):
    model = MLP([3, 2], seed=0)
    before = host_params(model)
    log = Log()
    trainer = Trainer(model, SGD(model, lr=0.1), loss=loss, callbacks=[log], progress=False)
    with pytest.raises(error, match=match):
        trainer.fit(data, batch_size=4, **fit)
    assert trainer.step == 0 and log.events == []
    for name, value in host_params(model).items():
        np.testing.assert_array_equal(value, before[name])
    assert all(m.training for _, m in model.named_modules())


def test_a_label_out_of_range_in_the_last_batch_is_found_before_the_first_step():
    x, y = toy()
    y[-1] = 5
    _fails_before_any_step((x, y), r"^data: labels must lie in \[0, 2\) for the model's 2 outputs, "
                                   r"got values in \[0, 5\]; give the output layer 6 units")
    _fails_before_any_step((x, toy()[1]), r"^eval_data: labels must lie in \[0, 2\)",
                           eval_data=(x, y))
    y[-1] = -1
    _fails_before_any_step((x, y), r"got values in \[-1, 1\]")


def test_a_custom_loss_error_names_the_epoch_and_step():
    """Labels are checked up front for the built-in losses; a custom loss fails at its step."""
    from kooplearn_prune.autograd import cross_entropy

    x, y = toy()
    y[-1] = 5  # in the last of 5 batches of 4
    model = MLP([3, 2], seed=0)
    trainer = Trainer(model, SGD(model, lr=0.1), loss=lambda out, t: cross_entropy(out, t) * 2.0,
                      progress=False)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\).* \(at epoch 1, step \d "
                                         r"of that epoch \(global step \d\), before its update\)"
                       ) as info:
        trainer.fit((x, y), batch_size=4, eval_data=None)
    assert f"step {trainer.step + 1} of that epoch" in str(info.value)  # steps before it: done


def test_an_empty_or_mismatched_evaluation_set_is_refused_before_training():
    x, y = toy()
    _fails_before_any_step((x, y), "eval_data holds no samples; pass eval_data=None to skip "
                                   "evaluation", eval_data=(x[:0], y[:0]))
    _fails_before_any_step((x, y), "eval_data: x holds 20 samples but y holds 19",
                           eval_data=(x, y[:19]))
    _fails_before_any_step((x, y), r"eval_data does not fit the model or the loss: linear: input "
                                   r"of shape \(1, 2\)", eval_data=(x[:, :2], y))
    _fails_before_any_step((x[:0], y[:0]), "data holds no samples; pass a non-empty training set")
    model = MLP([3, 2], seed=0)
    with pytest.raises(ValueError, match="evaluate: x holds no samples"):
        Trainer(model, SGD(model, lr=0.1), progress=False).evaluate(x[:0], y[:0])


def test_shapes_are_checked_by_running_the_model_and_the_loss_once():
    x, y = toy(features=4)
    _fails_before_any_step((x, y), r"data does not fit the model or the loss: linear: input of "
                                   r"shape \(1, 4\) does not fit a weight of shape \(2, 3\)")
    x, _ = toy()
    targets = np.zeros((20, 3), dtype=np.float32)  # the model has 2 outputs
    _fails_before_any_step((x, targets), r"data does not fit the model or the loss: mse_loss: "
                                         r"target shape \(1, 3\) does not match", loss="mse")


def test_zero_epochs_is_an_error():
    x, y = toy()
    _fails_before_any_step((x, y), r"epochs must be a positive integer \(passes over the data\), "
                                   r"got 0", epochs=0)


# --------------------------------------------------------------------------- 3. duplicate callbacks
def test_the_same_callback_twice_is_refused():
    model = MLP([3, 2], seed=0)
    optimizer = SGD(model, lr=0.1)
    recorder = TrajectoryRecorder(model)
    with pytest.raises(ValueError, match=r"callbacks\[1\] is the same TrajectoryRecorder object "
                                         r"as callbacks\[0\]; pass each callback once"):
        Trainer(model, optimizer, callbacks=[recorder, recorder])
    log = Log()
    trainer = Trainer(model, optimizer, callbacks=[log], progress=False)
    trainer.callbacks.append(log)  # the list is public: fit checks it again
    with pytest.raises(ValueError, match=r"callbacks\[1\] is the same Log object"):
        trainer.fit(toy())
    assert log.events == [] and trainer.step == 0


# --------------------------------------------------------------------------- the train command
def test_train_checks_save_and_epochs_before_training(tmp_path, capsys):
    missing = tmp_path / "missing" / "w.npz"
    assert main(["train", "--epochs", "1", "--no-progress", "--save", str(missing)]) == 2
    captured = capsys.readouterr()
    assert f"--save {missing}: directory {missing.parent} does not exist; create it first" \
        in captured.err
    assert "training MLP" not in captured.out and not missing.parent.exists()
    assert main(["train", "--epochs", "1", "--no-progress", "--save", str(tmp_path)]) == 2
    assert f"--save {tmp_path} is a directory" in capsys.readouterr().err
    assert main(["train", "--epochs", "0", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "--epochs must be at least 1, got 0" in captured.err and captured.out == ""
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 4-6. torch adapter
def _tiny_torch_model(torch, dtype=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    return model if dtype is None else model.to(dtype)


def _train_torch(torch, model, optimizer, steps, dtype=None):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=gen, dtype=dtype or torch.float32)
    y = torch.randint(0, 3, (16,), generator=gen)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x).float(), y).backward()
        optimizer.step()
    return x, y


def test_mask_enforcer_refuses_another_models_optimizer():
    torch = pytest.importorskip("torch")
    from kooplearn_prune.adapters.torch import MaskEnforcer, apply_masks

    model, other = _tiny_torch_model(torch), _tiny_torch_model(torch)
    masks = {"0.weight": torch.rand(6, 4) > 0.5, "2.weight": torch.rand(3, 6) > 0.5}
    apply_masks(model, masks)
    foreign = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"optimizer= holds none of the masked tensors of this "
                                         r"model \(missing \['0.weight', '2.weight'\]\)"):
        MaskEnforcer(model, foreign)
    assert not foreign._optimizer_step_pre_hooks and not foreign._optimizer_step_post_hooks
    partial = torch.optim.SGD(model[2].parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"holds not all .* \(missing \['0.weight'\]\).* "
                                         r"restrict masks= to the tensors it holds"):
        MaskEnforcer(model, partial)
    with MaskEnforcer(model, partial, masks={"2.weight": masks["2.weight"]}):  # the way out
        _train_torch(torch, model, partial, 2)
    assert not torch.any(model[2].weight[~masks["2.weight"]])
    model[0].weight_orig.requires_grad_(False)  # a frozen masked tensor needs no optimizer
    MaskEnforcer(model, partial)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_half_precision_models_are_recorded_in_float32_and_pruned(dtype_name):
    torch = pytest.importorskip("torch")
    from kooplearn_prune.adapters.torch import (
        MaskEnforcer,
        TorchRecorder,
        apply_masks,
        gradient_scores,
        koopman_masks,
    )

    dtype = getattr(torch, dtype_name)
    model = _tiny_torch_model(torch, dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    recorder = TorchRecorder(model, stop=12, record_gradients=True)
    with recorder.attach(optimizer):
        x, y = _train_torch(torch, model, optimizer, 12, dtype)
    traj = recorder.trajectory()
    assert traj.snapshots.dtype == np.float32 and traj.gradients.dtype == np.float32
    assert dict(traj.metadata.extra).items() >= {"model_dtype": dtype_name,
                                                 "recorded_dtype": "float32"}.items()
    assert traj.metadata.optimizer == "sgd"  # the optimizer's settings did not replace the note
    offset = traj.layout.offsets[traj.layout.names.index("0.weight")]
    np.testing.assert_array_equal(traj.snapshots[-1, offset:offset + 24],
                                  model[0].weight.detach().float().numpy().ravel())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 12-step window: the fixed point may be "unreliable"
        masks, report = koopman_masks(traj, "kmp", sparsity=0.5, model=model)
    assert report.sparsity == pytest.approx(0.5, abs=0.02)
    apply_masks(model, masks)
    assert model[0].weight.dtype == dtype and not torch.any(model[0].weight[~masks["0.weight"]])
    with MaskEnforcer(model, optimizer):
        _train_torch(torch, model, optimizer, 2, dtype)
    assert not torch.any(model[2].weight[~masks["2.weight"]])
    scores = gradient_scores(model, [(x, y)], loss=lambda o, t: torch.nn.functional.cross_entropy(
        o.float(), t))
    assert scores.dtype == np.float64 and np.all(np.isfinite(scores))
    with pytest.raises(TypeError, match="dtype=torch.bfloat16: NumPy has no bfloat16.*record in "
                                        "torch.float32"):
        TorchRecorder(model, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="dtype must be a floating torch dtype"):
        TorchRecorder(model, dtype="float32")


def _reparametrized_models(torch):
    from torch.nn.utils import parametrizations

    def build(wrap):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the old hooks are deprecated
            first = wrap(torch.nn.Linear(4, 4))
        return torch.nn.Sequential(first, torch.nn.ReLU(), torch.nn.Linear(4, 3))

    return {
        "_WeightNorm": build(parametrizations.weight_norm),
        "WeightNorm": build(torch.nn.utils.weight_norm),
        "SpectralNorm": build(torch.nn.utils.spectral_norm),
        "_Orthogonal": build(parametrizations.orthogonal),
    }


def test_reparametrized_weights_are_refused_by_name():
    torch = pytest.importorskip("torch")
    from kooplearn_prune.adapters.torch import TorchRecorder, check_layout, select_parameters

    for kind, model in _reparametrized_models(torch).items():
        message = (rf"prunable=None selects the Linear and Conv weights, including '0.weight' "
                   rf"\({kind}\), which a reparametrization that is not a mask computes .*"
                   rf"remove_parametrizations\(layer, 'weight'\).* prunable=\['2.weight'\]")
        with pytest.raises(ValueError, match=message):
            TorchRecorder(model)
        layout, refs = select_parameters(model, prunable=["2.weight"])
        assert [n for n, p in zip(layout.names, layout.prunable) if p] == ["2.weight"]
        raw = [r.name for r in refs if r.reparam is not None]
        assert raw and all(r.startswith("0.") for r in raw)  # recorded, unpruned
        with pytest.raises(ValueError, match=r"prunable= selects tensors of '0.weight'"):
            select_parameters(model, prunable=[raw[-1]])
        with pytest.raises(ValueError, match=r"prunable= selects tensors of '0.weight'"):
            select_parameters(model, prunable=lambda name, t: t.dim() == 2)
        marked = type(layout)(layout.names, layout.shapes,
                              tuple(n in raw or p for n, p in zip(layout.names, layout.prunable)))
        with pytest.raises(ValueError, match="the layout marks as prunable tensors of '0.weight'"):
            check_layout(model, marked)


def test_excluding_a_weight_normed_layer_records_and_prunes_the_rest():
    torch = pytest.importorskip("torch")
    from kooplearn_prune.adapters.torch import TorchRecorder, apply_masks, koopman_masks

    model = _reparametrized_models(torch)["_WeightNorm"]
    dense = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = TorchRecorder(model, stop=6, prunable=["2.weight"])
    with recorder.attach(optimizer):
        _train_torch(torch, model, optimizer, 6)
    assert "0.parametrizations.weight.original1" in recorder.layout.names
    masks, _ = koopman_masks(recorder, "magnitude", sparsity=0.5, model=model)
    assert list(masks) == ["2.weight"]
    apply_masks(model, masks)
    assert int((~masks["2.weight"]).sum()) == 6 and not torch.any(
        model[2].weight[~masks["2.weight"]])
    assert not torch.equal(model[0].weight, dense[0].weight)  # it trained, unpruned
