"""Statistics over seeds for a study: t-intervals of the mean and paired differences.

A study compares one method (the ``reference``, KMP by default) with the others on the same
training windows. Seeds are independent repetitions (initialization and batch order), and every
method of one seed is scored on the same window, so differences are taken seed by seed (paired)
before any averaging: the spread between seeds, which all methods share, drops out
(docs/theory.md §12).

For ``n`` values with mean ``x̄`` and sample standard deviation ``s`` (``ddof = 1``), the
two-sided ``confidence`` interval of the mean is ``x̄ ± t_{(1+confidence)/2, n−1} · s / √n``
(Student's t); it is undefined (NaN) for fewer than two values. Rows are
``experiment_runs.read_run`` dictionaries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["Interval", "PairedDifference", "STUDY_METRICS", "mean_interval",
           "paired_difference", "paired_rows", "PAIRED_COLUMNS", "format_paired_table"]

#: The per-run numbers a study compares: overlap with the converged mask, accuracy right after
#: pruning and after the masked fine-tune.
STUDY_METRICS = ("overlap_with_converged", "pre_acc1", "post_acc1")

PAIRED_COLUMNS = ("window_epoch", "compression", "reference", "method", "metric", "n_seeds",
                  "mean_difference", "ci_low", "ci_high", "ahead", "behind", "ties",
                  "reference_mean", "method_mean")


@dataclass(frozen=True)
class Interval:
    """``n`` values: their mean and the ``confidence`` t-interval of the mean."""

    n: int
    mean: float
    low: float
    high: float
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        """``t · s / √n`` (NaN with fewer than two values)."""
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class PairedDifference:
    """Reference minus other, seed by seed: the interval of the mean difference and how many
    seeds have the reference ahead (difference > 0), behind (< 0) or tied."""

    interval: Interval
    ahead: int
    behind: int
    ties: int


def _values(values: Iterable[Any], what: str) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} holds a non-finite value: {arr.tolist()}")
    return arr


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean and two-sided t-interval of the mean (see the module docstring); ``None`` values are
    skipped, an empty input gives NaN everywhere."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    arr = _values(values, "values")
    n = int(arr.size)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, confidence)
    mean = float(arr.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan, confidence)
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1) * arr.std(ddof=1) / math.sqrt(n))
    return Interval(n, mean, mean - half, mean + half, confidence)


def paired_difference(reference: Sequence[float], other: Sequence[float],
                      confidence: float = 0.95) -> PairedDifference:
    """``reference[i] − other[i]`` over paired seeds ``i``: interval and the sign counts."""
    a, b = _values(reference, "reference"), _values(other, "other")
    if a.shape != b.shape:
        raise ValueError(f"paired values need one of each per seed: {a.size} reference and "
                         f"{b.size} other values")
    d = a - b
    return PairedDifference(mean_interval(d, confidence), int(np.sum(d > 0)),
                            int(np.sum(d < 0)), int(np.sum(d == 0)))


def paired_rows(rows: Iterable[Mapping[str, Any]], reference: str, *,
                metrics: Sequence[str] = STUDY_METRICS,
                confidence: float = 0.95) -> list[dict[str, Any]]:
    """One ``PAIRED_COLUMNS`` dict per (window epoch, compression, other method, metric).

    Only seeds that have a run of both methods in the same window and compression are paired.
    Sorted by window epoch, compression, method (in first-seen order), metric.
    """
    by_key: dict[tuple, dict[int, Mapping[str, Any]]] = {}
    methods: list[str] = []
    for r in rows:
        by_key.setdefault((r["window_epoch"], float(r["compression"]), r["method"]),
                          {})[int(r["seed"])] = r
        if r["method"] not in methods:
            methods.append(r["method"])
    out = []
    cells = sorted({(e, c) for e, c, _ in by_key})
    for epoch, comp in cells:
        ref_runs = by_key.get((epoch, comp, reference), {})
        for method in methods:
            if method == reference or (epoch, comp, method) not in by_key:
                continue
            runs = by_key[(epoch, comp, method)]
            seeds = sorted(set(ref_runs) & set(runs))
            for metric in metrics:
                pairs = [(ref_runs[s].get(metric), runs[s].get(metric)) for s in seeds]
                pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
                d = paired_difference([a for a, _ in pairs], [b for _, b in pairs], confidence)
                out.append({"window_epoch": epoch, "compression": comp, "reference": reference,
                            "method": method, "metric": metric, "n_seeds": d.interval.n,
                            "mean_difference": d.interval.mean, "ci_low": d.interval.low,
                            "ci_high": d.interval.high, "ahead": d.ahead, "behind": d.behind,
                            "ties": d.ties,
                            "reference_mean": mean_interval(a for a, _ in pairs).mean,
                            "method_mean": mean_interval(b for _, b in pairs).mean})
    return out


def _interval_text(mean: float, low: float, high: float) -> str:
    if math.isnan(low):
        return f"{mean:+.3f} (one seed)"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def format_paired_table(paired: Sequence[Mapping[str, Any]], *,
                        confidence: float = 0.95) -> str:
    """Fixed-width text: one line per (window, compression, method), one column per metric:
    mean paired difference [interval] and the seeds where the reference is ahead."""
    if not paired:
        return "no paired comparison (the reference method or a second method is missing)"
    metrics = list(dict.fromkeys(p["metric"] for p in paired))
    reference = paired[0]["reference"]
    lines: dict[tuple, dict[str, str]] = {}
    for p in paired:
        cell = lines.setdefault((p["window_epoch"], p["compression"], p["method"]), {})
        cell[p["metric"]] = (f"{_interval_text(p['mean_difference'], p['ci_low'], p['ci_high'])}"
                             f"  {p['ahead']}/{p['n_seeds']}")
    header = ("window", "compr.", f"{reference} minus", *metrics)
    table = [header] + [(f"epoch {e}", f"{c:g}", m, *(cells.get(k, "") for k in metrics))
                        for (e, c, m), cells in lines.items()]
    widths = [max(len(row[j]) for row in table) for j in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    text.insert(1, "  ".join("-" * w for w in widths))
    note = (f"{reference} minus each method, seed by seed: mean [{100 * confidence:g} % "
            f"t-interval]  seeds with {reference} ahead / paired seeds")
    return "\n".join([note, *text])
