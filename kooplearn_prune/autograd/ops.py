"""Differentiable operations: each computes its output and returns a backward closure.

Read any op top to bottom: the forward line, then ``backward(g)`` which receives ``g = dL/d(out)``
and returns ``dL/d(input)`` for each input (``None`` where no gradient is needed). Only functions
of the array API standard are used, through the namespace ``xp`` stored on the tensors.
"""

from __future__ import annotations

import builtins
import math
from typing import Any

from .tensor import Tensor

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "matmul",
    "sum", "mean", "max", "exp", "log", "tanh", "relu", "sigmoid",
    "reshape", "transpose", "getitem", "take",
]

Scalar = (int, float)


def _unbroadcast(g: Any, shape: tuple[int, ...], xp: Any) -> Any:
    """Sum ``g`` over the axes that broadcasting added or stretched, so it has ``shape``."""
    if tuple(g.shape) == shape:
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = xp.sum(g, axis=tuple(range(extra)))
    stretched = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    if stretched:
        g = xp.sum(g, axis=stretched, keepdims=True)
    return g


def _wrap(x: Any, like: Tensor) -> Tensor | int | float:
    """Python scalars stay scalars (weak dtype: float32 stays float32); arrays become constants."""
    if isinstance(x, Tensor) or isinstance(x, Scalar):
        return x
    return Tensor(x, xp=like.xp)


# ------------------------------------------------------------------ elementwise arithmetic
def add(a: Tensor, b: Tensor | float) -> Tensor:
    """``a + b`` with broadcasting."""
    b = _wrap(b, a)
    if isinstance(b, Scalar):
        return Tensor._make(a.data + b, a.xp, (a,), lambda g: (g,), "add")
    xp, sa, sb = a.xp, tuple(a.data.shape), tuple(b.data.shape)

    def backward(g: Any) -> tuple[Any, Any]:
        return _unbroadcast(g, sa, xp), _unbroadcast(g, sb, xp)

    return Tensor._make(a.data + b.data, xp, (a, b), backward, "add")


def sub(a: Tensor, b: Tensor | float) -> Tensor:
    """``a - b`` with broadcasting."""
    b = _wrap(b, a)
    if isinstance(b, Scalar):
        return Tensor._make(a.data - b, a.xp, (a,), lambda g: (g,), "sub")
    xp, sa, sb = a.xp, tuple(a.data.shape), tuple(b.data.shape)

    def backward(g: Any) -> tuple[Any, Any]:
        return _unbroadcast(g, sa, xp), _unbroadcast(-g, sb, xp)

    return Tensor._make(a.data - b.data, xp, (a, b), backward, "sub")


def mul(a: Tensor, b: Tensor | float) -> Tensor:
    """``a * b`` with broadcasting."""
    b = _wrap(b, a)
    if isinstance(b, Scalar):
        return Tensor._make(a.data * b, a.xp, (a,), lambda g: (g * b,), "mul")
    xp, sa, sb = a.xp, tuple(a.data.shape), tuple(b.data.shape)

    def backward(g: Any) -> tuple[Any, Any]:
        ga = _unbroadcast(g * b.data, sa, xp) if a.requires_grad else None
        gb = _unbroadcast(g * a.data, sb, xp) if b.requires_grad else None
        return ga, gb

    return Tensor._make(a.data * b.data, xp, (a, b), backward, "mul")


def div(a: Tensor, b: Tensor | float) -> Tensor:
    """``a / b`` with broadcasting."""
    b = _wrap(b, a)
    if isinstance(b, Scalar):
        return Tensor._make(a.data / b, a.xp, (a,), lambda g: (g / b,), "div")
    xp, sa, sb = a.xp, tuple(a.data.shape), tuple(b.data.shape)
    out_data = a.data / b.data

    def backward(g: Any) -> tuple[Any, Any]:
        ga = _unbroadcast(g / b.data, sa, xp) if a.requires_grad else None
        gb = _unbroadcast(-g * out_data / b.data, sb, xp) if b.requires_grad else None
        return ga, gb

    return Tensor._make(out_data, xp, (a, b), backward, "div")


