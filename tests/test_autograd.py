"""The autograd engine: every backward rule against finite differences, graph semantics, dtypes.

Shapes (including broadcasting) are drawn with hypothesis; the values come from a seeded NumPy
generator so that a failing example replays exactly. A table with every op also runs on every
backend (numpy, array_api_strict, CuPy when present; the ``xp`` fixture) in float32 and float64
(the ``dtype`` fixture): the backward pass runs in that dtype against float64 finite differences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kooplearn_prune import autograd as ag
from kooplearn_prune.autograd import (
    GradcheckError,
    Tensor,
    cross_entropy,
    enable_grad,
    gradcheck,
    is_grad_enabled,
    linear,
    log_softmax,
    mse_loss,
    no_grad,
    softmax,
)
from kooplearn_prune.backend import asarray, to_numpy
from kooplearn_prune.nn import MLP
from kooplearn_prune.optim import SGD, Adam

FAST = settings(max_examples=50, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
nonscalar_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1,
                                          max_side=4)


def normal(seed: int, *shapes_: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes_]


def positive(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Values in [0.5, 2): safe for log, division and real powers."""
    return np.random.default_rng(seed).uniform(0.5, 2.0, size=shape)


def away_from_zero(x: np.ndarray) -> np.ndarray:
    """Keep |x| >= 0.1 so that finite differences never straddle a kink of relu."""
    return np.where(np.abs(x) < 0.1, np.sign(x) * 0.1 + x, x)


@st.composite
def shape_and_axis(draw, min_dims: int = 1):
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=1, max_side=4))
    ndim = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        axis = None
    elif kind == "int":
        axis = draw(st.integers(-ndim, ndim - 1))
    else:
        chosen = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
        axis = tuple(a - ndim if draw(st.booleans()) else a for a in chosen)
    return shape, axis


# =========================================================================== elementwise
@FAST
@given(pairs, SEEDS)
def test_add_sub_mul_broadcast(bs, seed):
    a, b = normal(seed, *bs.input_shapes)
    assert gradcheck(lambda x, y: x + y, a, b)
    assert gradcheck(lambda x, y: x - y, a, b)
    assert gradcheck(lambda x, y: x * y, a, b)


@FAST
@given(pairs, SEEDS)
def test_div_broadcast(bs, seed):
    a = normal(seed, bs.input_shapes[0])[0]
    b = positive(seed + 1, bs.input_shapes[1]) * np.sign(normal(seed + 2, bs.input_shapes[1])[0])
    assert gradcheck(lambda x, y: x / y, a, b)


@FAST
@given(shapes, SEEDS, st.floats(-3.0, 3.0))
def test_ops_with_python_scalars(shape, seed, c):
    a = positive(seed, shape)
    assert gradcheck(lambda x: x + c, a)
    assert gradcheck(lambda x: c + x, a)
    assert gradcheck(lambda x: x - c, a)
    assert gradcheck(lambda x: c - x, a)
    assert gradcheck(lambda x: x * c, a)
    assert gradcheck(lambda x: c * x, a)
    assert gradcheck(lambda x: x / 1.7, a)
    assert gradcheck(lambda x: 1.7 / x, a)
    assert gradcheck(lambda x: -x, a)


@FAST
@given(shapes, SEEDS, st.floats(-2.0, 3.0))
def test_pow_scalar_exponent(shape, seed, p):
    assert gradcheck(lambda x: x**p, positive(seed, shape))


@FAST
@given(pairs, SEEDS)
def test_pow_tensor_exponent_broadcast(bs, seed):
    base = positive(seed, bs.input_shapes[0])
    exponent = normal(seed, bs.input_shapes[1])[0]
    assert gradcheck(lambda x, p: x**p, base, exponent)
    assert gradcheck(lambda x: 1.5**x, exponent)


