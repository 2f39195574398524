"""The end of an experiment: mean ± std over seeds, a printed table, and the two figures.

Rows are ``experiment_runs.read_run`` dictionaries (one per run). Groups are
``(window_epoch, method, compression)``; the spread is the sample standard deviation over
seeds (``ddof = 1``; shown as 0 for a single seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..methods import METHODS
from .experiment_runs import format_number

__all__ = ["aggregate", "format_summary_table", "write_figures"]

_STAT_KEYS = ("pre_acc1", "post_acc1", "overlap_with_converged", "unpruned_acc1")

def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def aggregate(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One dict per ``(window_epoch, method, compression)``: ``n_seeds`` and, for each of
    ``pre_acc1, post_acc1, overlap_with_converged, unpruned_acc1``, ``<key>_mean`` and
    ``<key>_std`` over seeds."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["window_epoch"], r["method"], r["compression"]), []).append(r)
    out = []
    for (epoch, method, comp), members in sorted(groups.items(),
                                                   key=lambda kv: (kv[0][0], kv[0][1],
                                                                   float(kv[0][2]))):
        entry: dict[str, Any] = {"window_epoch": epoch, "method": method,
                                 "compression": comp, "n_seeds": len(members)}
        for key in _STAT_KEYS:
            entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std([m.get(key) for m in members])
        out.append(entry)
    return out


def format_summary_table(groups: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width text: accuracy (%) before/after the fine-tune and overlap, mean ± std."""
    header = ("window", "method", "compr.", "seeds", "pre acc % (pruned)",
              "post acc % (fine-tuned)", "overlap w/ converged")
    lines = [header]
    for g in groups:
        lines.append((
            f"epoch {g['window_epoch']}", str(g["method"]), format_number(g["compression"]),
            str(g["n_seeds"]),
            f"{100 * g['pre_acc1_mean']:6.2f} ± {100 * g['pre_acc1_std']:5.2f}",
            f"{100 * g['post_acc1_mean']:6.2f} ± {100 * g['post_acc1_std']:5.2f}",
            f"{g['overlap_with_converged_mean']:.4f} ± {g['overlap_with_converged_std']:.4f}",
        ))
    widths = [max(len(line[j]) for line in lines) for j in range(len(header))]
    text = ["  ".join(c.ljust(w) if j < 2 else c.rjust(w)
                      for j, (c, w) in enumerate(zip(line, widths))) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def _label(method: str) -> str:
    return METHODS[method].label if method in METHODS else method


def _panels(plt: Any, n: int, ncols: int = 3) -> tuple[Any, list[Any]]:
    """A grid of ``n`` panels, at most ``ncols`` per row (unused cells hidden), sharing y."""
    cols = min(n, ncols)
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.8 * rows), sharey=True,
                             squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def write_figures(out: Path, groups: Sequence[Mapping[str, Any]], *,
                  overlap_sparsity: float | None) -> list[Path]:
    """``accuracy_vs_compression.png`` (one panel per window epoch) and ``overlap_vs_window.png``
    (one panel per compression, or one panel at ``overlap_sparsity``), written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..plotting import save_figure

    if not groups:
        return []
    epochs = sorted({g["window_epoch"] for g in groups})
    methods = list(dict.fromkeys(g["method"] for g in groups))
    colors = {s: f"C{i}" for i, s in enumerate(methods)}
    files = []

    fig, axes = _panels(plt, len(epochs))
    for ax, epoch in zip(axes, epochs):
        here = [g for g in groups if g["window_epoch"] == epoch]
        for s in methods:
            curve = sorted((g for g in here if g["method"] == s),
                           key=lambda g: float(g["compression"]))
            if not curve:
                continue
            x = [float(g["compression"]) for g in curve]
            ax.errorbar(x, [g["post_acc1_mean"] for g in curve],
                        yerr=[g["post_acc1_std"] for g in curve], color=colors[s], marker="o",
                        capsize=3, label=f"{_label(s)}, fine-tuned")
            ax.plot(x, [g["pre_acc1_mean"] for g in curve], color=colors[s], ls="--",
                    marker=".", alpha=0.7, label=f"{_label(s)}, right after pruning")
        unpruned = _mean_std([g["unpruned_acc1_mean"] for g in here])[0]
        if math.isfinite(unpruned):
            ax.axhline(unpruned, color="0.3", ls=":", lw=1, label=f"unpruned at epoch {epoch}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression (prunable / kept)")
        ax.set_title(f"window ending at epoch {epoch}")
    axes[0].set_ylabel("test accuracy (mean ± std over seeds)")
    axes[len(epochs) - 1].legend(fontsize=7, loc="lower left")
    files.append(save_figure(fig, out / "accuracy_vs_compression.png"))

    comps = sorted({float(g["compression"]) for g in groups})
    panels = comps[:1] if overlap_sparsity is not None else comps
    fig, axes = _panels(plt, len(panels))
    for ax, comp in zip(axes, panels):
        for s in methods:
            curve = sorted((g for g in groups
                            if g["method"] == s and float(g["compression"]) == comp),
                           key=lambda g: g["window_epoch"])
            if not curve:
                continue
            x = np.array([g["window_epoch"] for g in curve], dtype=float)
            mean = np.array([g["overlap_with_converged_mean"] for g in curve])
            std = np.array([g["overlap_with_converged_std"] for g in curve])
            ax.plot(x, mean, "o-", color=colors[s], label=_label(s))
            ax.fill_between(x, mean - std, mean + std, color=colors[s], alpha=0.2, lw=0)
        sparsity = overlap_sparsity if overlap_sparsity is not None else 1.0 - 1.0 / comp
        ax.set_title(f"sparsity {sparsity:.3g}" + ("" if overlap_sparsity is not None
                                                     else f" (compression {format_number(comp)})"))
        ax.set_xlabel("window ends at epoch")
    axes[0].set_ylabel("overlap with the converged GMP mask\n(mean ± std over seeds)")
    axes[len(panels) - 1].legend(fontsize=7)
    files.append(save_figure(fig, out / "overlap_vs_window.png"))
    return files
