"""Check a backward rule against finite differences (for tests and for teaching).

``gradcheck`` perturbs every input entry by ±eps and compares the central difference
``(f(x + eps) − f(x − eps)) / 2 eps`` with the gradient from ``backward``. It works in float64;
for large tensors ``directional=True`` checks one random direction ``v`` instead:
``(f(x + eps v) − f(x − eps v)) / 2 eps ≈ ⟨∇f, v⟩``, whose cost does not grow with the size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import asarray, to_numpy
from .tensor import Tensor

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """The analytic gradient disagrees with finite differences."""


def _scalar_output(fn: Callable[..., Tensor], inputs: list[Tensor], weights: Any) -> Tensor:
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    if weights is None:
        return out
    return (out * Tensor(weights, xp=out.xp)).sum()


def gradcheck(
    fn: Callable[..., Tensor],
    *inputs: Any,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    directional: bool = False,
    seed: int = 0,
) -> bool:
    """Return True if ``backward`` of ``fn(*inputs)`` matches central finite differences.

    Inputs are Tensors or arrays; they are copied to float64 and all receive gradients. A
    non-scalar output is reduced with fixed random weights so every output entry is tested.
    Raises ``GradcheckError`` naming the input, the worst entry, and both values.
    """
    if not inputs:
        raise ValueError("gradcheck: give at least one input tensor")
    rng = np.random.default_rng(seed)
    xp = inputs[0].xp if isinstance(inputs[0], Tensor) else None
    hosts = [np.array(to_numpy(x.data if isinstance(x, Tensor) else x), dtype=np.float64)
             for x in inputs]
    if xp is None:
        from ..backend import namespace_of

        xp = namespace_of(inputs[0])

    def make(arrays: list[np.ndarray]) -> list[Tensor]:
        return [Tensor(asarray(a, xp=xp), requires_grad=True, xp=xp) for a in arrays]

    probe = fn(*make(hosts))
    weights = None
    if probe.shape != ():
        weights = asarray(rng.standard_normal(probe.shape), dtype="float64", xp=xp)

    def value(arrays: list[np.ndarray]) -> float:
        return float(to_numpy(_scalar_output(fn, make(arrays), weights).data))

    tensors = make(hosts)
    _scalar_output(fn, tensors, weights).backward()
    analytic = [np.zeros_like(h) if t.grad is None else np.array(to_numpy(t.grad), dtype=np.float64)
                for t, h in zip(tensors, hosts)]

    for i, (host, grad) in enumerate(zip(hosts, analytic)):
        if grad.shape != host.shape:
            raise GradcheckError(f"input {i}: gradient shape {grad.shape} != input shape "
                                 f"{host.shape}")
        if directional:
            v = rng.standard_normal(host.shape)
            plus = [h + eps * v if j == i else h for j, h in enumerate(hosts)]
            minus = [h - eps * v if j == i else h for j, h in enumerate(hosts)]
            numeric = (value(plus) - value(minus)) / (2 * eps)
            expected = float(np.sum(grad * v))
            if not np.isclose(expected, numeric, atol=atol, rtol=rtol):
                raise GradcheckError(f"input {i}: directional derivative {expected:.8g} from "
                                     f"backward, {numeric:.8g} from finite differences")
            continue
        numeric = np.zeros_like(host)
        for idx in np.ndindex(host.shape):
            original = host[idx]
            host[idx] = original + eps
            f_plus = value(hosts)
            host[idx] = original - eps
            f_minus = value(hosts)
            host[idx] = original
            numeric[idx] = (f_plus - f_minus) / (2 * eps)
        bad = ~np.isclose(grad, numeric, atol=atol, rtol=rtol)
        if bad.any():
            worst = np.unravel_index(np.argmax(np.abs(grad - numeric) * bad), host.shape)
            raise GradcheckError(
                f"input {i} (shape {host.shape}): {int(bad.sum())} of {host.size} entries differ; "
                f"worst at index {tuple(int(k) for k in worst)}: backward gives "
                f"{grad[worst]:.8g}, finite differences give {numeric[worst]:.8g}"
            )
    return True