@FAST
@given(shapes, SEEDS)
def test_unary_functions(shape, seed):
    (a,) = normal(seed, shape)
    assert gradcheck(ag.exp, a)
    assert gradcheck(ag.log, positive(seed, shape))
    assert gradcheck(ag.tanh, a)
    assert gradcheck(ag.sigmoid, a * 5)
    assert gradcheck(ag.relu, away_from_zero(a))
    assert gradcheck(lambda x: x.exp().log().tanh().sigmoid(), a)


# =========================================================================== linear algebra
@FAST
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), SEEDS)
def test_matmul_vectors_and_matrices(m, k, n, seed):
    rng = np.random.default_rng(seed)
    A, Bm = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    u, v = rng.standard_normal(k), rng.standard_normal(k)
    assert gradcheck(lambda x, y: x @ y, u, v)  # 1-D @ 1-D: a scalar
    assert gradcheck(lambda x, y: x @ y, A, v)  # 2-D @ 1-D
    assert gradcheck(lambda x, y: x @ y, u, Bm)  # 1-D @ 2-D
    assert gradcheck(lambda x, y: x @ y, A, Bm)


@FAST
@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, min_side=1,
                                         max_side=3),
       st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.booleans(), SEEDS)
def test_matmul_batched_broadcast(batch, m, k, n, vector_side, seed):
    sa = (*batch.input_shapes[0], m, k)
    sb = (*batch.input_shapes[1], k, n)
    a, b = normal(seed, sa, sb)
    assert gradcheck(lambda x, y: x @ y, a, b)
    if vector_side:  # batched matrix against a vector, both ways
        (v,) = normal(seed + 1, (k,))
        assert gradcheck(lambda x, y: x @ y, a, v)
        assert gradcheck(lambda x, y: y @ x, b, v)


@FAST
@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), st.booleans(), SEEDS)
def test_linear(batch, n_in, n_out, bias, seed):
    x, w, b = normal(seed, (batch, n_in), (n_out, n_in), (n_out,))
    if bias:
        assert gradcheck(linear, x, w, b)
    else:
        assert gradcheck(linear, x, w)


# =========================================================================== reductions
@FAST
@given(shape_and_axis(), st.booleans(), SEEDS)
def test_sum_mean_max_axis_keepdims(sa, keepdims, seed):
    shape, axis = sa
    (a,) = normal(seed, shape)
    assert gradcheck(lambda x: ag.sum(x, axis, keepdims), a)
    assert gradcheck(lambda x: ag.mean(x, axis, keepdims), a)
    assert gradcheck(lambda x: ag.max(x, axis, keepdims), a)
    assert gradcheck(lambda x: x.sum(axis=axis, keepdims=keepdims), a)


def test_reductions_of_a_scalar_and_over_everything():
    assert gradcheck(lambda x: x.sum(), np.array(2.0))
    assert gradcheck(lambda x: x.mean(), np.arange(6.0).reshape(2, 3))
    assert gradcheck(lambda x: x.max(), np.array([0.3, -1.0, 2.0]))


def test_max_shares_the_gradient_among_ties():
    a = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]]), requires_grad=True)
    a.max(axis=1).sum().backward()
    np.testing.assert_array_equal(a.grad, [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])


def test_reduction_axis_out_of_range():
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        ag.sum(Tensor(np.ones((2, 3))), axis=2)


# =========================================================================== shapes, indexing
@st.composite
def shape_and_new_shape(draw):
    shape = draw(nonscalar_shapes)
    size = math.prod(shape)
    options = [(size,), (-1,), (1, size), tuple(reversed(shape)), (size, 1, 1), shape]
    return shape, draw(st.sampled_from(options))


@FAST
@given(shape_and_new_shape(), SEEDS)
def test_reshape(sn, seed):
    shape, new = sn
    (a,) = normal(seed, shape)
    assert gradcheck(lambda x: ag.reshape(x, new), a)
    assert gradcheck(lambda x: x.reshape(*new), a)


