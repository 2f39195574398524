"""Turning scores into masks: the one exact-k selection engine every pruning method uses.

A pruning method gives each parameter a score ``s_i``; ``global_mask`` removes the ``k`` prunable
entries with the smallest scores (docs/theory.md §8) and ``layerwise_mask`` does the same tensor by
tensor. A mask is a boolean vector of length ``n`` (the flattened θ), ``True`` = kept.

Three promises hold for every mask made here:

* **exact count** -- exactly ``k = n_to_prune(sparsity, n_prunable)`` entries are removed, with
  Python's ``round`` (the rounding ``torch.nn.utils.prune`` uses, so masks can be compared with it);
* **ties broken by index** (docs/theory.md §8) -- among equal scores the lower flat index is removed
  first, exactly as if the entries were ordered by a stable sort, so a mask is a pure function of
  the scores;
* **non-prunable entries are always kept** (biases etc., as said by the ``ParamLayout``).

Everything runs on the scores' own array backend (NumPy, CuPy, array_api_strict) with array-API
functions; only a handful of integer counts travel to the host.
"""

from __future__ import annotations

import math
from fractions import Fraction
from types import ModuleType
from typing import Any

import numpy as np

from ..backend import is_numpy_namespace, namespace_of
from ..layout import ParamLayout

__all__ = [
    "COMPRESSION_OVER",
    "resolve_sparsity",
    "n_to_prune",
    "global_mask",
    "layerwise_mask",
    "masks_by_name",
]


#: The project-wide default set a compression ratio counts (docs/theory.md §13): "prunable"
#: (``prunable / kept prunable = 1 / (1 − p)``, what the demo, configs and the runner mean by
#: "4x"), or "all" (ShrinkBench's ``all parameters / kept parameters``, biases included).
COMPRESSION_OVER = "prunable"
COMPRESSION_SETS = ("prunable", "all")


def check_over(over: Any) -> str:
    """``over`` if it names a set a compression may count, else a clear ``ValueError``."""
    if over not in COMPRESSION_SETS:
        raise ValueError(f"over={over!r} must be 'prunable' (1/(1-sparsity)) or 'all' "
                         f"(ShrinkBench: all parameters / kept parameters)")
    return over


