"""Modules and parameters: names, modes, state dicts and files, layers, initializers."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from kooplearn_prune import _io
from kooplearn_prune.autograd import Tensor
from kooplearn_prune.backend import asarray, namespace_of, to_numpy, use_backend
from kooplearn_prune.nn import (
    MLP,
    Identity,
    Linear,
    Module,
    Parameter,
    ReLU,
    Sequential,
    Tanh,
    init,
)


class Net(Module):
    """A nested model: encoder (Sequential), a shared parameter, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Sequential(Linear(4, 3, rng=0), Tanh(), Linear(3, 3, rng=1))
        self.scale = Parameter(np.ones(3, dtype=np.float32))
        self.head = Linear(3, 2, bias=False, rng=2)
        self.also_scale = self.scale  # the same Parameter twice: listed once

    def forward(self, x):
        return self.head(self.encoder(x) * self.scale)


def host_params(model: Module) -> dict[str, np.ndarray]:
    return {n: np.array(to_numpy(p.data)) for n, p in model.named_parameters()}


# --------------------------------------------------------------------------- names and modes
def test_mlp_parameter_names_are_dotted_and_ordered():
    model = MLP([5, 4, 3, 2])
    assert [n for n, _ in model.named_parameters()] == [
        "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert [tuple(p.shape) for p in model.parameters()] == [
        (4, 5), (4,), (3, 4), (3,), (2, 3), (2,)]
    assert model.num_parameters() == 4 * 5 + 4 + 3 * 4 + 3 + 2 * 3 + 2


def test_nested_names_are_dotted_and_list_shared_parameters_once():
    # As in PyTorch: a module's own parameters first, then each submodule's, in assignment order.
    names = [n for n, _ in Net().named_parameters()]
    assert names == ["scale", "encoder.0.weight", "encoder.0.bias", "encoder.2.weight",
                     "encoder.2.bias", "head.weight"]
    assert names == [n for n, _ in Net().named_parameters()]  # stable across instances
    assert [n for n, _ in Net().named_modules()] == ["", "encoder", "encoder.0", "encoder.1",
                                                     "encoder.2", "head"]


def test_reassigning_an_attribute_unregisters_it():
    net = Net()
    net.scale = None
    net.also_scale = None
    assert "scale" not in dict(net.named_parameters())
    net.head = Identity()
    assert [n for n, _ in net.named_parameters()][-1] == "encoder.2.bias"


def test_module_init_must_come_first():
    class Forgetful(Module):
        def __init__(self) -> None:
            self.w = Parameter(np.ones(2))

    with pytest.raises(AttributeError, match="Module.__init__"):
        Forgetful()


def test_forward_must_be_implemented():
    with pytest.raises(NotImplementedError, match="forward"):
        Module()(1)


def test_train_and_eval_reach_every_submodule():
    net = Net()
    assert all(m.training for _, m in net.named_modules())
    assert net.eval() is net
    assert not any(m.training for _, m in net.named_modules())
    net.train()
    assert all(m.training for _, m in net.named_modules())