@FAST
@given(nonscalar_shapes.flatmap(lambda s: st.tuples(st.just(s), st.permutations(range(len(s))))),
       SEEDS)
def test_transpose(sp, seed):
    shape, perm = sp
    (a,) = normal(seed, shape)
    assert gradcheck(lambda x: ag.transpose(x, tuple(perm)), a)
    assert gradcheck(lambda x: x.T, a)


@FAST
@given(nonscalar_shapes.flatmap(lambda s: st.tuples(
    st.just(s), hnp.basic_indices(s, allow_newaxis=True, allow_ellipsis=True))), SEEDS)
def test_basic_indexing(sk, seed):
    shape, key = sk
    (a,) = normal(seed, shape)
    assert gradcheck(lambda x: x[key], a)


@FAST
@given(nonscalar_shapes, st.data(), SEEDS)
def test_integer_array_indexing_with_repeats(shape, data, seed):
    (a,) = normal(seed, shape)
    idx = np.array(data.draw(st.lists(st.integers(0, shape[0] - 1), min_size=1, max_size=6)))
    assert gradcheck(lambda x: x[idx], a)
    axis = data.draw(st.integers(0, len(shape) - 1))
    idx_axis = np.array(data.draw(st.lists(st.integers(0, shape[axis] - 1), min_size=1,
                                           max_size=6)))
    assert gradcheck(lambda x: ag.take(x, idx_axis, axis=axis), a)


def test_repeated_rows_add_their_gradients():
    a = Tensor(np.zeros((3, 2)), requires_grad=True)
    a[np.array([2, 0, 2, 2])].sum().backward()
    np.testing.assert_array_equal(a.grad, [[1.0, 1.0], [0.0, 0.0], [3.0, 3.0]])


def test_indexing_with_a_2d_array_is_refused():
    with pytest.raises(TypeError, match="1-D integer array"):
        Tensor(np.ones((3, 2)))[np.zeros((2, 2), dtype=np.int64)]


# =========================================================================== fused functions
@FAST
@given(shape_and_axis().filter(lambda sa: isinstance(sa[1], int)), SEEDS)
def test_log_softmax_and_softmax(sa, seed):
    shape, axis = sa
    (a,) = normal(seed, shape)
    assert gradcheck(lambda x: log_softmax(x, axis=axis), a * 3)
    assert gradcheck(lambda x: softmax(x, axis=axis), a * 3)


def test_softmax_values_are_stable_for_large_logits():
    z = Tensor(np.array([[1000.0, 1000.0, -1000.0]]))
    np.testing.assert_allclose(softmax(z).data, [[0.5, 0.5, 0.0]])
    np.testing.assert_allclose(log_softmax(z).data[0, :2], [-math.log(2)] * 2)


@FAST
@given(st.integers(1, 5), st.integers(2, 5), st.sampled_from(["mean", "sum"]), SEEDS)
def test_cross_entropy(batch, classes, reduction, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, classes)) * 2
    y = rng.integers(0, classes, size=batch)
    assert gradcheck(lambda t: cross_entropy(t, y, reduction=reduction), z)
    # forward value: the definition, written out
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    expected = -logp[np.arange(batch), y].sum() / (batch if reduction == "mean" else 1)
    # Both sides subtract numbers of size |z| to get the loss, so their rounding is ~eps·|z| in
    # absolute terms: a small loss (a confident right answer) needs that atol.
    np.testing.assert_allclose(cross_entropy(Tensor(z), y, reduction).data, expected, rtol=1e-12,
                               atol=64 * np.finfo(np.float64).eps * (1 + np.abs(z).max()))


@FAST
@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from(["mean", "sum"]), SEEDS)
def test_mse_loss(batch, width, reduction, seed):
    pred, target = normal(seed, (batch, width), (batch, width))
    assert gradcheck(lambda p: mse_loss(p, target, reduction=reduction), pred)
    expected = ((pred - target) ** 2).sum() / (pred.size if reduction == "mean" else 1)
    np.testing.assert_allclose(mse_loss(Tensor(pred), target, reduction).data, expected)


