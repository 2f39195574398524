"""The end of an experiment: mean ± std and 95 % intervals over seeds, the paired study, figures.

Rows are ``experiment_runs.read_run`` dictionaries (one per run). Groups are
``(window_epoch, method, compression)``; the spread is the sample standard deviation over
seeds (``ddof = 1``; shown as 0 for a single seed) and the 95 % t-interval of the mean
(``app.study``; NaN for a single seed). ``write_study`` adds the paired comparison of the
config's reference method with every other one (``paired.csv``, ``paired_table.txt``) and its
two figures (``overlap_bands.png``, ``paired_difference.png``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_text_atomic
from ..methods import METHODS
from .experiment_runs import csv_text, format_number
from .study import PAIRED_COLUMNS, STUDY_METRICS, format_paired_table, mean_interval, paired_rows

__all__ = ["aggregate", "format_summary_table", "write_figures", "write_study",
           "INTERVAL_COLUMNS"]

_STAT_KEYS = ("pre_acc1", "post_acc1", "overlap_with_converged", "unpruned_acc1")
#: ``intervals.csv``: per group, the mean and 95 % interval of each study metric.
INTERVAL_COLUMNS = ("window_epoch", "method", "compression", "n_seeds",
                    *(f"{k}_{s}" for k in STUDY_METRICS for s in ("mean", "ci_low", "ci_high")))

def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def aggregate(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One dict per ``(window_epoch, method, compression)``: ``n_seeds`` and, for each of
    ``pre_acc1, post_acc1, overlap_with_converged, unpruned_acc1``, ``<key>_mean`` and
    ``<key>_std`` over seeds, and ``<key>_ci_low`` / ``<key>_ci_high``, the 95 % t-interval
    of the mean."""
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
            values = [m.get(key) for m in members]
            entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std(values)
            interval = mean_interval(values)
            entry[f"{key}_ci_low"], entry[f"{key}_ci_high"] = interval.low, interval.high
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


def _curve(groups: list[dict[str, Any]], method: str, compression: float) -> list[dict[str, Any]]:
    """The groups of one method at one compression, in window order (one line of a figure)."""
    return sorted((g for g in groups
                   if g["method"] == method and float(g["compression"]) == compression),
                  key=lambda g: g["window_epoch"])


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
    from matplotlib.ticker import MaxNLocator

    from ..plotting import place_legend, save_figure

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
    place_legend(axes[len(epochs) - 1], "outside", fontsize=7)  # off the data
    files.append(save_figure(fig, out / "accuracy_vs_compression.png"))

    comps = sorted({float(g["compression"]) for g in groups})
    panels = comps[:1] if overlap_sparsity is not None else comps
    fig, axes = _panels(plt, len(panels))
    for ax, comp in zip(axes, panels):
        for s in methods:
            curve = _curve(groups, s, comp)
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes[0].set_ylabel("overlap with the converged GMP mask\n(mean ± std over seeds)")
    axes[len(panels) - 1].legend(fontsize=7)
    files.append(save_figure(fig, out / "overlap_vs_window.png"))
    return files


def _epoch_axis(ax: Any, epochs: Iterable[int]) -> None:
    """A log2 epoch axis ticked at the windows' own epochs, written as whole numbers."""
    from matplotlib.ticker import NullLocator

    ticks = sorted({int(e) for e in epochs})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(e) for e in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


_METRIC_LABELS = {"overlap_with_converged": "overlap with the converged mask",
                  "pre_acc1": "accuracy right after pruning",
                  "post_acc1": "accuracy after the fine-tune"}


