"""One level of iterative pruning: remove a fraction of what remains (docs/theory.md §8, §13).

Lottery-ticket style pruning repeats *train, prune, rewind*. Level ``L`` of ``fraction`` ``p``
has removed ``1 − (1 − p)^L`` of the prunable entries (``level_sparsity``); ``prune_remaining``
makes its mask from the level's scores and the previous level's keep-mask. Arrays in, arrays out:
both the native ``kooplearn_prune.iterative`` and the PyTorch adapter's ``iterative`` call it.

No second selection engine: the previously pruned entries get a score below every remaining
one and the exact-k engine (``global_mask`` / ``layerwise_mask``) removes
``k_L = round(s_L · n_prunable)`` entries. Those ``k_L`` are therefore all the previously pruned
entries plus the ``k_L − k_{L−1}`` lowest-scored survivors: the sparsity is exactly the one-shot
count at ``s_L`` (so a magnitude mask at ``s_L`` has as many kept entries), and ties among the
survivors go by index, as always.
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import namespace_of
from ..layout import ParamLayout
from .masks import _check_mask, _is_number, global_mask, layerwise_mask, n_to_prune

__all__ = ["level_sparsity", "check_fraction", "remaining_scores", "prune_remaining"]

SCOPES = ("global", "layerwise")


def check_fraction(fraction: Any) -> float:
    """``fraction`` (share of the remaining prunable entries each level removes), in ``(0, 1)``."""
    if not _is_number(fraction) or not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction={fraction!r} must be a number in (0, 1): the share of the "
                         f"remaining prunable weights each level removes (0.2 removes 20 %)")
    return float(fraction)


def level_sparsity(fraction: float, level: int) -> float:
    """Sparsity over the prunable set after ``level`` levels: ``1 − (1 − fraction)^level``."""
    fraction = check_fraction(fraction)
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ValueError(f"level must be a non-negative integer, got {level!r}")
    return 1.0 - (1.0 - fraction) ** level


def remaining_scores(scores: Any, keep: Any, layout: ParamLayout) -> Any:
    """Float64 copy of ``scores`` where every entry ``keep`` prunes scores below all kept ones.

    ``keep``: the previous level's bool keep-mask ``(n,)`` (non-prunable entries must be kept).
    The pruned entries get ``min(kept prunable scores) − max(1, |min|)``, a finite value, so the
    exact-k engine ranks them first. ``scores`` and ``keep`` are not modified.
    """
    xp = _check_mask(keep, layout, "keep")
    if not hasattr(scores, "shape") or tuple(scores.shape) != (layout.size,):
        raise ValueError(f"scores must have shape ({layout.size},) like the layout, got "
                         f"{tuple(getattr(scores, 'shape', ()))}")
    prunable = layout.prunable_mask(xp=xp)
    if bool(xp.any(~keep & ~prunable)):
        raise ValueError("keep prunes entries of non-prunable tensors; a keep-mask from this "
                         "layout's levels always keeps them")
    values = xp.astype(scores, xp.float64, copy=True)
    n_bad = int(xp.sum(xp.astype(~xp.isfinite(values), xp.int64)))
    if n_bad:
        raise ValueError(f"scores contain {n_bad} non-finite values; a mask cannot rank NaN or "
                         f"inf scores - check the method that made them")
    alive = keep & prunable
    if not bool(xp.any(alive)):
        raise ValueError("keep has pruned every prunable entry: nothing remains to prune")
    lowest = float(xp.min(values[alive]))
    sentinel = lowest - max(1.0, abs(lowest))
    if not math.isfinite(sentinel):
        raise ValueError(f"scores reach {lowest!r}, too close to float64's limit to rank the "
                         f"pruned entries below them; rescale the scores")
    return xp.where(keep, values, xp.asarray(sentinel, dtype=xp.float64))


def prune_remaining(scores: Any, sparsity: float, keep: Any, layout: ParamLayout,
                    scope: str = "global") -> Any:
    """Keep-mask at cumulative ``sparsity`` that also prunes everything ``keep`` pruned.

    ``scores``: the level's real, finite scores ``(n,)``; ``keep``: the previous level's keep-mask
    (``None`` or all-kept for the first level); ``scope``: ``"global"`` (``global_mask``) or
    ``"layerwise"`` (``layerwise_mask``, each tensor at ``sparsity``). ``ValueError`` when
    ``keep`` already prunes more than ``sparsity`` allows, or (layer-wise) when a tensor already
    lost more than its share; both are raised before anything is returned.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    if not isinstance(layout, ParamLayout):
        raise TypeError(f"layout must be a ParamLayout, got {type(layout).__name__}")
    xp = namespace_of(scores)
    if keep is None:
        keep = xp.ones((layout.size,), dtype=xp.bool)
    ranked = remaining_scores(scores, keep, layout)
    k = n_to_prune(sparsity, layout.n_prunable)
    already = layout.size - int(xp.sum(xp.astype(keep, xp.int64)))
    if already > k:
        raise ValueError(f"keep already prunes {already} entries but sparsity={sparsity} removes "
                         f"only {k} of the {layout.n_prunable} prunable ones; a level's sparsity "
                         f"must not fall below the previous level's")
    if scope == "global":
        mask = global_mask(ranked, sparsity, layout=layout)
    else:
        mask = layerwise_mask(ranked, sparsity, layout=layout)
        revived = int(xp.sum(xp.astype(mask & ~keep, xp.int64)))
        if revived:
            raise ValueError(f"layer-wise pruning at sparsity={sparsity} would keep {revived} "
                             f"entries the previous level pruned (a tensor already lost more "
                             f"than its share); use scope='global'")
    return mask