def rdiv(a: Tensor, c: float) -> Tensor:
    """``c / a`` for a Python scalar ``c``."""
    out_data = c / a.data
    return Tensor._make(out_data, a.xp, (a,), lambda g: (-g * out_data / a.data,), "rdiv")


def neg(a: Tensor) -> Tensor:
    """``-a``."""
    return Tensor._make(-a.data, a.xp, (a,), lambda g: (-g,), "neg")


def pow(a: Tensor, p: Tensor | float) -> Tensor:
    """``a ** p``; ``p`` may be a Python scalar or a Tensor (then d/dp = out · log a)."""
    p = _wrap(p, a)
    if isinstance(p, Scalar):
        out_data = a.data**p
        return Tensor._make(out_data, a.xp, (a,), lambda g: (g * p * a.data ** (p - 1),), "pow")
    xp, sa, sp = a.xp, tuple(a.data.shape), tuple(p.data.shape)
    out_data = a.data**p.data

    def backward(g: Any) -> tuple[Any, Any]:
        ga = _unbroadcast(g * p.data * a.data ** (p.data - 1), sa, xp) if a.requires_grad \
            else None
        gp = _unbroadcast(g * out_data * xp.log(a.data), sp, xp) if p.requires_grad else None
        return ga, gp

    return Tensor._make(out_data, xp, (a, p), backward, "pow")


def rpow(a: Tensor, c: float) -> Tensor:
    """``c ** a`` for a positive Python scalar ``c``."""
    out_data = c**a.data
    log_c = math.log(c)
    return Tensor._make(out_data, a.xp, (a,), lambda g: (g * out_data * log_c,), "rpow")