def write_study(out: Path, rows: Sequence[Mapping[str, Any]], groups: Sequence[Mapping[str, Any]],
                reference: str | None) -> tuple[str, list[Path]]:
    """``intervals.csv``, and with a ``reference`` method ``paired.csv``, ``paired_table.txt``
    and the figures ``overlap_bands.png`` / ``paired_difference.png``; returns (table, files)."""
    files = [write_text_atomic(out / "intervals.csv", csv_text(
        INTERVAL_COLUMNS, ({k: g[k] for k in INTERVAL_COLUMNS} for g in groups)))]
    if reference is None:
        return "", files
    paired = paired_rows(rows, reference)
    table = format_paired_table(paired)
    files.append(write_text_atomic(out / "paired.csv", csv_text(PAIRED_COLUMNS, paired)))
    files.append(write_text_atomic(out / "paired_table.txt", table + "\n"))
    if groups:
        files += _study_figures(out, groups, paired, reference)
    return table, files


def _study_figures(out: Path, groups: Sequence[Mapping[str, Any]],
                   paired: Sequence[Mapping[str, Any]], reference: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..plotting import place_legend, save_figure

    methods = list(dict.fromkeys(g["method"] for g in groups))
    colors = {s: f"C{i}" for i, s in enumerate(methods)}
    comps = sorted({float(g["compression"]) for g in groups})
    files = []
    fig, axes = _panels(plt, len(comps))
    for ax, comp in zip(axes, comps):
        for s in methods:
            curve = _curve(groups, s, comp)
            x = np.array([g["window_epoch"] for g in curve], dtype=float)
            key = "overlap_with_converged"
            ax.plot(x, [g[f"{key}_mean"] for g in curve], "o-", color=colors[s], label=_label(s))
            # an overlap lies in [0, 1]; a t-interval over few seeds can pass it (drawn clipped)
            ax.fill_between(x, np.clip([g[f"{key}_ci_low"] for g in curve], 0.0, 1.0),
                            np.clip([g[f"{key}_ci_high"] for g in curve], 0.0, 1.0),
                            color=colors[s], alpha=0.2, lw=0)
        _epoch_axis(ax, [g["window_epoch"] for g in groups])
        ax.set_xlabel("window ends at epoch")
        ax.set_title(f"compression {format_number(comp)} (sparsity {1 - 1 / comp:.3g})")
    axes[0].set_ylabel("overlap with the converged GMP mask\n(mean, 95 % interval over seeds,\n"
                       "clipped to [0, 1])")
    place_legend(axes[-1], "outside", fontsize=7)  # off the data
    files.append(save_figure(fig, out / "overlap_bands.png"))

    metrics = list(dict.fromkeys(p["metric"] for p in paired))
    if not metrics:
        return files
    fig, axes = plt.subplots(len(comps), len(metrics), figsize=(4.4 * len(metrics),
                                                                3.6 * len(comps)), squeeze=False)
    for row, comp in zip(axes, comps):
        for ax, metric in zip(row, metrics):
            for i, s in enumerate(m for m in methods if m != reference):
                curve = sorted((p for p in paired if p["method"] == s and p["metric"] == metric
                                and float(p["compression"]) == comp),
                               key=lambda p: p["window_epoch"])
                x = np.array([p["window_epoch"] for p in curve], dtype=float) * 1.04 ** i
                mean = np.array([p["mean_difference"] for p in curve])
                err = np.array([[m - p["ci_low"] for m, p in zip(mean, curve)],
                                [p["ci_high"] - m for m, p in zip(mean, curve)]])
                ax.errorbar(x, mean, yerr=np.nan_to_num(err), fmt="o-", capsize=3,
                            color=colors[s], label=f"{_label(reference)} − {_label(s)}")
            ax.axhline(0.0, color="0.4", lw=0.8, ls=":")
            _epoch_axis(ax, [p["window_epoch"] for p in paired])
            ax.set_xlabel("window ends at epoch")
            ax.set_title(f"{_METRIC_LABELS.get(metric, metric)}\n"
                         f"compression {format_number(comp)}", fontsize=9)
        row[0].set_ylabel(f"{_label(reference)} minus method, paired by seed\n"
                          f"(mean, 95 % interval)")
    place_legend(axes[0][-1], "outside", fontsize=7)  # off the data
    files.append(save_figure(fig, out / "paired_difference.png"))
    return files
