"""Applying keep-masks to a native model, so that pruned weights stay zero while training on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backend import asarray
from ..layout import ParamLayout, layout_of
from ..optim import check_keep_mask

__all__ = ["apply_masks", "remove_masks"]


def apply_masks(model: Any, masks: Mapping[str, Any] | Any, *,
                layout: ParamLayout | None = None, optimizer: Any = None) -> dict[str, Any]:
    """Zero the pruned weights of ``model`` (True = kept) and keep them zero while training on.

    ``masks`` is ``{parameter name: bool array}`` or one flat bool vector over ``layout`` (the
    model's layout by default). Each mask is stored on its parameter (``Parameter.mask``), so
    every optimizer, created before or after this call, keeps pruned weights and their momentum
    / Adam state at exactly zero; ``optimizer`` (optional) is also given the masks explicitly
    through ``set_masks``. All masks are validated before any weight changes. Returns the masks
    by name.
    """
    params = dict(model.named_parameters())
    if not isinstance(masks, Mapping):
        layout = layout_of(model) if layout is None else layout
        layout.check_vector(masks, "mask")
        by_name = {name: m for name, m in layout.unflatten(masks).items()}
    else:
        by_name = dict(masks)
    for name, mask in by_name.items():
        if name not in params:
            raise KeyError(f"apply_masks: the model has no parameter {name!r}; "
                           f"its parameters are {list(params)}")
        check_keep_mask("apply_masks", name, mask, params[name].shape)
    if optimizer is not None:
        unknown = [n for n in by_name if n not in optimizer.names]
        if unknown:
            raise KeyError(f"apply_masks: the optimizer does not hold {unknown}; build it from "
                           f"model.named_parameters() so names match")
    by_name = {name: asarray(m, xp=params[name].xp) for name, m in by_name.items()}
    for name, mask in by_name.items():
        p = params[name]
        p.data = p.xp.where(mask, p.data, p.xp.zeros_like(p.data))
        p.mask = None if bool(p.xp.all(mask)) else mask  # nothing pruned: nothing to enforce
    if optimizer is not None:
        optimizer.set_masks(by_name)
    return by_name


def remove_masks(model: Any, optimizer: Any = None) -> None:
    """Forget the masks of ``model`` (and of ``optimizer``): pruned weights may grow again."""
    for _, p in model.named_parameters():
        p.mask = None
    if optimizer is not None:
        optimizer.set_masks(None)
