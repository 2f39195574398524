"""Gradient pruning scores (docs/theory.md §11): ``|θ ⊙ ḡ|`` or ``|ḡ|``.

``ḡ`` is the mean mini-batch gradient over ``n_batches`` batches, an estimate of the full-batch
gradient ``∇L(θ)``; a single batch is too noisy to rank parameters by.
"""

from __future__ import annotations

from typing import Any

from ..layout import ParamLayout, layout_of

__all__ = ["gradient_scores", "gradient_scores_from", "mean_gradient"]

KINDS = ("weight_times_gradient", "gradient")


def gradient_scores_from(theta: Any, gradient: Any, kind: str = "weight_times_gradient") -> Any:
    """Scores from given vectors: ``|θ ⊙ g|`` (``"weight_times_gradient"``) or ``|g|``; float64."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if tuple(theta.shape) != tuple(gradient.shape):
        raise ValueError(f"theta {tuple(theta.shape)} and gradient {tuple(gradient.shape)} "
                         f"must have the same shape")
    from ..backend import namespace_of

    xp = namespace_of(theta, gradient)
    g = xp.astype(gradient, xp.float64)
    if kind == "gradient":
        return xp.abs(g)
    return xp.abs(xp.astype(theta, xp.float64) * g)


def mean_gradient(model: Any, batches: Any, *, loss: str | Any = "cross_entropy",
                  n_batches: int = 10, layout: ParamLayout | None = None) -> Any:
    """Mean mini-batch gradient ``ḡ`` of a native ``model`` over ``n_batches`` batches, ``(n,)``.

    ``batches`` yields ``(x, y)`` (a ``BatchIterator``, a list, ...); the first ``n_batches``
    are used. ``ḡ`` estimates the full-batch gradient ``∇L(θ)`` (docs/theory.md §11); a single
    batch is too noisy to rank parameters by. Parameters and their ``.grad`` are left unchanged.
    """
    from ..autograd import Tensor  # model-side imports stay out of the array-only path
    from ..training import LOSSES

    if not isinstance(n_batches, int) or n_batches < 1:
        raise ValueError(f"n_batches must be a positive integer, got {n_batches!r}")
    loss_fn = LOSSES[loss] if isinstance(loss, str) and loss in LOSSES else loss
    if not callable(loss_fn):
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
    layout = layout_of(model) if layout is None else layout
    params = [p for _, p in model.named_parameters()]
    saved_grads = [p.grad for p in params]
    xp = params[0].xp
    total = xp.zeros((layout.size,), dtype=xp.float64)
    used = 0
    try:
        for xb, yb in batches:
            if used == n_batches:
                break
            for p in params:
                p.grad = None
            loss_fn(model(Tensor(xb, xp=xp)), yb).backward()
            grads = [p.grad if p.grad is not None else xp.zeros_like(p.data) for p in params]
            total += xp.astype(layout.flatten(grads), xp.float64)
            used += 1
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
    if used == 0:
        raise ValueError("mean_gradient: batches yielded no batch")
    return total / used


def gradient_scores(model: Any, batches: Any, *, loss: str | Any = "cross_entropy",
                    n_batches: int = 10, kind: str = "weight_times_gradient",
                    layout: ParamLayout | None = None) -> Any:
    """Flat float64 gradient-pruning scores ``|θ ⊙ ḡ|`` (or ``|ḡ|``) of a native ``model``.

    ``ḡ`` is ``mean_gradient(model, batches, ...)``. Same argument order as
    ``kooplearn_prune.adapters.torch.gradient_scores``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    layout = layout_of(model) if layout is None else layout
    gradient = mean_gradient(model, batches, loss=loss, n_batches=n_batches, layout=layout)
    theta = layout.flatten([p.data for _, p in model.named_parameters()])
    return gradient_scores_from(theta, gradient, kind)