def test_mse_loss_accepts_a_1d_target_for_one_output():
    pred, target = normal(0, (4, 1), (4,))
    assert gradcheck(lambda p: mse_loss(p, target), pred)
    assert mse_loss(Tensor(pred), target).shape == ()


# =========================================================================== other backends
def _cases(rng, xp=np):
    """(name, fn, inputs) covering every op; inputs are host float64 arrays, constants on xp."""
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((1, 4))
    pos = rng.uniform(0.5, 2.0, (3, 4))
    idx = asarray(np.array([2, 0, 2]), xp=xp)
    labels = asarray(np.array([1, 0, 3]), xp=xp)
    target = asarray(np.ones((3, 4)), xp=xp)
    return [
        ("add", lambda x, y: x + y, [a, b]),
        ("sub", lambda x, y: x - y, [a, b]),
        ("mul", lambda x, y: x * y * 2.0, [a, b]),
        ("div", lambda x, y: x / y + 1.0 / y, [a, pos]),
        ("neg", lambda x: -x, [a]),
        ("pow", lambda x, p: x**p + x**2.5 + 1.5**p, [pos, b]),
        ("matmul", lambda x, y: x @ y, [a, rng.standard_normal((4, 2))]),
        ("matmul_batched", lambda x, y: x @ y,
         [rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((3, 4, 2))]),
        ("matmul_vec", lambda x, y: x @ y, [rng.standard_normal(4), rng.standard_normal(4)]),
        ("sum", lambda x: x.sum(axis=(0, -1), keepdims=True), [rng.standard_normal((2, 3, 2))]),
        ("mean", lambda x: x.mean(axis=1), [a]),
        ("max", lambda x: x.max(axis=0, keepdims=True), [a]),
        ("exp_log", lambda x: x.exp() + x.log(), [pos]),
        ("tanh_sigmoid", lambda x: x.tanh() * x.sigmoid(), [a]),
        ("relu", ag.relu, [away_from_zero(a)]),
        ("reshape_transpose", lambda x: x.reshape(2, 6).T, [a]),
        ("getitem", lambda x: x[1:, ::2], [a]),
        ("getitem_int_array", lambda x: x[idx], [a]),
        ("take_axis1", lambda x: ag.take(x, idx, axis=1), [a]),
        ("log_softmax", lambda x: log_softmax(x, axis=0), [a]),
        ("softmax", softmax, [a]),
        ("cross_entropy", lambda z: cross_entropy(z, labels), [a]),
        ("mse_loss", lambda p: mse_loss(p, target), [a]),
        ("linear", linear, [a, rng.standard_normal((5, 4)), rng.standard_normal(5)]),
    ]


CASE_NAMES = [c[0] for c in _cases(np.random.default_rng(0))]


@pytest.mark.parametrize("case", range(len(CASE_NAMES)), ids=CASE_NAMES)
def test_gradcheck_on_every_backend(xp, dtype, case):
    """Every backward rule, on every backend, in float32 and float64.

    The backward pass runs in ``dtype``; the reference is float64 finite differences, so the
    tolerance is ``default_tolerances(dtype)``: 100 ulps in float32 (the rules' own rounding is
    at most ~3 ulps here), the finite difference's accuracy in float64.
    """
    name, fn, inputs = _cases(np.random.default_rng(case), xp)[case]
    arrays = [asarray(x, dtype=dtype, xp=xp) for x in inputs]
    assert gradcheck(fn, *arrays)
    # gradcheck also refuses a promoted gradient; say it here in so many words
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    assert out.dtype == getattr(xp, dtype), name
    (out * 1.0).sum().backward()
    for i, t in enumerate(tensors):
        assert t.grad is not None and t.grad.dtype == t.dtype == getattr(xp, dtype), (name, i)


