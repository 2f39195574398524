"""The public way to extend the engine: define a new operation, and walk a graph.

``define_op(forward, backward)`` turns a function on raw arrays and its backward rule into a
differentiable operation on Tensors; ``walk(root)`` lists every node a result depends on, so a
graph can be drawn or counted with ``Tensor.parents`` and ``Tensor.op`` alone.

A backward rule is a vector-Jacobian product: it receives ``g = dL/d(out)`` and returns
``dL/d(input)`` for each input (docs/theory.md §1 for the notation of gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .tensor import Tensor, as_tensor

__all__ = ["define_op", "walk"]


def define_op(forward: Callable[..., Any], backward: Callable[..., Any], *,
              name: str | None = None) -> Callable[..., Tensor]:
    """A differentiable operation built from ``forward`` and its ``backward`` rule.

    ``forward(*arrays)`` computes the output array from the inputs' raw arrays.
    ``backward(g, out, *arrays)`` receives the gradient ``g`` of the loss with respect to the
    output (same shape as ``out``), the output array and the input arrays, and returns one
    gradient per input, each of that input's shape (a single array is accepted for a one-input
    op; ``None`` where no gradient is needed). The returned function takes Tensors (arrays and
    Python numbers are wrapped as constants) and returns a Tensor whose ``op`` is ``name``
    (the forward function's name by default). Example, the square ``x ↦ x²``::

        square = define_op(lambda x: x * x, lambda g, out, x: 2 * x * g, name="square")
        y = square(Tensor(np.arange(3.0), requires_grad=True))
    """
    if not callable(forward) or not callable(backward):
        raise TypeError("define_op(forward, backward): both must be callables, got "
                        f"{type(forward).__name__} and {type(backward).__name__}")
    op_name = name or getattr(forward, "__name__", "custom_op")

    def apply(*inputs: Any) -> Tensor:
        if not inputs:
            raise TypeError(f"{op_name}: pass at least one input")
        like = next((x for x in inputs if isinstance(x, Tensor)), None)
        xp = like.xp if like is not None else None
        tensors = tuple(as_tensor(x, xp=xp) for x in inputs)
        arrays = tuple(t.data for t in tensors)
        out = forward(*arrays)
        if isinstance(out, Tensor):
            raise TypeError(f"{op_name}: forward must return a raw array (it receives raw "
                            f"arrays); got a Tensor, so use .data or array functions inside it")

        def backward_rule(g: Any) -> tuple[Any, ...]:
            grads = backward(g, out, *arrays)
            if not isinstance(grads, (tuple, list)):
                grads = (grads,)
            if len(grads) != len(arrays):
                raise ValueError(f"{op_name}: backward returned {len(grads)} gradients for "
                                 f"{len(arrays)} inputs; return one per input (None to skip)")
            for i, (grad, array) in enumerate(zip(grads, arrays)):
                if grad is not None and tuple(getattr(grad, "shape", ())) != tuple(array.shape):
                    raise ValueError(
                        f"{op_name}: backward's gradient for input {i} has shape "
                        f"{tuple(getattr(grad, 'shape', ()))}, the input has shape "
                        f"{tuple(array.shape)}; sum over broadcast axes or reshape it")
            return tuple(grads)

        return Tensor._make(out, tensors[0].xp, tensors, backward_rule, op_name)

    apply.__name__ = op_name
    apply.__doc__ = f"The operation {op_name!r} defined with define_op."
    return apply


def walk(root: Tensor) -> list[Tensor]:
    """Every Tensor that ``root`` depends on, ``root`` included, each once, parents first.

    Follows ``Tensor.parents`` with an explicit stack (deep graphs need no recursion). A node
    used twice (``a + a``) appears once in the list and twice in its child's ``parents``.
    """
    if not isinstance(root, Tensor):
        raise TypeError(f"walk(root): root must be a Tensor, got {type(root).__name__}")
    order: list[Tensor] = []
    visited = {id(root)}
    stack = [(root, iter(root.parents))]
    while stack:
        node, parents = stack[-1]
        for parent in parents:
            if id(parent) not in visited:
                visited.add(id(parent))
                stack.append((parent, iter(parent.parents)))
                break
        else:
            stack.pop()
            order.append(node)
    return order