# --------------------------------------------------------------------------- sparsity and counts
def _is_number(x: Any) -> bool:
    """A real Python or NumPy scalar (``True``/``False`` are not sparsities)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_sparsity(sparsity: Any) -> float:
    if not _is_number(sparsity):
        raise TypeError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    value = float(sparsity)
    if not (0.0 <= value < 1.0):
        raise ValueError(
            f"sparsity={sparsity!r} is outside [0, 1): sparsity is the fraction of prunable "
            f"entries removed (0.9 removes 90 %); pruning everything is not allowed"
        )
    return value


def _default_layout(n: int) -> ParamLayout:
    """A layout of one prunable tensor called ``theta``: every entry may be pruned."""
    return ParamLayout(("theta",), ((int(n),),), (True,))


def resolve_sparsity(
    sparsity: float | None = None,
    compression: float | None = None,
    layout: ParamLayout | None = None,
    n: int | None = None,
    over: str = COMPRESSION_OVER,
) -> float:
    """The sparsity ``p`` over the prunable set, from a sparsity or a compression ratio.

    docs/theory.md §13. Give exactly one of ``sparsity`` (canonical, in ``[0, 1)``) and
    ``compression``, which counts the set ``over`` names:

    * ``over="prunable"`` (the default, ``COMPRESSION_OVER``): ``p = 1 - 1/compression``;
    * ``over="all"``: ShrinkBench's ``total / nonzero`` over *all* ``n`` parameters,
      non-prunable ones (biases, ...) included, which are always kept. So the prunable entries
      that stay are ``n / compression - n_nonprunable``, and
      ``p = 1 - (n / compression - n_nonprunable) / n_prunable``.

    Without a layout every one of the ``n`` entries is prunable and both give ``1 - 1/c``.
    The result is a float; ``n_to_prune`` turns it into a count.
    """
    check_over(over)
    if (sparsity is None) == (compression is None):
        raise ValueError(
            "give exactly one of sparsity= (fraction of prunable entries removed, in [0, 1)) or "
            f"compression= (kept fraction's inverse, >= 1, over={over!r}); got "
            f"sparsity={sparsity!r}, "
            f"compression={compression!r}"
        )
    if sparsity is not None:
        return _check_sparsity(sparsity)

    if not _is_number(compression):
        raise TypeError(f"compression must be a number >= 1, got {compression!r}")
    compression = float(compression)
    if not math.isfinite(compression) or compression < 1.0:
        raise ValueError(
            f"compression={compression!r} must be a finite number >= 1 (parameters / kept "
            f"parameters over the {over} set; 1 means no pruning, 10 keeps one in ten)"
        )
    if over == "prunable":
        if layout is not None and layout.n_prunable == 0 and compression != 1.0:
            raise ValueError(f"compression={compression} is unreachable: the layout has no "
                             f"prunable entries")
        return 1.0 - 1.0 / compression
    if layout is None:
        if n is None:
            raise ValueError("compression= needs the parameter count: pass layout= or n=")
        layout = _default_layout(n)
    elif n is not None and int(n) != layout.size:
        raise ValueError(f"n={n} disagrees with the layout, which has {layout.size} parameters")
    total, n_prunable = layout.size, layout.n_prunable
    n_fixed = total - n_prunable
    keep_prunable = total / compression - n_fixed
    if n_prunable == 0:
        if compression == 1.0:
            return 0.0
        raise ValueError(
            f"compression={compression} is unreachable: the layout has no prunable entries"
        )
    if keep_prunable <= 0.0:
        max_compression = total / n_fixed if n_fixed else math.inf
        raise ValueError(
            f"compression={compression} is unreachable: {n_fixed} of the {total} parameters are "
            f"not prunable and always kept, so compression must stay below {max_compression:.6g} "
            f"(which would already remove every prunable entry)"
        )
    return max(0.0, 1.0 - keep_prunable / n_prunable)


def n_to_prune(sparsity: float, n_prunable: int) -> int:
    """Number of entries to remove: ``round(sparsity * n_prunable)`` with Python's ``round``.

    Python's ``round`` rounds halves to even (``round(2.5) == 2``); ``torch.nn.utils.prune`` uses
    the same expression, so a mask made here removes as many entries as PyTorch's would.
    """
    p = _check_sparsity(sparsity)
    if isinstance(n_prunable, bool) or not isinstance(n_prunable, (int, np.integer)) \
            or n_prunable < 0:
        raise ValueError(f"n_prunable must be a non-negative integer, got {n_prunable!r}")
    return int(round(p * int(n_prunable)))


# --------------------------------------------------------------------------- validation
def _prepare_scores(scores: Any, layout: ParamLayout | None) -> tuple[Any, ModuleType, ParamLayout]:
    """Check ``scores`` and return a float64 *copy* on its backend, the namespace and the layout."""
    if isinstance(scores, (list, tuple)):
        scores = np.asarray(scores)
    if not hasattr(scores, "shape") or not hasattr(scores, "dtype"):
        raise TypeError(f"scores must be an array of shape (n,), got {type(scores).__name__}")
    xp = namespace_of(scores)
    if scores.ndim != 1:
        raise ValueError(
            f"scores must be a flat vector of shape (n,), got shape {tuple(scores.shape)}; "
            f"flatten per-tensor scores with ParamLayout.flatten"
        )
    if not (xp.isdtype(scores.dtype, "real floating") or xp.isdtype(scores.dtype, "integral")):
        raise TypeError(
            f"scores must be real numbers, got dtype {scores.dtype}; take abs() or the real "
            f"part of complex scores first"
        )
    if layout is None:
        layout = _default_layout(scores.shape[0])
    elif not isinstance(layout, ParamLayout):
        raise TypeError(f"layout must be a ParamLayout, got {type(layout).__name__}")
    layout.check_vector(scores, "scores")
    # astype copies, so the caller's scores are never modified by the sentinels set below.
    values = xp.astype(scores, xp.float64, copy=True)
    bad = ~xp.isfinite(values)
    n_bad = int(xp.sum(xp.astype(bad, xp.int64)))
    if n_bad:
        first = int(xp.argmax(xp.astype(bad, xp.int8)))
        n_nan = int(xp.sum(xp.astype(xp.isnan(values), xp.int64)))
        raise ValueError(
            f"scores contain {n_bad} non-finite values ({n_nan} NaN), the first at flat index "
            f"{first}; a mask cannot rank NaN or inf scores - check the method that made them"
        )
    return values, xp, layout


def _resolve_k(sparsity, compression, layout: ParamLayout, over: str) -> int:
    p = resolve_sparsity(sparsity, compression, layout=layout, over=over)
    return n_to_prune(p, layout.n_prunable)


# --------------------------------------------------------------------------- the engine
def _cumulative_sum(x: Any, xp: ModuleType) -> Any:
    # cumulative_sum entered the standard in 2023.12 (NumPy 2.1); older NumPy has cumsum.
    fn = getattr(xp, "cumulative_sum", None) or xp.cumsum
    return fn(x)


def _kth_smallest(values: Any, k: int, xp: ModuleType) -> float:
    """The ``k``-th smallest value (1-based) of a 1-D array."""
    if is_numpy_namespace(xp):
        # Host NumPy: a partition is O(n), a full sort O(n log n) (5-10x slower at n = 1e6).
        return float(np.partition(values, k - 1)[k - 1])
    return float(xp.sort(values)[k - 1])


def _smallest_k(values: Any, k: int, xp: ModuleType) -> Any:
    """Boolean vector marking the ``k`` smallest entries of ``values``, ties by lower index.

    Equal to taking the first ``k`` positions of a stable ascending argsort, computed with one
    partial sort: everything below the ``k``-th smallest value ``tau`` goes, and of the entries
    equal to ``tau`` the lowest-indexed ones fill the remaining places. ``+inf`` marks entries
    that must never be chosen; callers guarantee ``k`` does not exceed the finite entries.
    """
    if k <= 0:
        return xp.zeros(values.shape, dtype=xp.bool)
    tau = _kth_smallest(values, k, xp)
    below = values < tau
    n_below = int(xp.sum(xp.astype(below, xp.int64)))
    tied = values == tau
    tie_rank = _cumulative_sum(xp.astype(tied, xp.int64), xp)  # 1, 2, ... along the ties
    return below | (tied & (tie_rank <= k - n_below))


def _exclude_unprunable(values: Any, layout: ParamLayout) -> None:
    """Give every non-prunable entry the score +inf (in place on our private copy)."""
    for off, size, prunable in zip(layout.offsets, layout.sizes, layout.prunable, strict=True):
        if not prunable and size:
            values[off : off + size] = math.inf


def _layer_caps(layout: ParamLayout, max_layer_sparsity: float) -> list[int]:
    """Most entries each tensor may lose: ``floor(cap * size)`` (0 for non-prunable tensors)."""
    # round(.., 9) first so that e.g. 0.29 * 100 = 28.999999999999996 counts as 29.
    return [math.floor(round(max_layer_sparsity * size, 9)) if prunable else 0
            for size, prunable in zip(layout.sizes, layout.prunable, strict=True)]


def _capped_smallest_k(values: Any, k: int, layout: ParamLayout, caps: list[int],
                       xp: ModuleType) -> Any:
    """The ``k`` smallest entries, taking at most ``caps[i]`` from tensor ``i``.

    Same result as walking the entries from the smallest score up (ties by index) and skipping
    those of tensors that already lost their cap: any tensor over its cap among the plain ``k``
    smallest is certainly full in that walk, so it loses exactly its ``caps[i]`` smallest, leaves
    the competition, and the remaining count is chosen again among the other tensors.
    """
    removed_fixed = xp.zeros(values.shape, dtype=xp.bool)
    full = [False] * len(caps)
    k_left = k
    while True:
        removed = _smallest_k(values, k_left, xp)
        over = [
            i for i, (off, size) in enumerate(zip(layout.offsets, layout.sizes, strict=True))
            if not full[i] and size
            and int(xp.sum(xp.astype(removed[off : off + size], xp.int64))) > caps[i]
        ]
        if not over:
            return removed | removed_fixed
        for i in over:
            sl = slice(layout.offsets[i], layout.offsets[i] + layout.sizes[i])
            removed_fixed[sl] = _smallest_k(values[sl], caps[i], xp)
            values[sl] = math.inf
            full[i] = True
            k_left -= caps[i]


def global_mask(
    scores: Any,
    sparsity: float | None = None,
    *,
    compression: float | None = None,
    layout: ParamLayout | None = None,
    max_layer_sparsity: float | None = None,
    over: str = COMPRESSION_OVER,
) -> Any:
    """Global pruning: keep all but the ``k`` prunable entries with the smallest scores.

    docs/theory.md §8, §13. ``scores``: real, finite, shape ``(n,)`` (not modified). Give
    ``sparsity`` (fraction of the prunable entries to remove, in ``[0, 1)``) or ``compression``
    over the set ``over`` names (``"prunable"`` by default, ``"all"`` for ShrinkBench's; see
    ``resolve_sparsity``). Exactly ``k = round(sparsity * n_prunable)`` entries are removed;
    ties go by index (lower flat index removed first); entries of non-prunable tensors are always
    kept. Without ``layout`` every entry is prunable.

    ``max_layer_sparsity`` (in ``(0, 1]``, optional) stops global pruning from emptying a tensor:
    no prunable tensor loses more than ``floor(max_layer_sparsity * size)`` entries, and the
    removals it cannot take go to the next-smallest scores elsewhere, so exactly ``k`` entries are
    still removed (``ValueError`` when the caps leave fewer than ``k`` entries removable).

    Returns a boolean vector of shape ``(n,)`` on the scores' backend, ``True`` = kept.
    """
    if max_layer_sparsity is not None and (
        not _is_number(max_layer_sparsity) or not (0.0 < float(max_layer_sparsity) <= 1.0)
    ):
        raise ValueError(
            f"max_layer_sparsity={max_layer_sparsity!r} must be a number in (0, 1]: the "
            f"largest fraction of any one tensor that global pruning may remove"
        )
    values, xp, layout = _prepare_scores(scores, layout)
    k = _resolve_k(sparsity, compression, layout, over)
    _exclude_unprunable(values, layout)
    if max_layer_sparsity is None:
        removed = _smallest_k(values, k, xp)
    else:
        caps = _layer_caps(layout, float(max_layer_sparsity))
        if k > sum(caps):
            raise ValueError(
                f"max_layer_sparsity={max_layer_sparsity} lets global pruning remove at most "
                f"{sum(caps)} entries, but {k} must go for this sparsity; raise "
                f"max_layer_sparsity or lower the sparsity"
            )
        removed = _capped_smallest_k(values, k, layout, caps, xp)
    return ~removed


def _layer_counts(k: int, p: float, layout: ParamLayout) -> list[int]:
    """Split ``k`` removals over the prunable tensors in proportion to their sizes.

    Each tensor first gets ``floor(p * size)``; the few removals left over (``k`` is rounded over
    the whole prunable set) go one each to the tensors with the largest remainders
    ``p * size - floor(p * size)``, ties to the earlier tensor (largest-remainder apportionment).
    Every tensor therefore loses ``floor`` or ``ceil`` of ``p * size``, and the total is ``k``.
    """
    exact = Fraction(p)  # exact arithmetic keeps remainders comparable without float noise
    counts, remainders = [], []
    for i, (size, prunable) in enumerate(zip(layout.sizes, layout.prunable, strict=True)):
        quota = exact * size if prunable else Fraction(0)
        counts.append(math.floor(quota))
        if quota != math.floor(quota):
            remainders.append((-(quota - math.floor(quota)), i))
    left = k - sum(counts)
    if not 0 <= left <= len(remainders):  # cannot happen: k is floor or ceil of p * n_prunable
        raise RuntimeError(f"apportionment failed: {left} removals left for "
                           f"{len(remainders)} tensors")
    for _, i in sorted(remainders)[:left]:
        counts[i] += 1
    return counts


def layerwise_mask(
    scores: Any,
    sparsity: float | None = None,
    *,
    compression: float | None = None,
    layout: ParamLayout,
    over: str = COMPRESSION_OVER,
) -> Any:
    """Layer-wise pruning: every prunable tensor loses the same fraction of its entries.

    docs/theory.md §8. ``compression`` counts the set ``over`` names. Within tensor ``i`` the
    ``k_i`` smallest scores are removed (ties by index).
    The counts ``k_i`` are apportioned by largest remainder (``_layer_counts``): each is the floor
    or the ceiling of ``sparsity * size_i``, and they add up to exactly
    ``round(sparsity * n_prunable)``, the same total as ``global_mask``. Non-prunable tensors are
    kept whole. ``scores``: shape ``(n,)``, not modified. Returns a boolean ``(n,)`` mask on the
    scores' backend, ``True`` = kept.
    """
    if not isinstance(layout, ParamLayout):
        raise TypeError(
            f"layerwise_mask needs layout= (a ParamLayout naming the tensors), got "
            f"{type(layout).__name__}"
        )
    values, xp, layout = _prepare_scores(scores, layout)
    p = resolve_sparsity(sparsity, compression, layout=layout, over=over)
    k = n_to_prune(p, layout.n_prunable)
    keep = xp.ones(values.shape, dtype=xp.bool)
    counts = _layer_counts(k, p, layout)
    for off, size, k_i in zip(layout.offsets, layout.sizes, counts, strict=True):
        if k_i:
            keep[off : off + size] = ~_smallest_k(values[off : off + size], k_i, xp)
    return keep


# --------------------------------------------------------------------------- per-tensor view
def masks_by_name(mask: Any, layout: ParamLayout) -> dict[str, Any]:
    """``{name: boolean array of the tensor's shape}`` from a flat mask of shape ``(n,)``.

    The arrays are views of ``mask`` where the backend allows it.
    """
    if not isinstance(layout, ParamLayout):
        raise TypeError(f"layout must be a ParamLayout, got {type(layout).__name__}")
    _check_mask(mask, layout, "mask")
    return layout.unflatten(mask)


def _check_mask(mask: Any, layout: ParamLayout | None, what: str) -> ModuleType:
    """Raise unless ``mask`` is a boolean vector matching ``layout``; return its namespace."""
    if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
        raise TypeError(f"{what} must be a boolean array of shape (n,), got "
                        f"{type(mask).__name__}")
    xp = namespace_of(mask)
    if mask.ndim != 1:
        raise ValueError(f"{what} must be a flat vector of shape (n,), got shape "
                         f"{tuple(mask.shape)}")
    if not xp.isdtype(mask.dtype, "bool"):
        raise TypeError(f"{what} must have dtype bool (True = kept), got {mask.dtype}; "
                        f"use mask != 0 to convert a 0/1 mask")
    if layout is not None:
        layout.check_vector(mask, what)
    return xp