# =========================================================================== gradcheck itself
def _square_with_wrong_backward(x: Tensor) -> Tensor:
    # d(x²)/dx is 2x; this backward claims 3x
    return Tensor._make(x.data * x.data, x.xp, (x,), lambda g: (3.0 * x.data * g,), "bad_square")


def test_gradcheck_detects_a_wrong_backward_with_a_readable_message():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda t: _square_with_wrong_backward(t).sum(), x)
    message = str(info.value)
    assert "input 0 (shape (2, 2)): 4 of 4 entries differ" in message
    # the worst entry is x = 3 at index (1, 1): backward says 3·3 = 9, the truth is 2·3 = 6
    assert "worst at index (1, 1): backward gives 9, finite differences give 6" in message
    assert isinstance(info.value, AssertionError)


def test_gradcheck_in_float32_separates_rounding_from_a_slightly_wrong_rule(xp):
    # A float32 backward that is right passes; one that is 0.1 % off (a float16 intermediate
    # would do that) fails, though it is far below what float32 finite differences resolve.
    x = asarray(np.linspace(0.5, 2.0, 6, dtype=np.float32).reshape(2, 3), xp=xp)

    def square(t: Tensor, factor: float) -> Tensor:
        return Tensor._make(t.data * t.data, t.xp, (t,), lambda g: (factor * t.data * g,), "sq")

    assert gradcheck(lambda t: square(t, 2.0), x)
    with pytest.raises(GradcheckError, match="6 of 6 entries differ"):
        gradcheck(lambda t: square(t, 2.002), x)


def test_gradcheck_refuses_a_promoted_gradient(xp):
    # A float32 input whose backward hands back float64: the silent promotion the engine avoids.
    def promoting(t: Tensor) -> Tensor:
        return Tensor._make(t.data * 2.0, t.xp, (t,),
                            lambda g: (t.xp.astype(g, t.xp.float64) * 2.0,), "promote")

    x = asarray(np.ones(3, dtype=np.float32), xp=xp)
    with pytest.raises(GradcheckError, match="gradient dtype float64 != input dtype float32"):
        gradcheck(promoting, x)
    assert gradcheck(promoting, asarray(np.ones(3), xp=xp))  # float64 throughout: fine


def test_gradcheck_directional_mode():
    x = np.random.default_rng(0).standard_normal((30, 20))
    assert gradcheck(lambda t: (t * t).sum(axis=1), x, directional=True)
    with pytest.raises(GradcheckError, match="directional derivative"):
        gradcheck(_square_with_wrong_backward, x, directional=True)


def test_gradcheck_detects_a_missing_gradient():
    # The backward forgets the second input entirely: its gradient reads as zero.
    def forgetful(x: Tensor, y: Tensor) -> Tensor:
        return Tensor._make(x.data * y.data, x.xp, (x, y), lambda g: (g * y.data, None), "mul")

    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(forgetful, np.ones(3), np.full(3, 2.0))


def test_gradcheck_argument_errors():
    with pytest.raises(ValueError, match="at least one input"):
        gradcheck(lambda: None)
    with pytest.raises(TypeError, match="must return a Tensor"):
        gradcheck(lambda t: t.data, np.ones(2))


# =========================================================================== graph semantics
def test_reused_node_gets_its_gradient_once():
    a = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    b = a + a
    b.sum().backward()
    np.testing.assert_array_equal(a.grad, [2.0, 2.0, 2.0])


def test_diamond_graph():
    # d = c + c·c with c = 2a: dd/da = 2 + 8a
    a = Tensor(np.array([0.5, -1.0]), requires_grad=True)
    c = a * 2.0
    (c + c * c).sum().backward()
    np.testing.assert_allclose(a.grad, 2.0 + 8.0 * a.data)
    assert c.grad is None  # intermediate gradients are not kept