# ------------------------------------------------------------------ linear algebra
def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` (1-D, 2-D, or batched with broadcasting over leading axes)."""
    b = _wrap(b, a)
    if a.data.ndim == 0 or b.data.ndim == 0:
        raise ValueError("matmul: both operands need at least one dimension; use * for scalars")
    k_a = a.data.shape[-1]
    k_b = b.data.shape[0] if b.data.ndim == 1 else b.data.shape[-2]
    if k_a != k_b:
        raise ValueError(
            f"matmul: shapes {tuple(a.data.shape)} and {tuple(b.data.shape)} do not align "
            f"(inner dimensions {k_a} != {k_b}); transpose one operand or fix the layer sizes"
        )
    xp = a.xp
    A, B = a.data, b.data
    out_data = A @ B
    if A.ndim == 2 and B.ndim == 2:

        def backward(g: Any) -> tuple[Any, Any]:
            return (g @ B.T if a.requires_grad else None, A.T @ g if b.requires_grad else None)

        return Tensor._make(out_data, xp, (a, b), backward, "matmul")

    def backward_general(g: Any) -> tuple[Any, Any]:
        A2 = xp.reshape(A, (1, -1)) if A.ndim == 1 else A
        B2 = xp.reshape(B, (-1, 1)) if B.ndim == 1 else B
        G = g
        # Restore the contracted axes, B's first: for vector @ vector, g is 0-d.
        if B.ndim == 1:
            G = xp.expand_dims(G, axis=-1)
        if A.ndim == 1:
            G = xp.expand_dims(G, axis=-2)
        ga = gb = None
        if a.requires_grad:
            ga = xp.reshape(_unbroadcast(G @ xp.matrix_transpose(B2), tuple(A2.shape), xp),
                            tuple(A.shape))
        if b.requires_grad:
            gb = xp.reshape(_unbroadcast(xp.matrix_transpose(A2) @ G, tuple(B2.shape), xp),
                            tuple(B.shape))
        return ga, gb

    return Tensor._make(out_data, xp, (a, b), backward_general, "matmul")


# ------------------------------------------------------------------ reductions
def _normalize_axes(axis: int | tuple[int, ...] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < builtins.max(ndim, 1):
            raise ValueError(f"axis {ax} is out of range for a tensor with {ndim} dimensions")
        out.append(ax % ndim if ndim else 0)
    return tuple(sorted(out))


def _expand_reduced(g: Any, axes: tuple[int, ...], keepdims: bool, xp: Any) -> Any:
    """Re-insert the reduced axes of ``g`` (as length 1) so it broadcasts against the input."""
    if not keepdims:
        for ax in axes:
            g = xp.expand_dims(g, axis=ax)
    return g


def sum(a: Tensor, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
    """Sum over ``axis`` (all axes by default)."""
    xp, shape = a.xp, tuple(a.data.shape)
    axes = _normalize_axes(axis, a.data.ndim)

    def backward(g: Any) -> tuple[Any]:
        return (xp.broadcast_to(_expand_reduced(g, axes, keepdims, xp), shape),)

    return Tensor._make(xp.sum(a.data, axis=axes, keepdims=keepdims), xp, (a,), backward, "sum")


def mean(a: Tensor, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis`` (all axes by default)."""
    xp, shape = a.xp, tuple(a.data.shape)
    axes = _normalize_axes(axis, a.data.ndim)
    count = math.prod(shape[ax] for ax in axes) if axes else 1

    def backward(g: Any) -> tuple[Any]:
        return (xp.broadcast_to(_expand_reduced(g, axes, keepdims, xp) / count, shape),)

    return Tensor._make(xp.mean(a.data, axis=axes, keepdims=keepdims), xp, (a,), backward,
                        "mean")


def max(a: Tensor, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
    """Maximum over ``axis``; the gradient is shared equally among tied maxima."""
    xp = a.xp
    axes = _normalize_axes(axis, a.data.ndim)
    kept = xp.max(a.data, axis=axes, keepdims=True)
    out_data = kept if keepdims else xp.max(a.data, axis=axes, keepdims=False)

    def backward(g: Any) -> tuple[Any]:
        winners = xp.astype(a.data == kept, a.data.dtype)
        share = winners / xp.sum(winners, axis=axes, keepdims=True)
        return (_expand_reduced(g, axes, keepdims, xp) * share,)

    return Tensor._make(out_data, xp, (a,), backward, "max")


# ------------------------------------------------------------------ elementwise functions
def exp(a: Tensor) -> Tensor:
    """``e ** a``."""
    out_data = a.xp.exp(a.data)
    return Tensor._make(out_data, a.xp, (a,), lambda g: (g * out_data,), "exp")


def log(a: Tensor) -> Tensor:
    """Natural logarithm."""
    return Tensor._make(a.xp.log(a.data), a.xp, (a,), lambda g: (g / a.data,), "log")


def tanh(a: Tensor) -> Tensor:
    """Hyperbolic tangent; d/dx = 1 − tanh²."""
    out_data = a.xp.tanh(a.data)
    return Tensor._make(out_data, a.xp, (a,), lambda g: (g * (1.0 - out_data * out_data),),
                        "tanh")


def relu(a: Tensor) -> Tensor:
    """``max(a, 0)``; the gradient passes where ``a > 0``."""
    xp = a.xp
    out_data = xp.maximum(a.data, 0.0)
    # Multiplying by the 0/1 mask is about twice as fast as ``where`` on small arrays.
    return Tensor._make(out_data, xp, (a,),
                        lambda g: (g * xp.astype(a.data > 0, g.dtype),), "relu")


def sigmoid(a: Tensor) -> Tensor:
    """Logistic function, computed as ½(1 + tanh(a/2)) so it never overflows."""
    out_data = 0.5 * (a.xp.tanh(0.5 * a.data) + 1.0)
    return Tensor._make(out_data, a.xp, (a,), lambda g: (g * out_data * (1.0 - out_data),),
                        "sigmoid")


# ------------------------------------------------------------------ shape and indexing
def reshape(a: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Same values, new shape."""
    xp, old = a.xp, tuple(a.data.shape)
    return Tensor._make(xp.reshape(a.data, tuple(shape)), xp, (a,),
                        lambda g: (xp.reshape(g, old),), "reshape")


def transpose(a: Tensor, axes: tuple[int, ...] | None = None) -> Tensor:
    """Permute axes (reverse them by default, like ``.T``)."""
    xp = a.xp
    axes = tuple(reversed(range(a.data.ndim))) if axes is None else tuple(axes)
    inverse = tuple(sorted(range(len(axes)), key=axes.__getitem__))
    return Tensor._make(xp.permute_dims(a.data, axes), xp, (a,),
                        lambda g: (xp.permute_dims(g, inverse),), "transpose")


def take(a: Tensor, indices: Any, axis: int = 0) -> Tensor:
    """Select entries along ``axis`` by an integer index array (repeats allowed)."""
    xp = a.xp
    if isinstance(indices, Tensor):
        indices = indices.data
    if not hasattr(indices, "shape"):
        from ..backend import asarray

        indices = asarray(indices, dtype="int64", xp=xp)
    axis = axis % a.data.ndim
    shape = tuple(a.data.shape)

    def backward(g: Any) -> tuple[Any]:
        # Scatter-add with a one-hot matrix: the array API has no in-place add.at, and
        # repeated indices must add up.
        onehot = xp.astype(indices[:, None] == xp.arange(shape[axis], dtype=indices.dtype),
                           g.dtype)
        moved = xp.moveaxis(g, axis, -1)
        scattered = moved @ onehot  # (..., n_axis)
        return (xp.moveaxis(scattered, -1, axis),)

    return Tensor._make(xp.take(a.data, indices, axis=axis), xp, (a,), backward, "take")


def getitem(a: Tensor, key: Any) -> Tensor:
    """Basic indexing (integers, slices, ``...``, ``None``) or an integer index array."""
    xp = a.xp
    if isinstance(key, Tensor):
        key = key.data
    if hasattr(key, "shape") and not isinstance(key, tuple):
        if key.ndim != 1 or not xp.isdtype(key.dtype, "integral"):
            raise TypeError("indexing with an array needs a 1-D integer array (it selects rows)")
        return take(a, key, axis=0)
    shape, dtype = tuple(a.data.shape), a.data.dtype

    def backward(g: Any) -> tuple[Any]:
        full = xp.zeros(shape, dtype=dtype)
        full[key] = g
        return (full,)

    return Tensor._make(a.data[key], xp, (a,), backward, "getitem")


# ------------------------------------------------------------------ operators on Tensor
def _install_operators() -> None:
    T = Tensor
    T.__add__ = lambda self, other: add(self, other)
    T.__radd__ = lambda self, other: add(self, other)
    T.__sub__ = lambda self, other: sub(self, other)
    T.__rsub__ = lambda self, other: add(neg(self), other)
    T.__mul__ = lambda self, other: mul(self, other)
    T.__rmul__ = lambda self, other: mul(self, other)
    T.__truediv__ = lambda self, other: div(self, other)
    T.__rtruediv__ = lambda self, other: (
        rdiv(self, other) if isinstance(other, Scalar) else div(Tensor(other, xp=self.xp), self)
    )
    T.__neg__ = lambda self: neg(self)
    T.__pow__ = lambda self, p: pow(self, p)
    T.__rpow__ = lambda self, c: (
        rpow(self, c) if isinstance(c, Scalar) else pow(Tensor(c, xp=self.xp), self)
    )
    T.__matmul__ = lambda self, other: matmul(self, other)
    T.__rmatmul__ = lambda self, other: matmul(Tensor(other, xp=self.xp), self)
    T.__getitem__ = lambda self, key: getitem(self, key)
    T.sum = lambda self, axis=None, keepdims=False: sum(self, axis, keepdims)
    T.mean = lambda self, axis=None, keepdims=False: mean(self, axis, keepdims)
    T.max = lambda self, axis=None, keepdims=False: max(self, axis, keepdims)
    T.exp = lambda self: exp(self)
    T.log = lambda self: log(self)
    T.tanh = lambda self: tanh(self)
    T.relu = lambda self: relu(self)
    T.sigmoid = lambda self: sigmoid(self)
    T.reshape = lambda self, *shape: reshape(
        self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)
    T.transpose = lambda self, axes=None: transpose(self, axes)
    T.T = property(lambda self: transpose(self))


_install_operators()
