"""Optimizers: update rules against reference formulas and torch.optim, masks, argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kooplearn_prune.backend import asarray, to_numpy
from kooplearn_prune.nn import MLP, Parameter
from kooplearn_prune.optim import SGD, Adam, AdamW

# A small problem: the gradient of L(θ) = ½ θᵀHθ − bᵀθ + Σ cos θ is Hθ − b − sin θ.
_rng = np.random.default_rng(0)
_M = _rng.standard_normal((6, 6))
H = _M @ _M.T / 6 + np.eye(6)
BVEC = _rng.standard_normal(6)
THETA0 = _rng.standard_normal(6)
LR = 0.05


def gradient(theta: np.ndarray) -> np.ndarray:
    return H @ theta - BVEC - np.sin(theta)


def run_ours(make, steps: int = 8, dtype=np.float64, xp=np) -> np.ndarray:
    """θ after ``steps`` updates; the parameter is split in two tensors to exercise the loop."""
    a = Parameter(asarray(THETA0[:4].reshape(2, 2).astype(dtype), xp=xp))
    b = Parameter(asarray(THETA0[4:].astype(dtype), xp=xp))
    opt = make([("a", a), ("b", b)])
    for _ in range(steps):
        theta = np.concatenate([to_numpy(a.data).ravel(), to_numpy(b.data)])
        g = gradient(theta.astype(np.float64)).astype(dtype)
        a.grad = asarray(g[:4].reshape(2, 2), xp=xp)
        b.grad = asarray(g[4:], xp=xp)
        opt.step()
    return np.concatenate([to_numpy(a.data).ravel(), to_numpy(b.data)])


def reference_sgd(momentum=0.0, nesterov=False, weight_decay=0.0, steps=8) -> np.ndarray:
    """PyTorch's SGD, written out: v ← μv + g (v₁ = g₁), step g + μv (Nesterov) or v."""
    theta, v = THETA0.copy(), None
    for _ in range(steps):
        g = gradient(theta) + weight_decay * theta
        if momentum:
            v = g.copy() if v is None else momentum * v + g
            g = g + momentum * v if nesterov else v
        theta = theta - LR * g
    return theta


