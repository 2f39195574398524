"""Checks for the exercises of notebook 07 (the PyTorch adapter)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .verdict import is_missing, missing, right, wrong

__all__ = ["pruned_per_layer", "most_pruned_layer"]


def _host(mask: Any) -> np.ndarray:
    return np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask,
                      dtype=bool)


def pruned_per_layer(answer: Any, masks: Any, *, strict: bool | None = None) -> Any:
    """07.1: {parameter name: number of REMOVED entries} for a dict of keep-masks."""
    ex = "07.1"
    if is_missing(answer):
        return missing(ex, "removed", "a keep-mask is True where the weight stays",
                       strict=strict)
    want = {name: int((~_host(m)).sum()) for name, m in masks.items()}
    got = {name: int(v) for name, v in dict(answer).items()}
    if got == want:
        return right(ex, f"{sum(want.values())} weights removed in {len(want)} tensors.",
                     strict=strict)
    kept = {name: int(_host(m).sum()) for name, m in masks.items()}
    if got == kept:
        hint = "True means KEPT: count the False entries, (~mask).sum()"
    elif set(got) != set(want):
        hint = f"one entry per masked tensor: {sorted(want)}"
    else:
        hint = "count (~mask).sum() for each mask"
    return wrong(ex, f"got {got}, expected {want}.", hint, strict=strict)


def most_pruned_layer(answer: Any, masks: Any, *, strict: bool | None = None) -> Any:
    """07.2: the name of the tensor that loses the largest FRACTION of its entries."""
    ex = "07.2"
    if is_missing(answer):
        return missing(ex, "name", "compare (~mask).float().mean() across tensors",
                       strict=strict)
    fraction = {name: float((~_host(m)).mean()) for name, m in masks.items()}
    count = {name: int((~_host(m)).sum()) for name, m in masks.items()}
    want = max(fraction, key=fraction.get)
    if answer == want:
        return right(ex, f"{want} loses {fraction[want]:.1%} of its weights.", strict=strict)
    hint = ("that tensor loses the most weights, but it is also the biggest; compare fractions "
            "(removed / size)" if answer == max(count, key=count.get) else
            "the fraction removed is (~mask).float().mean() for each tensor")
    return wrong(ex, f"{answer!r} loses {fraction.get(answer, float('nan')):.1%}.", hint,
                 strict=strict)
