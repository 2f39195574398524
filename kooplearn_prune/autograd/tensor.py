"""The ``Tensor``: an array plus the recipe for its gradient (reverse-mode autodiff).

Every operation creates a new ``Tensor`` that remembers its parents and a small ``backward``
closure: given the gradient of the final result with respect to this output, it returns the
gradients with respect to each parent (the chain rule, one op at a time). ``Tensor.backward()``
visits the graph in reverse topological order, so every node's gradient is complete before it is
passed on; a node used twice (``b = a + a``) receives the sum of both contributions.

The array namespace ``xp`` is stored on the tensor when it is created, so no op has to look it up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from ..backend import asarray, backend_namespace, namespace_of

__all__ = ["Tensor", "no_grad", "enable_grad", "is_grad_enabled", "as_tensor"]

_grad_enabled = True


def is_grad_enabled() -> bool:
    """Whether new operations record the graph needed for ``backward``."""
    return _grad_enabled


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Run operations without recording a graph (evaluation, optimizer updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


@contextlib.contextmanager
def enable_grad() -> Iterator[None]:
    """Record the graph again inside a ``no_grad`` block."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, True
    try:
        yield
    finally:
        _grad_enabled = previous


# A backward closure maps the output gradient to one gradient (or None) per parent.
BackwardFn = Callable[[Any], tuple[Any, ...]]

# An array's namespace depends only on its type, so it is resolved once per type (as
# array-api-compat caches it): wrapping every mini-batch in ``Tensor(xb)`` then costs no lookup.
_namespace_by_type: dict[type, ModuleType] = {}


def _namespace_of_array(data: Any) -> ModuleType:
    xp = _namespace_by_type.get(type(data))
    if xp is None:
        xp = _namespace_by_type[type(data)] = namespace_of(data)
    return xp


class Tensor:
    """An array with an optional gradient.

    ``data`` is a backend array (NumPy, CuPy, array_api_strict); ``grad`` has the same shape and
    dtype once ``backward`` has run; ``name`` labels the node in graph drawings.
    """

    __slots__ = ("data", "grad", "requires_grad", "xp", "name", "_parents", "_backward", "_op")
    __array_priority__ = 100  # make ``ndarray * Tensor`` call Tensor.__rmul__

    def __init__(
        self,
        data: Any,
        requires_grad: bool = False,
        *,
        name: str | None = None,
        xp: ModuleType | None = None,
        dtype: Any = None,
    ) -> None:
        if isinstance(data, Tensor):
            data = data.data
        if xp is None:
            xp = _namespace_of_array(data) if hasattr(data, "shape") else backend_namespace()
        if not hasattr(data, "shape") or dtype is not None:
            data = asarray(data, dtype=dtype, xp=xp)
        self.data = data
        self.xp = xp
        self.grad: Any = None
        self.requires_grad = bool(requires_grad)
        self.name = name
        self._parents: tuple[Tensor, ...] = ()
        self._backward: BackwardFn | None = None
        self._op = ""

    # --------------------------------------------------------------- graph construction
    @classmethod
    def _make(cls, data: Any, xp: ModuleType, parents: tuple[Tensor, ...],
              backward: BackwardFn, op: str) -> Tensor:
        """Create an op's output; record the graph only when some parent needs a gradient."""
        out = cls.__new__(cls)
        out.data = data
        out.xp = xp
        out.grad = None
        out.name = None
        out._op = op
        # A list, not a generator: twice as fast for the one to three parents an op has.
        if _grad_enabled and any([p.requires_grad for p in parents]):
            out.requires_grad = True
            out._parents = parents
            out._backward = backward
        else:
            out.requires_grad = False
            out._parents = ()
            out._backward = None
        return out

    # --------------------------------------------------------------- reverse mode
    def backward(self, grad: Any = None) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires a gradient.

        ``grad`` defaults to 1 for a scalar output (a loss). Intermediate gradients are freed as
        soon as they have been passed on.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() called on a tensor that does not require a gradient; "
                "did you create it inside no_grad() or from inputs without requires_grad=True?"
            )
        if grad is None:
            if self.data.shape != ():
                raise ValueError(
                    f"backward() without a gradient needs a scalar output, got shape "
                    f"{tuple(self.data.shape)}; pass grad= of the same shape, or reduce first"
                )
            grad = self.xp.ones_like(self.data)
        elif isinstance(grad, Tensor):
            grad = grad.data
        grads: dict[int, Any] = {id(self): grad}
        if self._backward is None:  # backward() on a leaf
            self.grad = grad if self.grad is None else self.grad + grad
            return
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            for parent, pg in zip(node._parents, node._backward(g)):
                if pg is None or not parent.requires_grad:
                    continue
                if parent._backward is None:  # a leaf: accumulate where the user reads it
                    parent.grad = pg if parent.grad is None else parent.grad + pg
                    continue
                key = id(parent)
                # Out of place: the same array may be handed to several parents.
                grads[key] = pg if key not in grads else grads[key] + pg

    def zero_grad(self) -> None:
        self.grad = None

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data, xp=self.xp)

    # --------------------------------------------------------------- conveniences
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    @property
    def size(self) -> int:
        n = 1
        for d in self.data.shape:
            n *= d
        return n

    @property
    def is_leaf(self) -> bool:
        return self._backward is None

    @property
    def parents(self) -> tuple[Tensor, ...]:
        """The inputs this node was computed from (empty for a leaf or a constant).

        A tensor used twice by one op (``a + a``) appears twice. Walk a whole graph with
        ``autograd.walk``.
        """
        return self._parents

    @property
    def grad_fn(self) -> BackwardFn | None:
        """This node's backward rule: ``grad_fn(g)`` returns one gradient per parent (None for a
        leaf or a constant). ``backward()`` calls it; call it yourself to trace a pass by hand."""
        return self._backward

    @property
    def op(self) -> str:
        """The name of the operation that produced this tensor ("" for a leaf)."""
        return self._op

    def numpy(self) -> Any:
        """The values as a host NumPy array."""
        from ..backend import to_numpy

        return to_numpy(self.data)

    def item(self) -> float:
        return float(self.data)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        label = f", name={self.name!r}" if self.name else ""
        op = f", op={self._op!r}" if self._op else ""
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{grad}{op}{label})"

    # Operators are attached in ops.py, next to their backward rules.


def _topological_order(root: Tensor) -> list[Tensor]:
    """Interior nodes reachable from ``root``, parents before children.

    Iterative depth-first search (no recursion limit on deep graphs). Leaves are left out: their
    gradients are accumulated directly by their children.
    """
    order: list[Tensor] = []
    visited = {id(root)}
    stack = [(root, iter(root._parents))]
    while stack:
        node, parents = stack[-1]
        for parent in parents:
            if parent._backward is not None and id(parent) not in visited:
                visited.add(id(parent))
                stack.append((parent, iter(parent._parents)))
                break
        else:
            stack.pop()
            order.append(node)
    return order


def as_tensor(x: Any, xp: ModuleType | None = None) -> Tensor:
    """Wrap an array (or return a Tensor unchanged) as a constant Tensor."""
    return x if isinstance(x, Tensor) else Tensor(x, xp=xp)