def test_zero_grad_clears_every_gradient():
    model = MLP([3, 4, 2])
    model(np.ones((2, 3), dtype=np.float32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- state dicts and files
def test_state_dict_is_a_host_copy(xp):
    model = MLP([3, 4, 2])
    state = model.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in state.values())
    state["0.weight"][...] = 0.0
    assert not np.all(to_numpy(model.parameters()[0].data) == 0.0)


def test_save_load_round_trip(xp, tmp_path):
    source = MLP([6, 5, 3], seed=1)
    target = MLP([6, 5, 3], seed=2)
    assert not np.array_equal(host_params(source)["0.weight"], host_params(target)["0.weight"])
    path = source.save(tmp_path / "model.npz")
    assert path == tmp_path / "model.npz" and path.exists()
    assert target.load(path) is target
    for name, value in host_params(source).items():
        np.testing.assert_array_equal(host_params(target)[name], value)
    p = target.parameters()[0]
    assert namespace_of(p.data) is xp and p.dtype == xp.float32
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temporary file left behind


def test_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    MLP([3, 2], seed=0).save(path)
    original = path.read_bytes()

    def half_write(fh, **arrays):
        fh.write(b"PK\x03\x04 a truncated zip")
        raise OSError("disk full")

    monkeypatch.setattr(_io.np, "savez", half_write)
    with pytest.raises(OSError, match="disk full"):
        MLP([3, 2], seed=1).save(path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["model.npz"]


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def broken(fh, **arrays):
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.np, "savez", broken)
    with pytest.raises(KeyboardInterrupt):
        MLP([3, 2]).save(tmp_path / "model.npz")
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MLP([3, 2]).save(tmp_path / "nowhere" / "model.npz")


def test_load_state_dict_checks_every_shape_before_changing_anything():
    model = MLP([4, 3, 2], seed=0)
    before = host_params(model)
    state = {k: v + 1.0 for k, v in before.items()}
    state["2.weight"] = np.zeros((3, 3), dtype=np.float32)  # wrong shape, listed after 0.weight
    with pytest.raises(ValueError, match=r"2\.weight has shape \(3, 3\) in the state dict but "
                                         r"\(2, 3\) in the model"):
        model.load_state_dict(state)
    for name, value in host_params(model).items():
        np.testing.assert_array_equal(value, before[name])


def test_load_state_dict_key_checks():
    model = MLP([4, 3, 2], seed=0)
    before = host_params(model)
    state = model.state_dict()
    del state["0.bias"]
    state["extra"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"missing keys \['0.bias'\], unexpected keys \['extra'\]"):
        model.load_state_dict(state)
    np.testing.assert_array_equal(host_params(model)["0.weight"], before["0.weight"])
    partial = {"0.bias": np.full(3, 7.0)}  # float64 values are cast to the parameter's dtype
    model.load_state_dict(partial, strict=False)
    assert model.parameters()[1].dtype == np.float32
    np.testing.assert_array_equal(host_params(model)["0.bias"], np.full(3, 7.0))


# --------------------------------------------------------------------------- layers
def test_mlp_same_seed_same_weights_on_every_backend():
    with use_backend("numpy"):
        ref = host_params(MLP([8, 6, 3], seed=5))
    with use_backend("array_api_strict") as xp:
        strict_model = MLP([8, 6, 3], seed=5)
        assert namespace_of(strict_model.parameters()[0].data) is xp
        strict = host_params(strict_model)
    for name in ref:
        np.testing.assert_array_equal(ref[name], strict[name])
    assert not np.array_equal(ref["0.weight"], host_params(MLP([8, 6, 3], seed=6))["0.weight"])


def ulps(dtype: str, reference: np.ndarray) -> dict[str, float]:
    """Tolerances for a result in ``dtype`` against a float64 reference of a few sums of
    products: 100 units in the last place, relative and of the reference's largest entry (the
    results here are off by a few ulps at most)."""
    eps = float(np.finfo(dtype).eps)
    return {"rtol": 100 * eps, "atol": 100 * eps * float(np.abs(reference).max())}


def test_linear_forward_and_backward_match_numpy(xp, dtype):
    layer = Linear(4, 3, rng=0, dtype=dtype)
    layer.load_state_dict({"bias": np.array([0.5, -1.0, 2.0])}, strict=False)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4)).astype(dtype)
    out = layer(asarray(x, xp=xp))  # a raw backend array is accepted
    assert isinstance(out, Tensor) and out.shape == (5, 3) and out.dtype == getattr(xp, dtype)
    w, b = (to_numpy(p.data).astype(np.float64) for p in (layer.weight, layer.bias))
    expected = x.astype(np.float64) @ w.T + b
    np.testing.assert_allclose(to_numpy(out.data), expected, **ulps(dtype, expected))

    upstream = rng.standard_normal((5, 3)).astype(dtype)
    x_t = Tensor(asarray(x, xp=xp), requires_grad=True)
    (layer(x_t) * Tensor(asarray(upstream, xp=xp))).sum().backward()
    g = upstream.astype(np.float64)
    for tensor, grad in ((layer.weight, g.T @ x), (layer.bias, g.sum(axis=0)), (x_t, g @ w)):
        assert tensor.grad.dtype == tensor.dtype == getattr(xp, dtype)
        np.testing.assert_allclose(to_numpy(tensor.grad), grad, **ulps(dtype, grad))
    assert not np.any(to_numpy(Linear(4, 3, dtype=dtype).bias.data))  # biases start at zero


def test_mlp_forward_and_backward_in_each_dtype(xp, dtype):
    # x → tanh(x W0ᵀ + b0) → W2ᵀ + b2, then the loss Σ out · G: every gradient by hand, in float64
    # on the model's own values.
    model = MLP([5, 7, 3], activation="tanh", seed=4, dtype=dtype)
    assert all(p.dtype == getattr(xp, dtype) for p in model.parameters())
    rng = np.random.default_rng(2)
    model.load_state_dict({"0.bias": rng.standard_normal(7), "2.bias": rng.standard_normal(3)},
                          strict=False)
    W0, b0, W2, b2 = (v.astype(np.float64) for v in model.state_dict().values())
    x = rng.standard_normal((6, 5)).astype(dtype)
    G = rng.standard_normal((6, 3)).astype(dtype)
    out = model(asarray(x, xp=xp))
    (out * Tensor(asarray(G, xp=xp))).sum().backward()

    h = np.tanh(x.astype(np.float64) @ W0.T + b0)
    expected = h @ W2.T + b2
    g = G.astype(np.float64)
    dz = (g @ W2) * (1.0 - h * h)
    grads = {"0.weight": dz.T @ x, "0.bias": dz.sum(axis=0), "2.weight": g.T @ h,
             "2.bias": g.sum(axis=0)}
    assert out.dtype == getattr(xp, dtype)
    np.testing.assert_allclose(to_numpy(out.data), expected, **ulps(dtype, expected))
    for name, p in model.named_parameters():
        assert p.grad.dtype == p.dtype, name
        np.testing.assert_allclose(to_numpy(p.grad), grads[name], err_msg=name,
                                   **ulps(dtype, grads[name]))


