"""Pruning a native model: set keep-masks on its parameters, or remove them (docs/theory.md §8)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..layout import ParamLayout, layout_of
from .module import check_keep_mask

__all__ = ["apply_masks", "remove_masks"]


def apply_masks(model: Any, masks: Mapping[str, Any] | Any, *,
                layout: ParamLayout | None = None, optimizer: Any = None) -> Any:
    """Prune ``model`` in place with keep-masks (True = kept) and return it.

    ``masks`` is ``{parameter name: bool array}`` or one flat bool vector over ``layout`` (the
    model's layout by default). Each mask is set on its parameter (``Parameter.mask``): pruned
    weights become zero, and every optimizer, created before or after this call, keeps them and
    their momentum / Adam state at exactly zero. ``optimizer`` (optional) has that state zeroed at
    once; it must hold this model's parameters. Everything is validated before anything changes.
    Same argument order as ``kooplearn_prune.adapters.torch.apply_masks``.
    """
    params = dict(model.named_parameters())
    if not isinstance(masks, Mapping):
        layout = layout_of(model) if layout is None else layout
        layout.check_vector(masks, "masks")
        masks = layout.unflatten(masks)
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"apply_masks: the model has no parameter {name!r}; "
                           f"its parameters are {list(params)}")
        check_keep_mask("apply_masks", name, mask, params[name].shape)
    if optimizer is not None:
        foreign = [name for name in masks
                   if name not in optimizer.names
                   or optimizer.params[optimizer.names.index(name)] is not params[name]]
        if foreign:
            raise ValueError(f"apply_masks: optimizer= does not hold this model's parameters "
                             f"{foreign}; build it from this model (e.g. SGD(model, ...)) or "
                             f"leave optimizer= out")
    for name, mask in masks.items():
        params[name].mask = mask
    if optimizer is not None:
        optimizer.set_masks({name: params[name].mask for name in masks})
    return model


def remove_masks(model: Any) -> Any:
    """Forget the masks of ``model``: pruned weights (still zero) may grow again. Returns it."""
    for _, p in model.named_parameters():
        p.mask = None
    return model