def test_gradients_accumulate_across_backward_calls():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (a * 3.0).sum().backward()
    (a * a).sum().backward()
    np.testing.assert_array_equal(a.grad, [3.0 + 2.0, 3.0 + 4.0])
    a.zero_grad()
    assert a.grad is None


def test_deep_graph_has_no_recursion_limit():
    a = Tensor(np.ones(3), requires_grad=True)
    b = a
    for _ in range(5000):
        b = b * 1.0001 + 0.0
    b.sum().backward()
    np.testing.assert_allclose(a.grad, np.full(3, 1.0001**5000), rtol=1e-9)


def test_constants_get_no_gradient():
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    c = Tensor(np.array([3.0, 4.0]))
    (w * c).sum().backward()
    np.testing.assert_array_equal(w.grad, [3.0, 4.0])
    assert c.grad is None


def test_linear_computes_no_gradient_for_the_data():
    x = Tensor(np.ones((2, 3)))
    w = Tensor(np.ones((4, 3)), requires_grad=True)
    out = linear(x, w)
    g_x, g_w = out._backward(np.ones((2, 4)))
    assert g_x is None
    np.testing.assert_array_equal(g_w, np.full((4, 3), 2.0))


def test_no_grad_builds_no_graph():
    a = Tensor(np.ones(3), requires_grad=True)
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        b = (a * 2.0).exp().sum()
        with enable_grad():
            assert is_grad_enabled()
            c = a * 2.0
        assert not is_grad_enabled()
    assert is_grad_enabled()
    assert not b.requires_grad and b._parents == () and b._backward is None
    assert c.requires_grad and c._parents == (a,)
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        b.backward()


def test_no_grad_restores_the_flag_after_an_exception():
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError("x")
    assert is_grad_enabled()


def test_backward_needs_a_scalar_or_an_explicit_gradient():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(ValueError, match="scalar output"):
        (a * 2.0).backward()
    (a * 2.0).backward(np.array([1.0, 10.0]))
    np.testing.assert_array_equal(a.grad, [2.0, 20.0])


def test_numpy_arrays_on_the_left_give_tensors():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    out = np.array([3.0, 4.0]) * a + np.ones((2, 2)) @ a
    assert isinstance(out, Tensor)
    out.sum().backward()
    np.testing.assert_array_equal(a.grad, [3.0 + 2.0, 4.0 + 2.0])


def test_matmul_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 2\) do not align"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 2)))
    with pytest.raises(ValueError, match="at least one dimension"):
        ag.matmul(Tensor(np.array(2.0)), Tensor(np.ones(2)))


def test_linear_shape_error_is_clear():
    with pytest.raises(ValueError, match=r"input of shape \(2, 5\) does not fit a weight"):
        linear(Tensor(np.ones((2, 5))), Tensor(np.ones((4, 3))))