def test_linear_without_bias_and_repr():
    layer = Linear(3, 2, bias=False)
    assert layer.bias is None
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    assert "in_features=3, out_features=2, bias=False" in repr(layer)
    assert "(1): ReLU()" in repr(MLP([2, 3, 1]))


def test_linear_rejects_input_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"input of shape \(2, 5\) does not fit a weight of shape "
                                         r"\(3, 4\)"):
        Linear(4, 3)(np.ones((2, 5), dtype=np.float32))


@pytest.mark.parametrize("kwargs, match", [
    ({"in_features": 0, "out_features": 2}, "in_features must be a positive integer"),
    ({"in_features": 2, "out_features": 2.5}, "out_features must be a positive integer"),
    ({"in_features": 2, "out_features": 2, "init": "orthogonal"}, "init='orthogonal' is unknown"),
])
def test_linear_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Linear(**kwargs)


def test_mlp_and_sequential_argument_errors():
    with pytest.raises(ValueError, match="at least two positive integers"):
        MLP([5])
    with pytest.raises(ValueError, match="at least two positive integers"):
        MLP([5, 0, 2])
    with pytest.raises(ValueError, match="activation='gelu' is unknown"):
        MLP([2, 2], activation="gelu")
    with pytest.raises(TypeError, match="item 1 is a function"):
        Sequential(ReLU(), lambda x: x)


def test_sequential_container():
    seq = Sequential(Linear(2, 3), ReLU(), Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[1], ReLU) and isinstance(seq[-1], Linear)
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear"]
    assert seq(np.ones((4, 2), dtype=np.float32)).shape == (4, 1)


def test_activation_choice_selects_the_initializer():
    # relu → Kaiming uniform (bound √(6/fan_in)); tanh → Xavier uniform (√(6/(fan_in+fan_out)))
    relu_w = to_numpy(MLP([400, 100, 10], activation="relu", seed=0).parameters()[0].data)
    tanh_w = to_numpy(MLP([400, 100, 10], activation="tanh", seed=0).parameters()[0].data)
    assert math.sqrt(6 / 400) * 0.98 < np.abs(relu_w).max() <= math.sqrt(6 / 400)
    assert math.sqrt(6 / 500) * 0.98 < np.abs(tanh_w).max() <= math.sqrt(6 / 500)


# --------------------------------------------------------------------------- initializers
@pytest.mark.parametrize("name, expected_var", [
    ("kaiming_uniform", 2.0 / 300), ("kaiming_normal", 2.0 / 300),
    ("xavier_uniform", 2.0 / (300 + 200)), ("xavier_normal", 2.0 / (300 + 200)),
])
def test_initializer_variances(name, expected_var):
    w = init.INITIALIZERS[name]((200, 300), np.random.default_rng(0))  # fan_in 300, fan_out 200
    assert w.dtype == np.float32 and w.shape == (200, 300)
    assert abs(float(w.mean())) < 0.01 * math.sqrt(expected_var)
    assert float(w.var()) == pytest.approx(expected_var, rel=0.02)


def test_initializers_are_seeded_and_respect_gain():
    a = init.kaiming_uniform((5, 4), 3)
    np.testing.assert_array_equal(a, init.kaiming_uniform((5, 4), 3))
    w = init.xavier_normal((200, 300), 0, gain=2.0)
    assert float(w.var()) == pytest.approx(4.0 * 2.0 / 500, rel=0.02)
    assert init.kaiming_normal((3, 2), 0, dtype="float64").dtype == np.float64


def test_fans():
    assert init.fans((8, 3)) == (3, 8)
    assert init.fans((8, 3, 5, 5)) == (75, 200)  # convolution: times the receptive field
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.fans((8,))


def test_linear_casts_data_of_another_dtype_to_its_own():
    """NumPy's default float64 data must not turn a float32 network's step into float64."""
    from kooplearn_prune.autograd import cross_entropy

    model = MLP([4, 6, 3], seed=0, dtype="float32")
    x64 = np.random.default_rng(0).standard_normal((5, 4))  # float64, as NumPy makes it
    logits = model(x64)
    assert logits.data.dtype == np.float32
    cross_entropy(logits, np.array([0, 1, 2, 0, 1])).backward()
    assert all(p.grad.dtype == np.float32 for p in model.parameters())
    np.testing.assert_allclose(logits.data, model(x64.astype(np.float32)).data, rtol=1e-6)