# --------------------------------------------------------------------------- SGD
@pytest.mark.parametrize("momentum, nesterov, weight_decay", [
    (0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.0, False, 0.1), (0.5, True, 0.01),
])
def test_sgd_matches_the_reference_formula(momentum, nesterov, weight_decay):
    def make(params):
        return SGD(params, lr=LR, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    expected = reference_sgd(momentum, nesterov, weight_decay)
    np.testing.assert_allclose(run_ours(make), expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(run_ours(make, dtype=np.float32), expected, rtol=1e-5, atol=1e-6)


def test_plain_sgd_first_step_by_hand():
    p = Parameter(np.array([1.0, -2.0]))
    p.grad = np.array([0.5, 4.0])
    SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [1.0 - 0.05, -2.0 - 0.4])


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_optimizers_on_every_backend_and_dtype(xp, dtype, kind):
    make = {"sgd": lambda params: SGD(params, lr=LR, momentum=0.9, nesterov=True,
                                      weight_decay=0.01),
            "adam": lambda params: Adam(params, lr=LR, weight_decay=0.01),
            "adamw": lambda params: AdamW(params, lr=LR, weight_decay=0.1)}[kind]
    expected = run_ours(make)  # NumPy float64, checked against formulas and torch.optim above
    got = run_ours(make, dtype=np.dtype(dtype).type, xp=xp)
    tol = 1e-12 if dtype == "float64" else 200 * np.finfo(np.float32).eps  # 8 steps of rounding
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- against torch.optim
def run_torch(name: str, steps: int = 8, **kwargs) -> np.ndarray:
    torch = pytest.importorskip("torch")
    a = torch.tensor(THETA0[:4].reshape(2, 2), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(THETA0[4:], dtype=torch.float64, requires_grad=True)
    opt = getattr(torch.optim, name)([a, b], lr=LR, **kwargs)
    for _ in range(steps):
        theta = np.concatenate([a.detach().numpy().ravel(), b.detach().numpy()])
        g = gradient(theta)
        a.grad = torch.tensor(g[:4].reshape(2, 2))
        b.grad = torch.tensor(g[4:])
        opt.step()
    return np.concatenate([a.detach().numpy().ravel(), b.detach().numpy()])


@pytest.mark.parametrize("ours, theirs, kwargs", [
    (Adam, "Adam", {}),
    (Adam, "Adam", {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    (AdamW, "AdamW", {}),
    (AdamW, "AdamW", {"betas": (0.5, 0.9), "weight_decay": 0.3}),
    (SGD, "SGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05}),
])
def test_matches_torch_optim(ours, theirs, kwargs):
    expected = run_torch(theirs, steps=12, **kwargs)
    got = run_ours(lambda params: ours(params, lr=LR, **kwargs), steps=12)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    got32 = run_ours(lambda params: ours(params, lr=LR, **kwargs), steps=12, dtype=np.float32)
    np.testing.assert_allclose(got32, expected, rtol=1e-4, atol=1e-5)


def test_adam_first_step_moves_every_entry_by_lr():
    # With bias correction, the first Adam step is lr · g/|g| (up to eps).
    p = Parameter(np.zeros(3))
    p.grad = np.array([1e-3, -5.0, 20.0])
    Adam([p], lr=0.01).step()
    np.testing.assert_allclose(p.data, [-0.01, 0.01, -0.01], rtol=1e-4)


# --------------------------------------------------------------------------- masks
def _masks(model, rng):
    return {name: rng.random(p.shape) < 0.5 for name, p in model.named_parameters()
            if name.endswith("weight")}


@pytest.mark.parametrize("make", [
    lambda m: SGD(m, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda m: Adam(m, lr=0.01, weight_decay=0.01),
    lambda m: AdamW(m, lr=0.01, weight_decay=0.1),
], ids=["sgd", "adam", "adamw"])
def test_masks_keep_pruned_weights_and_optimizer_state_at_zero(xp, dtype, make):
    rng = np.random.default_rng(1)
    model = MLP([5, 7, 3], seed=0, dtype=dtype)
    opt = make(model)
    x = asarray(rng.standard_normal((16, 5)), dtype=dtype, xp=xp)
    y = asarray(rng.integers(0, 3, 16), xp=xp)
    from kooplearn_prune.autograd import cross_entropy

    def steps(n):
        for _ in range(n):
            opt.zero_grad()
            cross_entropy(model(x), y).backward()
            opt.step()

    steps(3)  # build up optimizer state first: set_masks must zero it
    masks = _masks(model, rng)
    start = {n: to_numpy(p.data).copy() for n, p in model.named_parameters()}
    opt.set_masks(masks)
    for i in range(40):
        steps(1)
        if i in (0, 39):
            for name, p, state in zip(opt.names, opt.params, opt.state):
                if name not in masks:
                    continue
                pruned = ~masks[name]
                assert np.all(to_numpy(p.data)[pruned] == 0.0), name
                arrays = {k: to_numpy(v) for k, v in state.items() if hasattr(v, "shape")}
                assert arrays, "the optimizer keeps per-parameter state"
                for key, value in arrays.items():
                    assert np.all(value[pruned] == 0.0), f"{name} {key}"
                    assert value.dtype == np.dtype(dtype), f"{name} {key} left {dtype}"
                assert p.data.dtype == getattr(xp, dtype) and p.keep.dtype == p.data.dtype
    for name, p in model.named_parameters():
        kept = masks.get(name, np.ones(p.shape, dtype=bool))
        changed = to_numpy(p.data)[kept] != start[name][kept]
        assert changed.mean() > 0.9, f"kept entries of {name} should keep training"


def test_set_masks_none_removes_masks():
    model = MLP([3, 2], seed=0)
    opt = SGD(model, lr=0.1)
    opt.set_masks({"0.weight": np.zeros((2, 3), dtype=bool)})
    assert not np.any(model.parameters()[0].data)
    opt.set_masks(None)
    model.parameters()[0].grad = np.ones((2, 3), dtype=np.float32)
    opt.step()
    np.testing.assert_allclose(model.parameters()[0].data, -0.1)


def test_set_masks_validates_everything_before_changing_anything():
    model = MLP([3, 4, 2], seed=0)
    opt = SGD(model, lr=0.1)
    before = model.state_dict()
    good = np.zeros((4, 3), dtype=bool)
    with pytest.raises(ValueError, match=r"mask for 2.weight has shape \(3, 3\), parameter has "
                                         r"\(2, 4\)"):
        opt.set_masks({"0.weight": good, "2.weight": np.ones((3, 3), dtype=bool)})
    with pytest.raises(TypeError, match="must be boolean"):
        opt.set_masks({"0.weight": good, "2.weight": np.ones((2, 4))})
    with pytest.raises(KeyError, match="unknown parameter names"):
        opt.set_masks({"0.weight": good, "3.weight": good})
    assert all(p.mask is None for p in opt.params)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


# --------------------------------------------------------------------------- plumbing and errors
def test_parameters_can_be_given_as_module_list_or_named_pairs():
    model = MLP([3, 2], seed=0)
    assert SGD(model).names == ["0.weight", "0.bias"]
    assert SGD(model.parameters()).names == ["0", "1"]
    assert SGD(list(model.named_parameters())).names == ["0.weight", "0.bias"]


def test_zero_grad_and_parameters_without_gradient_are_skipped():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    opt = SGD([a, b], lr=0.5)
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(a.data, [0.5, 0.5])
    np.testing.assert_array_equal(b.data, [1.0, 1.0])
    opt.zero_grad()
    assert a.grad is None and opt.step_count == 1


def test_training_metadata_states_the_optimizer_part():
    model = MLP([3, 2])
    sgd = SGD(model, lr=0.1, momentum=0.9).training_metadata()
    assert (sgd.optimizer, sgd.lr, sgd.momentum, sgd.nesterov, sgd.weight_decay,
            sgd.betas) == ("sgd", 0.1, 0.9, False, 0.0, None)
    adamw = AdamW(model).training_metadata()
    assert adamw.optimizer == "adamw" and adamw.betas == (0.9, 0.999)
    assert adamw.weight_decay == 0.01 and adamw.decoupled_weight_decay
    assert adamw.momentum == 0.0 and adamw.extra["eps"] == 1e-8  # beta1 is not a momentum


@pytest.mark.parametrize("make, error, match", [
    (lambda p: SGD(p, lr=0.0), ValueError, "lr must be a positive finite number"),
    (lambda p: SGD(p, lr=-1.0), ValueError, "lr must be"),
    (lambda p: SGD(p, lr=math.nan), ValueError, "lr must be"),
    (lambda p: SGD(p, lr=math.inf), ValueError, "lr must be"),
    (lambda p: SGD(p, lr="0.1"), ValueError, "lr must be"),
    (lambda p: SGD(p, momentum=-0.1), ValueError, "momentum must be a non-negative"),
    (lambda p: SGD(p, momentum=1.0), ValueError, r"momentum must be in \[0, 1\)"),
    (lambda p: SGD(p, nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
    (lambda p: SGD(p, weight_decay=-1e-4), ValueError, "weight_decay must be"),
    (lambda p: Adam(p, betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0, 1\)"),
    (lambda p: Adam(p, betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be"),
    (lambda p: Adam(p, eps=0.0), ValueError, "eps must be positive"),
    (lambda p: AdamW(p, weight_decay=math.nan), ValueError, "weight_decay must be"),
    (lambda p: SGD([], lr=0.1), ValueError, "empty parameter list"),
    (lambda p: SGD([np.ones(2)], lr=0.1), TypeError, "not a Parameter"),
])
def test_invalid_hyperparameters_raise(make, error, match):
    with pytest.raises(error, match=match):
        make(MLP([3, 2]))


def test_apply_masks_without_optimizer_keeps_zeros_for_any_later_optimizer():
    """apply_masks stores the mask on the parameter: an optimizer made afterwards respects it."""
    from kooplearn_prune.data import load_dataset
    from kooplearn_prune.layout import layout_of
    from kooplearn_prune.nn import apply_masks
    from kooplearn_prune.pruning import global_mask, magnitude_scores
    from kooplearn_prune.training import Trainer

    data = load_dataset("digits", n_train=300, n_test=100)
    model = MLP([64, 32, 10], seed=0)
    first = SGD(model, lr=0.05, momentum=0.9)  # created before the masks: state exists
    Trainer(model, first, progress=False).fit(data, epochs=1, batch_size=32)
    layout = layout_of(model)
    theta = layout.flatten([p.data for _, p in model.named_parameters()])
    mask = global_mask(magnitude_scores(theta), 0.8, layout=layout)
    apply_masks(model, mask)
    pruned = ~layout.unflatten(mask)["0.weight"]
    for opt in (first, Adam(model, lr=1e-2)):
        Trainer(model, opt, progress=False).fit(data, epochs=2, batch_size=32)
        assert np.all(model._modules["0"].weight.data[pruned] == 0)
    assert np.all(first.state[0]["momentum_buffer"][pruned] == 0)


def test_remove_masks_lets_pruned_weights_grow_again():
    from kooplearn_prune.nn import apply_masks, remove_masks

    model = MLP([3, 4, 2], activation="tanh", seed=0)  # tanh'(0) = 1: zero rows still learn
    mask = np.ones((4, 3), dtype=bool)
    mask[0, :] = False
    apply_masks(model, {"0.weight": mask})
    assert model._modules["0"].weight.mask is not None
    assert model._modules["0"].bias.mask is None
    remove_masks(model)
    opt = SGD(model, lr=0.1)
    x = Parameter(np.ones((5, 3), dtype=np.float32))
    from kooplearn_prune.autograd import cross_entropy

    cross_entropy(model(x), np.array([0, 1, 0, 1, 0])).backward()
    opt.step()
    assert np.any(model._modules["0"].weight.data[0] != 0)


def test_the_parameter_is_the_one_source_of_a_mask():
    """set_masks is sugar for Parameter.mask: nothing else stores a mask."""
    model = MLP([3, 4, 2], seed=0)
    opt = SGD(model, lr=0.1, momentum=0.9)
    mask = np.ones((4, 3), dtype=bool)
    mask[1:3, 0] = False
    opt.set_masks({"0.weight": mask})
    weight = model._modules["0"].weight
    np.testing.assert_array_equal(weight.mask, mask)
    assert np.all(weight.data[~mask] == 0)
    assert not hasattr(opt, "masks")
    weight.mask = None  # removing it on the parameter removes it for the optimizer too
    x = Parameter(np.ones((5, 3), dtype=np.float32))
    from kooplearn_prune.autograd import cross_entropy

    cross_entropy(model(x), np.array([0, 1, 0, 1, 0])).backward()
    opt.step()
    assert np.any(weight.data[~mask] != 0)


def test_parameter_mask_setter_validates_before_changing_anything():
    model = MLP([3, 4, 2], seed=0)
    weight = model._modules["0"].weight
    before = np.array(weight.data, copy=True)
    version = weight.mask_version
    with pytest.raises(ValueError, match=r"has shape \(3, 4\), parameter has \(4, 3\)"):
        weight.mask = np.zeros((3, 4), dtype=bool)
    with pytest.raises(TypeError, match="must be boolean"):
        weight.mask = np.zeros((4, 3))
    assert weight.mask is None and weight.mask_version == version
    np.testing.assert_array_equal(weight.data, before)
    weight.mask = np.ones((4, 3), dtype=bool)  # nothing pruned: nothing to enforce
    assert weight.mask is None and weight.keep is None


def test_apply_masks_refuses_an_optimizer_of_another_model():
    from kooplearn_prune.nn import apply_masks

    model_a, model_b = MLP([3, 4, 2], seed=0), MLP([3, 4, 2], seed=1)
    opt_b = SGD(model_b, lr=0.1)
    before_a, before_b = model_a.state_dict(), model_b.state_dict()
    mask = np.zeros((4, 3), dtype=bool)
    with pytest.raises(ValueError, match="does not hold this model's parameters"):
        apply_masks(model_a, {"0.weight": mask}, optimizer=opt_b)
    for model, before in ((model_a, before_a), (model_b, before_b)):
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(value, before[name])
        assert all(p.mask is None for p in model.parameters())