def test_loss_input_errors():
    z = Tensor(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got values in \[0, 4\]"):
        cross_entropy(z, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="labels must lie in"):
        cross_entropy(z, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        cross_entropy(z, np.array([0, 1]))
    with pytest.raises(TypeError, match="labels must be integers"):
        cross_entropy(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="logits must be"):
        cross_entropy(Tensor(np.zeros(4)), np.array([0]))
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(z, np.array([0, 1, 2]), reduction="none")
    with pytest.raises(ValueError, match="does not match prediction shape"):
        mse_loss(z, np.zeros((4, 3)))


def test_tensor_conveniences():
    t = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True, name="w")
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2
    assert t.is_leaf and "name='w'" in repr(t) and "requires_grad=True" in repr(t)
    assert Tensor(np.array(2.5)).item() == 2.5
    d = (t * 2.0).detach()
    assert not d.requires_grad and d.is_leaf
    assert isinstance(t.numpy(), np.ndarray)
    assert Tensor([1.0, 2.0], dtype="float32").dtype == np.float32


# =========================================================================== dtypes
def test_dtype_is_kept_through_ops(xp, dtype):
    # Python scalars are weak (NumPy 2): they never promote float32 to float64.
    x = Tensor(asarray(np.linspace(0.5, 1.5, 6).reshape(2, 3), dtype=dtype, xp=xp),
               requires_grad=True)
    out = ((x * 2.0 + 1.0) / 3.0 - 0.5) ** 2.0
    out = out.exp().log().tanh().sigmoid().relu() + 2.0**x + 1.0 / x
    out = log_softmax(out, axis=1).sum() + softmax(out).max() + out.mean(axis=0).sum()
    assert out.dtype == getattr(xp, dtype)
    out.backward()
    assert x.grad.dtype == getattr(xp, dtype)


def test_mlp_step_keeps_the_dtype_of_grads_params_and_state(xp, dtype):
    rng = np.random.default_rng(0)
    model = MLP([6, 8, 3], seed=0, dtype=dtype)
    x = asarray(rng.standard_normal((5, 6)), dtype=dtype, xp=xp)
    y = asarray(np.array([0, 1, 2, 1, 0]), xp=xp)
    want = getattr(xp, dtype)
    for opt in (SGD(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                Adam(model, lr=1e-3, weight_decay=1e-3)):
        opt.zero_grad()
        loss = cross_entropy(model(x), y)
        assert loss.dtype == want
        loss.backward()
        for name, p in model.named_parameters():
            assert p.dtype == want, name
            assert p.grad.dtype == p.dtype, name
        opt.step()
        assert all(p.dtype == want for p in model.parameters())
        assert all(v.dtype == want for s in opt.state for v in s.values() if hasattr(v, "dtype"))


# =========================================================================== a hand-written MLP
def test_mlp_gradients_match_a_hand_written_backward(xp, dtype):
    """Forward and backward of x → relu(x W1ᵀ + b1) → W2ᵀ + b2 → softmax cross-entropy, by hand.

    The hand-written pass runs in float64 on the model's own (``dtype``) values, so in float32
    the difference is the engine's float32 rounding: at most 2 ulps for the loss and 5 ulps of
    the largest entry for the gradients over 200 seeds; 100 ulps are allowed. float64 keeps the
    former tolerances.
    """
    rng = np.random.default_rng(3)
    batch, n_in, n_hidden, n_out = 7, 5, 6, 4
    model = MLP([n_in, n_hidden, n_out], seed=1, dtype=dtype)
    model.load_state_dict({"0.bias": rng.standard_normal(n_hidden) * 0.1,
                           "2.bias": rng.standard_normal(n_out) * 0.1}, strict=False)
    state = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    W1, b1, W2, b2 = state["0.weight"], state["0.bias"], state["2.weight"], state["2.bias"]
    x = rng.standard_normal((batch, n_in)).astype(dtype).astype(np.float64)
    y = rng.integers(0, n_out, batch)
    ulps = 100 * np.finfo(dtype).eps
    loss_rtol, rtol, atol = (1e-13, 1e-11, 1e-14) if dtype == "float64" else (ulps, ulps, None)

    # by hand
    z1 = x @ W1.T + b1
    h = np.maximum(z1, 0.0)
    z2 = h @ W2.T + b2
    z2s = z2 - z2.max(axis=1, keepdims=True)
    p = np.exp(z2s) / np.exp(z2s).sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(batch), y]).mean()
    dz2 = (p - np.eye(n_out)[y]) / batch
    dW2, db2 = dz2.T @ h, dz2.sum(axis=0)
    dz1 = (dz2 @ W2) * (z1 > 0)
    dW1, db1 = dz1.T @ x, dz1.sum(axis=0)

    out = cross_entropy(model(asarray(x, dtype=dtype, xp=xp)), asarray(y, xp=xp))
    out.backward()
    assert out.dtype == getattr(xp, dtype)
    np.testing.assert_allclose(float(out.data), loss, rtol=loss_rtol)
    params = dict(model.named_parameters())
    for name, expected in (("0.weight", dW1), ("0.bias", db1), ("2.weight", dW2),
                           ("2.bias", db2)):
        grad = params[name].grad
        assert grad.dtype == getattr(xp, dtype), name
        np.testing.assert_allclose(to_numpy(grad), expected, rtol=rtol, err_msg=name,
                                   atol=ulps * np.abs(expected).max() if atol is None else atol)


