"""Check a backward rule against finite differences (for tests and for teaching).

``gradcheck`` perturbs every input entry by ±eps and compares the central difference
``(f(x + eps) − f(x − eps)) / 2 eps`` with the gradient from ``backward``. For large tensors
``directional=True`` checks one random direction ``v`` instead:
``(f(x + eps v) − f(x − eps v)) / 2 eps ≈ ⟨∇f, v⟩``, whose cost does not grow with the size.

The backward pass runs in float32 when every input is float32 (in float64 otherwise), so float32
rules are tested as a float32 network runs them; the finite differences are always taken in
float64, where they are accurate to about 1e-9. A float32 difference quotient would be far
worse: its rounding error ``eps32 / h`` and truncation error ``h²`` cannot both go below
``eps32^(2/3) ≈ 2e-5``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import asarray, to_numpy
from .tensor import Tensor

__all__ = ["gradcheck", "GradcheckError", "default_tolerances"]


class GradcheckError(AssertionError):
    """The analytic gradient disagrees with finite differences."""


def default_tolerances(dtype: Any) -> tuple[float, float]:
    """``(atol, rtol)`` for comparing a backward pass in ``dtype`` with float64 differences.

    float64: ``atol=1e-6, rtol=1e-4``, set by the central difference itself (truncation
    ``eps² ≈ 1e-12`` times the third derivative, rounding ``1e-16 / eps ≈ 1e-10`` times the
    function's size), with room for the steep functions that hypothesis draws.
    float32: ``atol = rtol = 100 eps32 ≈ 1.2e-5``. The float64 reference is exact at float32
    resolution, so what is compared is the backward pass's own rounding: at most 3 ulps over
    the whole op table of the tests, so 100 ulps leaves room for longer chains, while a wrong
    rule (a lost factor, sign or term) is off by O(1) relative and even a float16 intermediate
    (~1e-3) is caught.
    """
    eps = float(np.finfo(_dtype_name(dtype)).eps)
    if eps <= np.finfo(np.float64).eps:
        return 1e-6, 1e-4
    return 100 * eps, 100 * eps


def _dtype_name(dtype: Any) -> str:
    """``"float32"`` for ``"float32"``, ``np.float32``, ``xp.float32`` of any array backend."""
    try:
        return np.dtype(dtype).name
    except TypeError:  # a backend's own dtype object, e.g. array_api_strict.float32
        return str(dtype).rsplit(".", 1)[-1]


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
    atol: float | None = None,
    rtol: float | None = None,
    directional: bool = False,
    seed: int = 0,
) -> bool:
    """Return True if ``backward`` of ``fn(*inputs)`` matches central finite differences.

    Inputs are Tensors or arrays; all receive gradients. If every input is float32 the backward
    pass runs in float32, otherwise on float64 copies; each gradient must come back in that
    dtype. A non-scalar output is reduced with fixed random weights so every output entry is
    tested. ``atol``/``rtol`` default to ``default_tolerances`` of that dtype. Raises
    ``GradcheckError`` naming the input, the worst entry, and both values.
    """
    if not inputs:
        raise ValueError("gradcheck: give at least one input tensor")
    rng = np.random.default_rng(seed)
    xp = inputs[0].xp if isinstance(inputs[0], Tensor) else None
    given = [np.asarray(to_numpy(x.data if isinstance(x, Tensor) else x)) for x in inputs]
    # The backward pass runs in float32 when every input is float32; float64 holds the same
    # values exactly, for the finite differences.
    dtype = "float32" if all(g.dtype == np.float32 for g in given) else "float64"
    hosts = [np.array(g, dtype=np.float64) for g in given]
    if xp is None:
        from ..backend import namespace_of

        xp = namespace_of(inputs[0])
    default_atol, default_rtol = default_tolerances(dtype)
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol

    def make(arrays: list[np.ndarray], dtype: str) -> list[Tensor]:
        return [Tensor(asarray(a, dtype=dtype, xp=xp), requires_grad=True, xp=xp) for a in arrays]

    probe = fn(*make(hosts, dtype))
    weights = weights64 = None
    if probe.shape != ():
        out_dtype = str(to_numpy(probe.data).dtype)
        # Weights rounded to the output's dtype, so both passes differentiate the same function.
        host_weights = rng.standard_normal(probe.shape).astype(out_dtype).astype(np.float64)
        weights = asarray(host_weights, dtype=out_dtype, xp=xp)
        weights64 = asarray(host_weights, dtype="float64", xp=xp)

    def value(arrays: list[np.ndarray]) -> float:
        out = _scalar_output(fn, make(arrays, "float64"), weights64)
        return float(to_numpy(out.data))

    tensors = make(hosts, dtype)
    _scalar_output(fn, tensors, weights).backward()
    for i, t in enumerate(tensors):
        if t.grad is not None and t.grad.dtype != t.data.dtype:
            raise GradcheckError(f"input {i}: gradient dtype {_dtype_name(t.grad.dtype)} != "
                                 f"input dtype {_dtype_name(t.data.dtype)}; a backward rule "
                                 f"promoted it")
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
