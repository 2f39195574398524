"""Fused operations for neural networks: one graph node each, with a hand-derived backward.

In a small network every graph node costs microseconds, so the hot pairs are fused:
``linear`` (``x Wᵀ + b``) and ``cross_entropy`` (log-softmax + negative log-likelihood). The fused
cross-entropy gradient, ``(softmax(z) − onehot(y)) / B``, is also the clearest formula to teach.
"""

from __future__ import annotations

import functools
from typing import Any

from .tensor import Tensor

__all__ = ["linear", "log_softmax", "softmax", "cross_entropy", "mse_loss"]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias``: ``x`` ``(B, in)``, ``weight`` ``(out, in)``, ``bias`` ``(out,)``.

    The input gradient ``g @ weight`` is computed only when ``x`` needs it (not for the data).
    """
    xp = weight.xp
    X, W = x.data, weight.data
    if X.ndim != 2 or W.ndim != 2 or X.shape[1] != W.shape[1]:
        raise ValueError(
            f"linear: input of shape {tuple(X.shape)} does not fit a weight of shape "
            f"{tuple(W.shape)} (expected input (batch, {W.shape[1] if W.ndim == 2 else '?'})); "
            f"check the layer sizes or flatten the input"
        )
    out = X @ W.T
    if bias is not None:
        out += bias.data  # ``out`` is a fresh array, so adding in place is safe

        def backward(g: Any) -> tuple[Any, Any, Any]:
            return (g @ W if x.requires_grad else None, g.T @ X, xp.sum(g, axis=0))

        return Tensor._make(out, xp, (x, weight, bias), backward, "linear")

    def backward_nobias(g: Any) -> tuple[Any, Any]:
        return (g @ W if x.requires_grad else None, g.T @ X)

    return Tensor._make(out, xp, (x, weight), backward_nobias, "linear")


def _log_softmax_data(z: Any, axis: int, xp: Any) -> Any:
    shifted = z - xp.max(z, axis=axis, keepdims=True)  # the max trick: exp never overflows
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``x − log Σ exp(x)`` along ``axis``, computed stably."""
    xp = x.xp
    out_data = _log_softmax_data(x.data, axis, xp)

    def backward(g: Any) -> tuple[Any]:
        return (g - xp.exp(out_data) * xp.sum(g, axis=axis, keepdims=True),)

    return Tensor._make(out_data, xp, (x,), backward, "log_softmax")


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """``exp(x) / Σ exp(x)`` along ``axis``."""
    xp = x.xp
    out_data = xp.exp(_log_softmax_data(x.data, axis, xp))

    def backward(g: Any) -> tuple[Any]:
        return (out_data * (g - xp.sum(g * out_data, axis=axis, keepdims=True)),)

    return Tensor._make(out_data, xp, (x,), backward, "softmax")


def _labels_array(labels: Any, xp: Any) -> Any:
    if isinstance(labels, Tensor):
        labels = labels.data
    if not hasattr(labels, "dtype"):
        from ..backend import asarray

        labels = asarray(labels, dtype="int64", xp=xp)
    return labels


@functools.cache
def _is_integral(xp: Any, dtype: Any) -> bool:
    """``xp.isdtype(dtype, "integral")``, asked once per dtype (it costs ~2 µs under NumPy)."""
    return xp.isdtype(dtype, "integral")


def cross_entropy(logits: Tensor, labels: Any, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy of ``logits`` ``(B, C)`` against integer ``labels`` ``(B,)``.

    Forward: ``mean_b [log Σ_c exp z_bc − z_b,y_b]``; backward: ``(softmax(z) − onehot(y)) / B``.
    """
    xp = logits.xp
    z = logits.data
    y = _labels_array(labels, xp)
    if z.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (batch, classes), got {tuple(z.shape)}")
    batch, n_classes = z.shape
    if y.ndim != 1 or y.shape[0] != batch:
        raise ValueError(f"cross_entropy: labels must have shape ({batch},), got {tuple(y.shape)}")
    if not _is_integral(xp, y.dtype):
        raise TypeError(f"cross_entropy: labels must be integers (class indices), got {y.dtype}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    shifted = z - xp.max(z, axis=1, keepdims=True)  # the max trick: exp never overflows
    exps = xp.exp(shifted)
    sums = xp.sum(exps, axis=1, keepdims=True)
    onehot = xp.astype(y[:, None] == xp.arange(n_classes, dtype=y.dtype), z.dtype)
    # A label outside [0, C) has an all-zero one-hot row: one cheap count catches it.
    if batch and float(xp.sum(onehot)) != batch:
        raise ValueError(
            f"cross_entropy: labels must lie in [0, {n_classes}), got values in "
            f"[{int(xp.min(y))}, {int(xp.max(y))}]; does the output layer have enough classes?"
        )
    scale = 1.0 / batch if reduction == "mean" and batch else 1.0
    neg_log_probs = xp.log(sums) - shifted  # −log softmax(z), for every class
    out_data = xp.sum(neg_log_probs * onehot) * scale  # taken at each sample's label
    probs = exps / sums

    def backward(g: Any) -> tuple[Any]:
        return ((probs - onehot) * (g * scale),)

    return Tensor._make(out_data, xp, (logits,), backward, "cross_entropy")


def mse_loss(prediction: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Mean squared error ``mean((prediction − target)²)``; backward ``2 (pred − target) / N``."""
    xp = prediction.xp
    t = target.data if isinstance(target, Tensor) else target
    if tuple(t.shape) != tuple(prediction.data.shape):
        if t.ndim == 1 and prediction.data.ndim == 2 and prediction.data.shape[1] == 1:
            t = xp.reshape(t, (-1, 1))
        else:
            raise ValueError(
                f"mse_loss: target shape {tuple(t.shape)} does not match prediction shape "
                f"{tuple(prediction.data.shape)}"
            )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    diff = prediction.data - xp.astype(t, prediction.data.dtype)
    count = 1
    for d in diff.shape:
        count *= d
    scale = 1.0 / count if reduction == "mean" and count else 1.0
    out_data = xp.sum(diff * diff) * scale

    def backward(g: Any) -> tuple[Any]:
        return (diff * (2.0 * scale * g),)

    return Tensor._make(out_data, xp, (prediction,), backward, "mse_loss")