def test_to_numpy_of_gradients_on_every_backend(xp):
    w = Tensor(asarray(np.array([1.0, 2.0]), xp=xp), requires_grad=True)
    (w * w).sum().backward()
    np.testing.assert_array_equal(to_numpy(w.grad), [2.0, 4.0])


# ------------------------------------------------------------------ the public extension API
def _softplus_op():
    return ag.define_op(lambda x: np.log1p(np.exp(x)),
                        lambda g, out, x: g / (1.0 + np.exp(-x)), name="softplus")


def test_define_op_passes_gradcheck_and_records_its_name():
    softplus = _softplus_op()
    x = np.random.default_rng(0).standard_normal((3, 4))
    assert gradcheck(softplus, x)
    y = softplus(Tensor(x, requires_grad=True))
    assert y.op == "softplus" and len(y.parents) == 1
    np.testing.assert_allclose(y.data, np.log1p(np.exp(x)))


def test_define_op_with_two_inputs_and_a_constant():
    times = ag.define_op(lambda a, b: a * b, lambda g, out, a, b: (g * b, g * a), name="times")
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(5), rng.standard_normal(5)
    assert gradcheck(times, a, b)
    t = Tensor(a, requires_grad=True)
    times(t, b).sum().backward()          # the array b is wrapped as a constant
    np.testing.assert_allclose(t.grad, b)


def test_define_op_catches_a_wrong_rule_and_a_wrong_shape():
    wrong = ag.define_op(lambda x: x**3, lambda g, out, x: g * x**2, name="cube")
    with pytest.raises(GradcheckError):
        gradcheck(wrong, np.array([0.5, -1.5, 2.0]))
    summed = ag.define_op(lambda x: x * 2, lambda g, out, x: g.sum(), name="bad_shape")
    with pytest.raises(ValueError, match="bad_shape.*shape"):
        summed(Tensor(np.ones(3), requires_grad=True)).sum().backward()
    two = ag.define_op(lambda x: x, lambda g, out, x: (g, g), name="two_grads")
    with pytest.raises(ValueError, match="2 gradients for 1 inputs"):
        two(Tensor(np.ones(3), requires_grad=True)).sum().backward()
    with pytest.raises(TypeError, match="callables"):
        ag.define_op(lambda x: x, None)


def test_walk_lists_each_node_once_parents_first():
    a = Tensor(np.array(1.5), requires_grad=True, name="a")
    e = a * 2.0
    g = e * e + e
    nodes = ag.walk(g)
    assert nodes[-1] is g and nodes[0] is a
    assert len(nodes) == len({id(n) for n in nodes}) == 4     # a, e, e*e, g
    position = {id(n): i for i, n in enumerate(nodes)}
    assert all(position[id(p)] < position[id(n)] for n in nodes for p in n.parents)
    assert [n.op for n in nodes] == ["", "mul", "mul", "add"]
    doubled = a + a
    assert doubled.parents == (a, a) and len(ag.walk(doubled)) == 2
    with pytest.raises(TypeError, match="Tensor"):
        ag.walk(np.ones(2))


def test_grad_fn_is_the_backward_rule_of_a_node():
    a = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    y = a * 3.0
    (ga,) = y.grad_fn(np.ones(2))
    np.testing.assert_allclose(ga, [3.0, 3.0])
    assert a.grad_fn is None and Tensor(np.ones(2)).grad_fn is None
