"""Measuring masks: sparsity, compression, and how much two masks agree (docs/theory.md §13).

One definition each. A mask is a boolean vector of shape ``(n,)``, ``True`` = kept; the optional
``ParamLayout`` says which entries are prunable (without one, all are). Every function returns
Python numbers, counted on the mask's own backend (one small sum per tensor).

* sparsity ``p = pruned / prunable``;
* compression over the prunable set ``1 / (1 - p)``, and ShrinkBench's compression
  ``all parameters / kept parameters`` (non-prunable tensors included);
* overlap ``|kept_A ∩ kept_B| / |kept_A|`` and Jaccard ``|kept_A ∩ kept_B| / |kept_A ∪ kept_B|``,
  both over the prunable entries only: non-prunable entries are kept by every mask and would
  push both towards 1 without saying anything about the methods.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from ..layout import ParamLayout
from .masks import COMPRESSION_OVER, _check_mask, _default_layout, check_over

__all__ = ["sparsity", "compression", "overlap", "jaccard", "mask_table", "format_mask_table"]


def _layout_for(mask: Any, layout: ParamLayout | None, what: str = "mask") -> tuple[
        ModuleType, ParamLayout]:
    if layout is not None and not isinstance(layout, ParamLayout):
        raise TypeError(f"layout must be a ParamLayout or None, got {type(layout).__name__}")
    xp = _check_mask(mask, layout, what)
    return xp, _default_layout(mask.shape[0]) if layout is None else layout


def _count(x: Any, xp: ModuleType) -> int:
    return int(xp.sum(xp.astype(x, xp.int64)))


def _kept_per_tensor(mask: Any, layout: ParamLayout, xp: ModuleType) -> list[int]:
    """Number of kept entries in each tensor of the layout."""
    return [_count(mask[off : off + size], xp) if size else 0
            for off, size in zip(layout.offsets, layout.sizes, strict=True)]


def _prunable_count(mask: Any, layout: ParamLayout, xp: ModuleType) -> int:
    """Kept entries of ``mask`` summed over the prunable tensors only."""
    kept = _kept_per_tensor(mask, layout, xp)
    return sum(k for k, p in zip(kept, layout.prunable, strict=True) if p)


def sparsity(mask: Any, layout: ParamLayout | None = None) -> float:
    """Fraction of the prunable entries that ``mask`` removes, ``pruned / prunable``.

    docs/theory.md §13 (``p``). ``mask``: bool ``(n,)``. 0.0 when the layout has no prunable entry.
    """
    xp, layout = _layout_for(mask, layout)
    n_prunable = layout.n_prunable
    if n_prunable == 0:
        return 0.0
    return float((n_prunable - _prunable_count(mask, layout, xp)) / n_prunable)


def compression(mask: Any, layout: ParamLayout | None = None,
                over: str = COMPRESSION_OVER) -> float:
    """Compression ratio of ``mask`` (docs/theory.md §8, §13).

    ``over="prunable"``: ``prunable / kept prunable = 1 / (1 - p)``. ``over="all"``: ShrinkBench's
    ``all parameters / kept parameters``, counting every tensor (biases included) - the number
    to compare with papers that report ShrinkBench compression. ``inf`` when nothing is kept.
    """
    check_over(over)
    xp, layout = _layout_for(mask, layout)
    if over == "all":
        total, kept = layout.size, _count(mask, xp)
    else:
        total, kept = layout.n_prunable, _prunable_count(mask, layout, xp)
    if total == 0:
        return 1.0
    return math.inf if kept == 0 else float(total / kept)


def _kept_pair(mask_a: Any, mask_b: Any, layout: ParamLayout | None) -> tuple[int, int, int]:
    """``(|kept_A|, |kept_B|, |kept_A ∩ kept_B|)`` over the prunable entries."""
    xp, layout = _layout_for(mask_a, layout, "mask_a")
    _check_mask(mask_b, layout, "mask_b")
    if tuple(mask_b.shape) != tuple(mask_a.shape):
        raise ValueError(f"mask_a and mask_b must have the same shape, got "
                         f"{tuple(mask_a.shape)} and {tuple(mask_b.shape)}")
    return (_prunable_count(mask_a, layout, xp), _prunable_count(mask_b, layout, xp),
            _prunable_count(mask_a & mask_b, layout, xp))


def overlap(mask_a: Any, mask_b: Any, layout: ParamLayout | None = None) -> float:
    """Share of A's kept prunable entries that B keeps too: ``|kept_A ∩ kept_B| / |kept_A|``.

    docs/theory.md §13. Meant for two masks of equal sparsity (then it is symmetric); 1.0 means the
    same mask. Counted over the prunable entries only. ``ValueError`` if A keeps none of them.
    """
    kept_a, _, both = _kept_pair(mask_a, mask_b, layout)
    if kept_a == 0:
        raise ValueError("overlap is undefined: mask_a keeps no prunable entry")
    return float(both / kept_a)


def jaccard(mask_a: Any, mask_b: Any, layout: ParamLayout | None = None) -> float:
    """Jaccard index of the kept prunable sets, ``|kept_A ∩ kept_B| / |kept_A ∪ kept_B|``.

    docs/theory.md §13. Symmetric; 1.0 for identical masks (also when both keep nothing).
    """
    kept_a, kept_b, both = _kept_pair(mask_a, mask_b, layout)
    union = kept_a + kept_b - both
    return 1.0 if union == 0 else float(both / union)


def mask_table(mask: Any, layout: ParamLayout | None = None) -> list[dict[str, Any]]:
    """One row per tensor, then two total rows: what ``mask`` keeps and removes where.

    Row keys: ``name, shape, size, prunable, kept, pruned, sparsity`` (sparsity = pruned / size
    of that tensor). The row named ``"total (prunable)"`` gives the sparsity over the prunable
    set (the ``p`` of docs/theory.md §13); the row ``"total (all)"`` counts every parameter, so its
    ``size / kept`` is ShrinkBench's compression. Pass the rows to ``format_mask_table``.
    """
    xp, layout = _layout_for(mask, layout)
    kept = _kept_per_tensor(mask, layout, xp)
    rows = [_row(name, shape, size, prunable, k)
            for name, shape, size, prunable, k in zip(layout.names, layout.shapes, layout.sizes,
                                                      layout.prunable, kept, strict=True)]
    kept_prunable = sum(k for k, p in zip(kept, layout.prunable, strict=True) if p)
    rows.append(_row("total (prunable)", None, layout.n_prunable, True, kept_prunable))
    rows.append(_row("total (all)", None, layout.size, None, sum(kept)))
    return rows


def _row(name: str, shape: Any, size: int, prunable: Any, kept: int) -> dict[str, Any]:
    pruned = size - kept
    return {"name": name, "shape": shape, "size": size, "prunable": prunable, "kept": kept,
            "pruned": pruned, "sparsity": float(pruned / size) if size else 0.0}


def format_mask_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of ``mask_table`` rows, with the two compressions underneath."""
    headers = ("name", "shape", "size", "prunable", "kept", "pruned", "sparsity")

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if key == "shape":
            return "" if value is None else "x".join(str(d) for d in value) or "scalar"
        if key == "prunable":
            return "" if value is None else ("yes" if value else "no")
        if key == "sparsity":
            return f"{value:.4f}"
        return str(value)

    table = [list(headers)] + [[cell(r, h) for h in headers] for r in rows]
    widths = [max(len(line[j]) for line in table) for j in range(len(headers))]
    # names and shapes read left to right; numbers line up on the right
    lines = [
        "  ".join(text.ljust(w) if j < 2 else text.rjust(w)
                  for j, (text, w) in enumerate(zip(line, widths, strict=True)))
        for line in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    totals = {r["name"]: r for r in rows}
    footer = []
    for name, label in (("total (prunable)", "compression over the prunable set"),
                        ("total (all)", "ShrinkBench compression (all parameters)")):
        if name in totals:
            r = totals[name]
            if r["size"] == 0:
                ratio = 1.0
            else:
                ratio = math.inf if r["kept"] == 0 else r["size"] / r["kept"]
            footer.append(f"{label}: {ratio:.4g}")
    return "\n".join(lines + footer)
