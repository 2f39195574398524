"""Checks for the exercises of notebook 01 (automatic differentiation)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ..autograd import GradcheckError, Tensor, gradcheck, walk
from .verdict import as_float_array, is_missing, missing, right, wrong

__all__ = ["chain_rule", "softplus_op", "count_ops"]

X0, Y0 = 0.5, -1.0


def chain_rule(dfdx: Any, dfdy: Any, *, strict: bool | None = None) -> Any:
    """01.1: the gradient of ``f(x, y) = x · exp(x y)`` at ``x = 0.5, y = -1`` by hand."""
    ex = "01.1"
    if is_missing(dfdx) or is_missing(dfdy):
        return missing(ex, "dfdx or dfdy", "write f as u = x*y, v = exp(u), f = x*v and go "
                       "backwards from f", strict=strict)
    x, y = Tensor(np.array(X0), requires_grad=True), Tensor(np.array(Y0), requires_grad=True)
    (x * (x * y).exp()).backward()
    got = (float(as_float_array(dfdx)), float(as_float_array(dfdy)))
    want = (float(x.grad), float(y.grad))
    if np.allclose(got, want, rtol=1e-6, atol=1e-9):
        return right(ex, f"df/dx = {want[0]:.6f}, df/dy = {want[1]:.6f}, as backward() says.",
                     strict=strict)
    exy = np.exp(X0 * Y0)
    if np.isclose(got[0], X0 * Y0 * exy):
        hint = ("x appears twice in f = x · exp(x y): the product rule gives one term for each "
                "use, exp(xy) + x · y · exp(xy)")
    elif np.isclose(got[0], exy):
        hint = "you kept only the first factor's term; exp(xy) also depends on x (times y)"
    else:
        hint = "df/dx = exp(xy) (1 + xy) and df/dy = x² exp(xy); compare term by term"
    return wrong(ex, f"got ({got[0]:.6f}, {got[1]:.6f}), backward() gives "
                 f"({want[0]:.6f}, {want[1]:.6f}).", hint, strict=strict)


def softplus_op(softplus: Any, *, strict: bool | None = None) -> Any:
    """01.2: ``softplus(x) = log(1 + e^x)`` defined with ``define_op``, checked by gradcheck."""
    ex = "01.2"
    x = np.array([-2.0, -0.3, 0.0, 0.7, 3.0])
    out = softplus(Tensor(x, requires_grad=True)) if callable(softplus) else None
    if out is None or is_missing(out):
        return missing(ex, "softplus(x)", "return define_op(forward, backward, "
                       "name='softplus')(x) with forward on raw arrays", strict=strict)
    if not isinstance(out, Tensor):
        return wrong(ex, f"softplus returned a {type(out).__name__}, not a Tensor.",
                     "call the function that define_op returns on the Tensor x", strict=strict)
    if not np.allclose(out.data, np.log1p(np.exp(x))):
        return wrong(ex, "the forward values are not log(1 + e^x).",
                     "forward(x) receives the raw array: np.log1p(np.exp(x))", strict=strict)
    if not out.parents:
        return wrong(ex, "the output has no parents, so backward() cannot reach x.",
                     "build the op with define_op so the graph is recorded", strict=strict)
    try:
        gradcheck(softplus, x)
    except GradcheckError as err:
        return wrong(ex, f"gradcheck disagrees with the backward rule: {err}",
                     "d softplus/dx = 1 / (1 + e^-x) (the sigmoid), and the rule must "
                     "multiply the incoming gradient g by it", strict=strict)
    return right(ex, "forward values match and gradcheck passes.", strict=strict)


def _example_graphs() -> list[Tensor]:
    a = Tensor(np.array(1.5), requires_grad=True, name="a")
    b = Tensor(np.array(-3.0), requires_grad=True, name="b")
    e = a * 2.0
    return [e * e + e, a + a, ((a * b) + b).tanh(), (a * b).exp() * a]


def count_ops(count: Any, *, strict: bool | None = None) -> Any:
    """01.3: ``count(root)`` returns {op name: number of nodes} for the operations of a graph."""
    ex = "01.3"
    if not callable(count):
        return missing(ex, "count_ops", "define count_ops(root) using walk(root) and .op",
                       strict=strict)
    for root in _example_graphs():
        got = count(root)
        if is_missing(got):
            return missing(ex, "count_ops(root)", "return a dict like {'mul': 2, 'add': 1}",
                           strict=strict)
        want = dict(Counter(n.op for n in walk(root) if n.op))
        if dict(got) == want:
            continue
        got = dict(got)
        if "" in got or any(k is None for k in got):
            hint = "leaves have op '' (they are not operations): skip them"
        elif sum(got.values()) > sum(want.values()):
            hint = ("a node reached along two paths was counted twice; walk(root) lists every "
                    "node exactly once")
        else:
            hint = "visit every node with walk(root) and count node.op of the non-leaves"
        return wrong(ex, f"for a graph ending in {root.op!r} you return {got}, expected {want}.",
                     hint, strict=strict)
    return right(ex, "the operation counts are right on four graphs, shared nodes included.",
                 strict=strict)
